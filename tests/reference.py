"""A plain, slow reference of every method: one worker at a time, float64 NumPy, straight from the equations.

It is the ground truth that the vectorised simulator (and the distributed
engine) must match. It shares with them only the random streams (so that the
minibatches and the random attacks are the same draws) and the data; every
formula here is written again, plainly, on purpose.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

from byzrsa.engines.common import Problem

__all__ = ["reference_run"]


def softmax_grad(w: np.ndarray, x: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    weights = w.reshape(classes, -1)
    grad = np.zeros_like(weights)
    for features, label in zip(x, y):
        logits = weights @ features
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        probs[label] -= 1.0
        grad += np.outer(probs, features)
    return (grad / len(y)).reshape(-1)


def subgradient(v: np.ndarray, p: float) -> np.ndarray:
    v = np.where(np.isnan(v), 0.0, v)
    if p != 1.0 and np.isinf(v).any():
        v = np.where(np.isinf(v), np.sign(v), 0.0)
    if p == 1.0:
        return np.sign(v)
    if not np.any(v):
        return np.zeros_like(v)
    if math.isinf(p):
        top = np.abs(v).max()
        hits = [j for j in range(len(v)) if abs(v[j]) == top]
        z = np.zeros_like(v)
        for j in hits:
            z[j] = np.sign(v[j]) / len(hits)
        return z
    norm = sum(abs(t) ** p for t in v) ** (1.0 / p)
    return np.array([np.sign(t) * abs(t) ** (p - 1) / norm ** (p - 1) for t in v])


def median(rows: np.ndarray) -> np.ndarray:
    return np.array([statistics.median(col) for col in rows.T])


def trimmed_mean(rows: np.ndarray, f: int) -> np.ndarray:
    return np.array([np.mean(sorted(col)[f : len(col) - f]) for col in rows.T])


def krum(rows: np.ndarray, f: int, k: int = 1) -> np.ndarray:
    m = len(rows)
    scores = []
    for i in range(m):
        dists = sorted(float(np.sum((rows[i] - rows[j]) ** 2)) for j in range(m) if j != i)
        scores.append(sum(dists[: m - f - 2]))
    chosen = sorted(range(m), key=lambda i: (scores[i], i))[:k]
    return rows[chosen].mean(axis=0)


def geomed(rows: np.ndarray, iterations: int = 5000) -> np.ndarray:
    """Weiszfeld run far past any practical tolerance (to machine precision)."""
    z = median(rows)
    for _ in range(iterations):
        w = np.array([1.0 / max(np.linalg.norm(r - z), 1e-300) for r in rows])
        new = (w[:, None] * rows).sum(axis=0) / w.sum()
        done = np.linalg.norm(new - z) <= 1e-15 * max(np.linalg.norm(z), 1.0)
        z = new
        if done:
            break
    return z


def centered_clipping(rows: np.ndarray, tau: float, iters: int, previous: np.ndarray | None) -> np.ndarray:
    """v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||), L times, from the previous aggregate (else the median)."""
    v = median(rows) if previous is None or not np.isfinite(previous).all() else previous.copy()
    for _ in range(iters):
        step = np.zeros_like(v)
        for row in rows:
            dist = np.linalg.norm(row - v)
            step += (row - v) * (1.0 if dist == 0 else min(1.0, tau / dist))
        v = v + step / len(rows)
    return v


def bulyan(rows: np.ndarray, f: int) -> np.ndarray:
    """theta = n - 2f rows by iterated Krum (max(n' - f - 2, 1) neighbours), then per coordinate the mean of the
    beta = theta - 2f values nearest the median (the smaller value first on ties)."""
    n = len(rows)
    theta, beta = n - 2 * f, n - 4 * f
    pool, chosen = list(range(n)), []
    while len(chosen) < theta:
        neighbours = max(len(pool) - f - 2, 1)
        scores = []
        for i in pool:
            dists = sorted(float(np.sum((rows[i] - rows[j]) ** 2)) for j in pool if j != i)
            scores.append(sum(dists[:neighbours]))
        best = min(range(len(pool)), key=lambda t: (scores[t], pool[t]))
        chosen.append(pool.pop(best))
    out = []
    for col in rows[chosen].T:
        mid = statistics.median(col)
        kept = sorted(col, key=lambda v: (abs(v - mid), v))[:beta]
        out.append(sum(kept) / beta)
    return np.array(out)


def sign_vote(rows: np.ndarray) -> np.ndarray:
    return np.sign(np.sign(rows).sum(axis=0))


def bucketing(rows: np.ndarray, generator, s: int) -> np.ndarray:
    import torch

    perm = torch.randperm(len(rows), generator=generator).tolist()
    return np.array([rows[perm[b : b + s]].mean(axis=0) for b in range(0, len(rows), s)])


def nnm(rows: np.ndarray, f: int) -> np.ndarray:
    """Each row replaced by the mean of itself and its n - f - 1 nearest other rows (by distance, then index)."""
    n = len(rows)
    out = []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (float(np.linalg.norm(rows[i] - rows[j])), j))
        out.append(rows[[i, *others[: n - f - 1]]].mean(axis=0))
    return np.array(out)


def clip_rows(rows: np.ndarray, threshold: float) -> np.ndarray:
    return np.array([r * min(1.0, threshold / np.linalg.norm(r)) if np.linalg.norm(r) > 0 else r for r in rows])


def arc(rows: np.ndarray, f: int) -> np.ndarray:
    """The k = floor(2 f (n - f) / n) longest rows clipped to the (k+1)-th largest norm."""
    n = len(rows)
    k = (2 * f * (n - f)) // n
    if k == 0:
        return rows.copy()
    return clip_rows(rows, sorted((np.linalg.norm(r) for r in rows), reverse=True)[k])


class Server:
    """The gradient-aggregation server: the pre-aggregator chain (with the run's streams) and the rule, with
    the previous aggregate for centered clipping."""

    def __init__(self, problem: Problem) -> None:
        c = problem.config
        self.config = c
        self.generators = problem.aggregator_state().generators  # the same seeded streams as every engine
        self.previous: np.ndarray | None = None

    def copy(self) -> Server:
        twin = object.__new__(Server)
        twin.config, twin.previous = self.config, self.previous
        twin.generators = []
        for g in self.generators:
            import torch

            clone = torch.Generator()
            clone.set_state(g.get_state())
            twin.generators.append(clone)
        return twin

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        c = self.config
        f = c.byzantine if c.agg_f is None else c.agg_f
        for name, options, generator in zip(c.pre, c.pre_options, self.generators):
            if name == "bucketing":
                rows = bucketing(rows, generator, options["s"])
            elif name == "nnm":
                rows = nnm(rows, f)
            elif name == "clip":
                rows = clip_rows(rows, options["tau"])
            elif name == "arc":
                rows = arc(rows, f)
            else:
                raise AssertionError(name)
        if c.method == "cclip":
            out = centered_clipping(rows, c.method_options["tau"], c.method_options["iters"], self.previous)
            self.previous = out
            return out
        return aggregate(c.method, rows, f)


def aggregate(method: str, rows: np.ndarray, f: int) -> np.ndarray:
    if method == "bulyan":
        return bulyan(rows, f)
    if method == "signsgd":
        return sign_vote(rows)
    if method in ("sgd", "ideal-sgd"):
        return rows.mean(axis=0)
    if method == "median":
        return median(rows)
    if method == "trimmed-mean":
        return trimmed_mean(rows, f)
    if method == "krum":
        return krum(rows, f)
    if method == "multi-krum":
        return krum(rows, f, len(rows) - f)
    if method == "geomed":
        return geomed(rows)
    raise AssertionError(method)


def moments(regular: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """mu and the population sigma, coordinate-wise."""
    mu = sum(regular) / len(regular)
    return mu, np.sqrt(sum((x - mu) ** 2 for x in regular) / len(regular))


def largest_gamma(feasible, start: float, tol: float) -> float:
    """Double from ``start`` until infeasible, then bisect to a relative width ``tol``; the feasible end."""
    lo, hi = 0.0, start
    while feasible(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
    return lo


def min_max_or_sum(regular: list[np.ndarray], kind: str, direction: str, gamma_init: float, tol: float) -> np.ndarray:
    mu, sigma = moments(regular)
    if direction == "unit":
        p = -mu / np.linalg.norm(mu) if np.linalg.norm(mu) > 0 else np.zeros_like(mu)
    else:
        p = -sigma if direction == "std" else -np.sign(mu)
    if not np.any(p):
        return mu  # p = 0: every factor sends mu
    if kind == "min-max":
        bound = max(float(np.sum((a - b) ** 2)) for a in regular for b in regular)

        def feasible(g: float) -> bool:
            return max(float(np.sum((mu + g * p - x) ** 2)) for x in regular) <= bound
    else:
        bound = max(sum(float(np.sum((a - b) ** 2)) for b in regular) for a in regular)

        def feasible(g: float) -> bool:
            return sum(float(np.sum((mu + g * p - x) ** 2)) for x in regular) <= bound
    return mu + largest_gamma(feasible, gamma_init, tol) * p


def mimic_target(regular: list[np.ndarray], state: dict, warmup: int) -> int:
    """The running power iteration of the bucketing paper's mimic attack (docs/attacks.md), then the argmax."""
    import torch

    t = state.get("round", 0)
    if t < warmup:
        x = np.array(regular)
        mean = x.mean(axis=0)
        if t == 0:
            mu = mean
            z = torch.randn(x.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
            z = z / np.linalg.norm(z)
        else:
            mu, z = state["mu"] * t / (t + 1) + mean / (t + 1), state["z"]
        u = sum(float((xi - mu) @ z) * (xi - mu) for xi in x)
        u = u / np.linalg.norm(u) if np.linalg.norm(u) > 0 else z
        if t > 0:
            w = z * t / (t + 1) + u / (t + 1)
            u = w / np.linalg.norm(w) if np.linalg.norm(w) > 0 else z
        projections = [float(xi @ u) for xi in x]
        state["mu"], state["z"] = mu, u
        state["target"] = max(range(len(x)), key=lambda i: (projections[i], -i))
    state["round"] = t + 1
    return state["target"]


def line_search(objective, low: float, high: float, grid: int, refine: int) -> float:
    """A geometric grid of ``grid`` factors, then ``refine`` golden-section steps in log s around the best one."""
    def value(s):
        v = objective(s)
        return -math.inf if math.isnan(v) else v

    points = [low * (high / low) ** (k / (grid - 1)) for k in range(grid - 1)] + [high]
    values = [value(s) for s in points]
    best = max(range(grid), key=lambda k: (values[k], -k))
    best_s, best_v = points[best], values[best]
    a, b = math.log(points[max(best - 1, 0)]), math.log(points[min(best + 1, grid - 1)])
    inv_phi = (math.sqrt(5) - 1) / 2
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    vc, vd = value(math.exp(c)), value(math.exp(d))
    for step in range(refine):
        for u, v in ((c, vc), (d, vd)):
            if v > best_v or (v == best_v and math.exp(u) < best_s):
                best_s, best_v = math.exp(u), v
        if step == refine - 1:
            break
        if vc >= vd:
            b, d, vd = d, c, vc
            c = b - inv_phi * (b - a)
            vc = value(math.exp(c))
        else:
            a, c, vc = c, d, vd
            d = a + inv_phi * (b - a)
            vd = value(math.exp(d))
    return best_s


def optimised(regular: list[np.ndarray], lie, q: int, defence, options: dict) -> np.ndarray:
    """The factor s in [low, high] maximising ||D([regular; lie(s) x q]) - D([regular; mu x q])||."""
    mu, _ = moments(regular)
    baseline = defence(np.array(regular + [mu] * q))

    def gap(s: float) -> float:
        return float(np.linalg.norm(defence(np.array(regular + [lie(s)] * q)) - baseline))
    return lie(line_search(gap, options["low"], options["high"], options["grid"], options["refine"]))


def rsa_aware(regular: list[np.ndarray], x0: np.ndarray, p: float, target: str) -> np.ndarray:
    """z = x0 + (1 + ||x0||_inf) v / max|v|, v = subgrad ||t||_p for l1 and linf (t itself otherwise)."""
    t = {"against-pull": lambda: sum(subgradient(x0 - x, p) for x in regular), "negative-x0": lambda: -x0,
         "ones": lambda: np.ones_like(x0)}[target]()
    v = subgradient(t, p) if p == 1.0 or math.isinf(p) else t
    peak = np.abs(v).max()
    return x0.copy() if not peak > 0 else x0 + v / peak * (1.0 + np.abs(x0).max())


def attack(problem: Problem, regular: list[np.ndarray], own: list[np.ndarray], gens, state: dict | None = None,
           defence=None, x0: np.ndarray | None = None) -> list[np.ndarray]:
    """The Byzantine messages of one round. ``state`` carries mimic's tracker; ``defence`` maps (m, d) messages
    to the server's next model (optimised attacks); ``x0`` is the master's (or shared) model (rsa-aware)."""
    c = problem.config
    o = c.attack_options
    import torch

    q = c.byzantine
    if c.attack == "alie":
        z = o["z"]
        if z is None:
            s = math.floor(c.workers / 2 + 1) - q
            z = statistics.NormalDist().inv_cdf((c.workers - s) / c.workers)
        mu, sigma = moments(regular)
        return [mu - z * sigma for _ in range(q)]
    if c.attack == "ipm":
        return [-o["epsilon"] * moments(regular)[0] for _ in range(q)]
    if c.attack in ("min-max", "min-sum"):
        lie = min_max_or_sum(regular, c.attack, o["direction"], o["gamma_init"], o["tol"])
        return [lie for _ in range(q)]
    if c.attack == "mimic":
        target = mimic_target(regular, state, o["warmup"])
        return [regular[target].copy() for _ in range(q)]
    if c.attack == "label-flip":
        return [x.copy() for x in own]  # honest computation on flipped labels
    if c.attack in ("alie-opt", "ipm-opt"):
        mu, sigma = moments(regular)
        lie = (lambda s: mu - s * sigma) if c.attack == "alie-opt" else (lambda s: -s * mu)
        return [optimised(regular, lie, q, defence, o) for _ in range(q)]
    if c.attack == "rsa-aware":
        return [rsa_aware(regular, x0, problem.p, o["target"]) for _ in range(q)]
    out = []
    for j in range(c.byzantine):
        if c.attack == "none":
            out.append(own[j])
        elif c.attack == "same-value":
            out.append(np.full_like(regular[0], c.attack_options['c']))
        elif c.attack == "sign-flip":
            out.append(c.attack_options['sigma'] * own[j])
        elif c.attack == "copy":
            out.append(regular[c.attack_options['copy_from']].copy())
        elif c.attack == "negated-copy":
            out.append(-regular[c.attack_options['copy_from']])
        elif c.attack == "gaussian":
            noise = torch.randn(len(regular[0]), generator=gens[j], dtype=torch.float64).numpy()
            centre = moments(regular)[0] if c.attack_options.get("around") == "mean" else 0.0
            out.append(c.attack_options['std'] * noise + centre)
        elif c.attack == "non-finite":
            out.append(np.full_like(regular[0], c.attack_options['value']))
        elif c.attack == "negative-sum":
            out.append(-sum(regular))
        else:
            raise AssertionError(c.attack)
    return out


class VarianceReduction:
    """SAGA and LSVRG (--vr) straight from their equations, one worker at a time, with full per-sample tables.

    SAGA: phi_s = grad f_s(x0) for every local sample at the start; the estimate is
    mean_{s in B}(grad f_s(x) - phi_s) + mean_j phi_j, then phi_s <- grad f_s(x).
    LSVRG: grad_B(x) - grad_B(w) + grad f(w), w = x0 at the start; then, with
    probability p (default 1/J), w <- x, one float64 uniform per iteration from the
    worker's "vr" stream.
    """

    def __init__(self, problem: Problem, active: int, gradient) -> None:
        from byzrsa.engines.common import derive_generator

        c = problem.config
        self.name, self.p = c.vr, c.vr_options.get("p")
        self.gradient = gradient  # (worker, w, sample ids) -> mean gradient over those samples
        self.shards = [problem.shards[i].numpy() for i in range(active)]
        start = problem.init_vector().double().numpy()
        if self.name == "saga":
            self.tables = [{int(j): gradient(i, start, np.array([j])) for j in shard} for i, shard in enumerate(self.shards)]
        else:
            self.snapshots = [start.copy() for _ in self.shards]
            self.full = [gradient(i, start, shard) for i, shard in enumerate(self.shards)]
            self.coins = [derive_generator(c.seed, "vr", i) for i in range(active)]

    def __call__(self, i: int, w: np.ndarray, batch: np.ndarray) -> np.ndarray:
        import torch

        if self.name == "saga":
            table = self.tables[i]
            mean = sum(table.values()) / len(table)
            new = {int(s): self.gradient(i, w, np.array([s])) for s in batch}
            estimate = sum(new[int(s)] - table[int(s)] for s in batch) / len(batch) + mean
            table.update(new)
            return estimate
        estimate = self.gradient(i, w, batch) - self.gradient(i, self.snapshots[i], batch) + self.full[i]
        p = self.p if self.p is not None else 1.0 / len(self.shards[i])
        if float(torch.rand(1, generator=self.coins[i], dtype=torch.float64)) < p:
            self.snapshots[i], self.full[i] = w.copy(), self.gradient(i, w, self.shards[i])
        return estimate


def reference_run(problem: Problem, iterations: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``iterations`` steps; return x0 (or the shared model) and the RSA local iterates.

    Baselines: each computing worker's message is grad F(x; batch) + mu x, or with
    ``momentum`` beta its momentum m_i <- beta m_i + (1 - beta) g_i (m_i^0 = 0);
    the server applies the pre-aggregator chain and the rule (:class:`Server`).
    Byzantine workers compute (their true values, or on labels y -> C - 1 - y for
    label-flip) only for the attacks that send them.
    """
    c = problem.config
    classes = problem.dataset.num_classes
    x_all = problem.train_x.double().numpy()
    y_all = problem.train_y.numpy()
    m, r, q = c.workers, c.regular, c.byzantine
    honest_byzantine = q > 0 and c.method != "ideal-sgd" and c.attack in ("none", "sign-flip", "label-flip")
    active = m if honest_byzantine else r
    samplers = [problem.sampler(i) for i in range(active)]
    gens = problem.attack_generators()
    p = problem.p
    d = problem.model.dim
    x0 = np.zeros(d)
    local = [np.zeros(d) for _ in range(m)]
    momenta: list[np.ndarray] | None = None
    server = Server(problem) if c.method != "rsa" else None
    attack_state: dict = {}

    def labels(i: int, batch: np.ndarray) -> np.ndarray:
        y = y_all[batch]
        return classes - 1 - y if i >= r and c.attack == "label-flip" else y

    def minibatch_gradient(i: int, w: np.ndarray, batch: np.ndarray) -> np.ndarray:
        return softmax_grad(w, x_all[batch], labels(i, batch), classes)

    # worker i's gradient at w on its minibatch: plain, or variance-reduced (--vr)
    gradient = VarianceReduction(problem, active, minibatch_gradient) if c.vr != "none" else minibatch_gradient

    for k in range(1, iterations + 1):
        alpha = c.lr / math.sqrt(k) if c.lr_schedule == "sqrt" else c.lr
        batches = [samplers[i].next().numpy() for i in range(active)]
        if c.method == "rsa":
            new = list(local)
            for i in range(active):
                g = gradient(i, local[i], batches[i])
                new[i] = local[i] - alpha * (g / m + c.lam * subgradient(local[i] - x0, p))
            sent = new if c.master_order == "gauss-seidel" else local

            def master(messages, x0=x0, alpha=alpha):
                return x0 - alpha * (c.mu * x0 + c.lam * sum(subgradient(x0 - msg, p) for msg in messages))

            lies = attack(problem, sent[:r], sent[r:], gens, attack_state, master, x0) if q else []
            x0 = master(sent[:r] + lies)
            local = new
        else:
            grads = [
                gradient(i, x0, batches[i]) + c.mu * x0 for i in range(active)
            ]
            if c.momentum:
                momenta = [(1 - c.momentum) * g if momenta is None else c.momentum * mi + (1 - c.momentum) * g
                           for mi, g in zip(momenta or grads, grads)]
                grads = momenta
            messages = grads[:r]
            if q and c.method != "ideal-sgd":

                def probe(rows, x0=x0, alpha=alpha):
                    return x0 - alpha * server.copy()(rows)

                messages = messages + attack(problem, grads[:r], grads[r:], gens, attack_state, probe, x0)
            x0 = x0 - alpha * server(np.array(messages))
    return x0, (np.array(local[:r]) if c.method == "rsa" else None)


# Test settings in the flat style of the first release, each routed to the component that has it
# (a base config may name options of components a particular test does not use).
OPTION_KEYS = {
    "attack_c": ("attack", "c"), "attack_sigma": ("attack", "sigma"), "attack_copy_from": ("attack", "copy_from"),
    "attack_std": ("attack", "std"), "attack_value": ("attack", "value"),
    "geomed_tol": ("method", "tol"), "geomed_max_iter": ("method", "max_iter"), "multi_krum_k": ("method", "k"),
    "hidden": ("model", "hidden"),
}


def make_config(**settings):
    """A RunConfig from settings; option keys go to the chosen component when it has that option."""
    from byzrsa.attacks import ATTACKS
    from byzrsa.config import RunConfig
    from byzrsa.methods import get_method
    from byzrsa.models import MODELS

    config = RunConfig().replace(**{k: v for k, v in settings.items() if k not in OPTION_KEYS})
    owners = {"attack": ATTACKS[config.attack], "method": get_method(config.method), "model": MODELS[config.model]}
    options = {}
    for key, (kind, option) in OPTION_KEYS.items():
        if key in settings and option in {o.name for o in owners[kind].options}:
            options[f"{kind}.{option}"] = settings[key]
    return config.replace(**options) if options else config

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


def aggregate(method: str, rows: np.ndarray, f: int) -> np.ndarray:
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


def attack(problem: Problem, regular: list[np.ndarray], own: list[np.ndarray], gens) -> list[np.ndarray]:
    c = problem.config
    import torch

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
        elif c.attack == "gaussian":
            noise = torch.randn(len(regular[0]), generator=gens[j], dtype=torch.float64).numpy()
            out.append(c.attack_options['std'] * noise)
        elif c.attack == "non-finite":
            out.append(np.full_like(regular[0], c.attack_options['value']))
        elif c.attack == "negative-sum":
            out.append(-sum(regular))
        else:
            raise AssertionError(c.attack)
    return out


def reference_run(problem: Problem, iterations: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Run ``iterations`` steps; return x0 (or the shared model) and the RSA local iterates."""
    c = problem.config
    classes = problem.dataset.num_classes
    x_all = problem.train_x.double().numpy()
    y_all = problem.train_y.numpy()
    m, r, q = c.workers, c.regular, c.byzantine
    honest_byzantine = q > 0 and c.method != "ideal-sgd" and c.attack in ("none", "sign-flip")
    active = m if honest_byzantine else r
    samplers = [problem.sampler(i) for i in range(active)]
    gens = problem.attack_generators()
    p = problem.p
    d = problem.model.dim
    x0 = np.zeros(d)
    local = [np.zeros(d) for _ in range(m)]
    for k in range(1, iterations + 1):
        alpha = c.lr / math.sqrt(k) if c.lr_schedule == "sqrt" else c.lr
        batches = [samplers[i].next().numpy() for i in range(active)]
        if c.method == "rsa":
            new = list(local)
            for i in range(active):
                g = softmax_grad(local[i], x_all[batches[i]], y_all[batches[i]], classes)
                new[i] = local[i] - alpha * (g / m + c.lam * subgradient(local[i] - x0, p))
            sent = new if c.master_order == "gauss-seidel" else local
            messages = sent[:r] + (attack(problem, sent[:r], sent[r:], gens) if q else [])
            pull = sum(subgradient(x0 - msg, p) for msg in messages)
            x0 = x0 - alpha * (c.mu * x0 + c.lam * pull)
            local = new
        else:
            grads = [
                softmax_grad(x0, x_all[batches[i]], y_all[batches[i]], classes) + c.mu * x0 for i in range(active)
            ]
            messages = grads[:r]
            if q and c.method != "ideal-sgd":
                messages = messages + attack(problem, grads[:r], grads[r:], gens)
            f = q if c.agg_f is None else c.agg_f
            x0 = x0 - alpha * aggregate(c.method, np.array(messages), f)
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

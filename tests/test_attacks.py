"""Every attack against its paper's equation, on hand-made inputs, with plain float64 references.

Shared properties run over the whole registry: shape and dtype kept, no
Byzantine rows handled, and a row that does not depend on how many ``own`` rows
are passed (a dist-engine process computes only its own).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from byzrsa.attacks import ATTACKS, AttackContext, check_attack, get_attack
from byzrsa.attacks.adaptive import line_search
from byzrsa.attacks.optimised import min_max_gamma, min_sum_gamma
from byzrsa.attacks.rsa_aware import rsa_best_response, rsa_target
from byzrsa.errors import ConfigError
from byzrsa.methods import rsa_master_step
from byzrsa.penalties import subgradient

REGULAR = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
OWN = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
# Five regular workers in d = 4, spread unevenly (hand-made, so the references are easy to read).
FIVE = torch.tensor(
    [[1.0, 0.0, 2.0, -1.0], [2.0, 1.0, 0.0, 0.0], [0.0, -1.0, 1.0, 3.0], [4.0, 2.0, -2.0, 1.0], [1.0, 1.0, 1.0, 1.0]],
    dtype=torch.float64,
)
MASTER = dict(lam=0.7, alpha=0.1, mu=0.01)


def gens(n: int, seed: int = 0) -> AttackContext:
    """An attack context with one generator per Byzantine row."""
    return AttackContext(generators=[torch.Generator().manual_seed(seed + j) for j in range(n)], workers=3, byzantine=n)


def full_context(q: int, d: int, rows: range | None = None, dtype: torch.dtype = torch.float64, p: float = 1.0):
    """Everything any attack may ask for: generators of ``rows``, a mean defence, a master model."""
    rows = range(q) if rows is None else rows
    x0 = torch.linspace(-1.0, 1.0, d, dtype=dtype)
    return AttackContext(
        generators=[torch.Generator().manual_seed(j) for j in rows], workers=5 + q, byzantine=q, f=q,
        defence=lambda x: x.mean(dim=0), x0=x0, lam=0.5, p=p,
        receiver=x0 / 2, regular_weights=torch.full((5,), 0.1, dtype=dtype), byzantine_weight=0.05 * q,
    )


def options_for(name: str) -> dict:
    return {"value": math.inf} if name == "non-finite" else {}


# --- the paper's attacks (moved from test_core.py) ------------------------------------------------


def test_attacks_follow_their_definitions():
    assert get_attack("same-value")(REGULAR, OWN, gens(1), c=100.0).tolist() == [[100.0] * 3]
    assert get_attack("sign-flip")(REGULAR, OWN, gens(1), sigma=-4.0).tolist() == [[-2.0, 4.0, -8.0]]
    assert get_attack("copy")(REGULAR, OWN, gens(1), copy_from=1).tolist() == [[4.0, 5.0, 6.0]]
    assert get_attack("negated-copy")(REGULAR, OWN, gens(1), copy_from=1).tolist() == [[-4.0, -5.0, -6.0]]
    assert get_attack("negated-copy")(REGULAR, OWN.expand(2, 3), gens(2)).tolist() == [[-1.0, -2.0, -3.0]] * 2
    # sending zeros needs no attack of its own: same-value with c = 0
    assert get_attack("same-value")(REGULAR, OWN, gens(1), c=0.0).tolist() == [[0.0] * 3]
    assert get_attack("negative-sum")(REGULAR, OWN, gens(1)).tolist() == [[-5.0, -7.0, -9.0]]
    assert torch.isnan(get_attack("non-finite")(REGULAR, OWN, gens(1), value=math.nan)).all()
    assert torch.isinf(get_attack("non-finite")(REGULAR, OWN, gens(1), value=-math.inf)).all()
    assert get_attack("none")(REGULAR, OWN, gens(1)).tolist() == OWN.tolist()


def test_gaussian_attack_draws_one_stream_per_byzantine_worker():
    own = torch.zeros(3, 1000, dtype=torch.float64)
    regular = torch.zeros(2, 1000, dtype=torch.float64)
    sent = get_attack("gaussian")(regular, own, gens(3), std=5.0)
    assert sent.shape == (3, 1000) and sent.dtype == torch.float64
    assert 4.5 < float(sent.std()) < 5.5
    alone = get_attack("gaussian")(regular[:, :], own[1:2], AttackContext([torch.Generator().manual_seed(1)]), std=5.0)
    assert torch.equal(alone[0], sent[1])


# --- shared properties over the registry -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_keeps_shape_dtype_and_handles_no_byzantine(name, dtype):
    own = torch.arange(12, dtype=dtype).reshape(3, 4) / 7
    out = get_attack(name)(FIVE.to(dtype), own, full_context(3, 4, dtype=dtype), **options_for(name))
    assert out.shape == own.shape and out.dtype == dtype
    empty = get_attack(name)(FIVE.to(dtype), own[:0], AttackContext(), **options_for(name))
    assert empty.shape == (0, 4)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_row_does_not_depend_on_how_many_own_rows_are_passed(name):
    """The dist engine's property: Byzantine process j, given own[j] and generator j only, sends row j."""
    own = torch.arange(12, dtype=torch.float64).reshape(3, 4) / 7 - 0.5
    attack = get_attack(name)
    together = attack(FIVE, own, full_context(3, 4), **options_for(name))
    for j in range(3):
        alone = attack(FIVE, own[j : j + 1], full_context(3, 4, rows=range(j, j + 1)), **options_for(name))
        assert torch.equal(alone[0], together[j]), (name, j)


def test_entry_facts():
    assert {n for n, a in ATTACKS.items() if a.needs_defence} == {"alie-opt", "ipm-opt"}
    assert {n for n, a in ATTACKS.items() if a.needs_master} == {"rsa-aware"}
    assert {n for n, a in ATTACKS.items() if a.label_map is not None} == {"label-flip"}
    assert not ATTACKS["label-flip"].reads_regular and ATTACKS["label-flip"].needs_own


def test_attack_validation():
    with pytest.raises(ConfigError, match="unknown attack"):
        get_attack("teleport")
    with pytest.raises(ConfigError, match="copy"):
        check_attack("copy", regular=3, byzantine=1, options={"copy_from": 3})
    with pytest.raises(ConfigError, match="copy"):
        check_attack("negated-copy", regular=3, byzantine=1, options={"copy_from": -1})
    with pytest.raises(ConfigError, match="non-finite"):
        check_attack("non-finite", regular=3, byzantine=1, options={"value": 1.0})


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("alie", {"z": "abc"}),
        ("alie", {"z": math.inf}),
        ("ipm", {"epsilon": 0.0}),
        ("ipm", {"epsilon": -1.0}),
        ("min-max", {"direction": "up"}),
        ("min-max", {"gamma_init": 0.0}),
        ("min-sum", {"tol": 0.0}),
        ("min-sum", {"tol": 1.0}),
        ("mimic", {"warmup": 0}),
        ("alie-opt", {"low": 0.0}),
        ("alie-opt", {"low": 5.0, "high": 1.0}),
        ("ipm-opt", {"grid": 1}),
        ("ipm-opt", {"refine": -1}),
        ("rsa-aware", {"target": "sideways"}),
        ("label-flip", {"rate": 0.5}),
    ],
)
def test_bad_options_are_config_errors(name, options):
    with pytest.raises(ConfigError, match=name):
        check_attack(name, regular=16, byzantine=4, options=options)


def test_good_options_resolve():
    assert check_attack("alie", 16, 4) == {"z": None}
    assert check_attack("alie", 16, 4, {"z": "1.5"}) == {"z": 1.5}
    assert check_attack("min-max", 16, 4, {"direction": "sign"})["direction"] == "sign"
    assert check_attack("rsa-aware", 16, 4)["target"] == "against-pull"


# --- ALIE and IPM ---------------------------------------------------------------------------------


def test_alie_default_z_is_the_papers_z_max():
    x = FIVE.numpy()
    mu, sigma = x.mean(axis=0), x.std(axis=0)  # population standard deviation (ddof = 0)
    # n = 7 workers, f = 2: s = floor(7/2 + 1) - 2 = 2, so Phi(z_max) = (7 - 2) / 7.
    own = torch.zeros(2, 4, dtype=torch.float64)
    sent = get_attack("alie")(FIVE, own, AttackContext(workers=7, byzantine=2))
    z = float((mu[0] - sent[0, 0].item()) / sigma[0])
    assert 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) == pytest.approx(5 / 7, abs=1e-12)
    np.testing.assert_allclose(sent.numpy(), np.tile(mu - z * sigma, (2, 1)), rtol=1e-12)
    given = get_attack("alie")(FIVE, own, AttackContext(workers=7, byzantine=2), z=1.5)
    np.testing.assert_allclose(given[0].numpy(), mu - 1.5 * sigma, rtol=1e-12)


def test_alie_refuses_a_byzantine_majority_without_z():
    with pytest.raises(ConfigError, match="alie"):
        check_attack("alie", regular=2, byzantine=3)  # n = 5: s = 3 - 3 = 0, Phi^-1(1) is infinite
    check_attack("alie", regular=2, byzantine=3, options={"z": 1.0})
    with pytest.raises(ConfigError, match="alie"):
        get_attack("alie")(FIVE, torch.zeros(3, 4, dtype=torch.float64), AttackContext(workers=5, byzantine=3))


def test_ipm_sends_minus_epsilon_times_the_mean():
    mu = FIVE.numpy().mean(axis=0)
    sent = get_attack("ipm")(FIVE, torch.zeros(2, 4, dtype=torch.float64), AttackContext(byzantine=2), epsilon=0.1)
    np.testing.assert_allclose(sent.numpy(), np.tile(-0.1 * mu, (2, 1)), rtol=1e-15)


# --- min-max and min-sum --------------------------------------------------------------------------


def reference_direction(x: np.ndarray, direction: str) -> np.ndarray:
    mu = x.mean(axis=0)
    return {"unit": -mu / np.linalg.norm(mu), "std": -x.std(axis=0), "sign": -np.sign(mu)}[direction]


def min_max_ok(x: np.ndarray, m: np.ndarray) -> bool:
    worst_pair = max(np.linalg.norm(a - b) for a in x for b in x)
    return max(np.linalg.norm(m - b) for b in x) <= worst_pair


def min_sum_ok(x: np.ndarray, m: np.ndarray) -> bool:
    worst = max(sum(np.linalg.norm(a - b) ** 2 for b in x) for a in x)
    return sum(np.linalg.norm(m - b) ** 2 for b in x) <= worst


@pytest.mark.parametrize("direction", ["std", "unit", "sign"])
@pytest.mark.parametrize(("name", "ok"), [("min-max", min_max_ok), ("min-sum", min_sum_ok)])
def test_gamma_is_the_largest_that_keeps_the_condition(name, ok, direction):
    x = FIVE.numpy()
    mu, p = x.mean(axis=0), reference_direction(x, direction)
    own = torch.zeros(2, 4, dtype=torch.float64)
    sent = get_attack(name)(FIVE, own, AttackContext(byzantine=2), direction=direction).numpy()
    gamma = float(np.dot(sent[0] - mu, p) / np.dot(p, p))
    np.testing.assert_allclose(sent, np.tile(mu + gamma * p, (2, 1)), rtol=1e-12, atol=1e-12)
    assert gamma > 0 and ok(x, mu + gamma * p) and not ok(x, mu + gamma * (1 + 1e-4) * p)


def test_min_sum_gamma_has_a_closed_form_and_the_search_is_not_capped():
    x = FIVE.numpy()
    mu, p = x.mean(axis=0), reference_direction(x, "unit")
    # sum_j (x_j - mu) = 0 turns the min-sum condition into gamma |p| <= max_i |x_i - mu|.
    exact = max(np.linalg.norm(row - mu) for row in x) / np.linalg.norm(p)
    for gamma_init in (1e-3, 10.0, 1e6):  # the paper's search never passes 2 gamma_init; this one does
        assert min_sum_gamma(FIVE, "unit", gamma_init, 1e-9) == pytest.approx(exact, rel=1e-8)
    # min-max: the smallest over j of the larger root of |mu - x_j + gamma p|^2 = max pair distance^2.
    bound = max(np.linalg.norm(a - b) for a in x for b in x) ** 2
    roots = []
    for row in x:
        b, c = np.dot(p, mu - row), np.dot(mu - row, mu - row) - bound
        roots.append((-b + math.sqrt(b * b - np.dot(p, p) * c)) / np.dot(p, p))
    assert min_max_gamma(FIVE, "unit", 10.0, 1e-9) == pytest.approx(min(roots), rel=1e-8)


def test_min_max_with_identical_messages_sends_them():
    same = torch.ones(4, 3, dtype=torch.float64)
    for direction in ("std", "unit", "sign"):
        sent = get_attack("min-max")(same, torch.zeros(1, 3, dtype=torch.float64), AttackContext(), direction=direction)
        assert torch.equal(sent[0], same[0])


# --- mimic ----------------------------------------------------------------------------------------


def mimic_reference(rounds: list[np.ndarray], warmup: int) -> list[int]:
    """The mimicked worker of each round, written from the authors' update (float64, one worker at a time)."""
    z = torch.randn(rounds[0].shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
    chosen, mu, target = [], None, None
    for t, x in enumerate(rounds):
        if t < warmup:
            mean = x.mean(axis=0)
            mu = mean if t == 0 else t / (1 + t) * mu + mean / (1 + t)
            cumu = sum(np.dot(row - mu, z) * (row - mu) for row in x)
            if t == 0:
                z = cumu / np.linalg.norm(cumu)
            else:
                z = t / (1 + t) * z + cumu / np.linalg.norm(cumu) / (1 + t)
                z = z / np.linalg.norm(z)
            scores = [float(np.dot(row, z)) for row in x]
            target = scores.index(max(scores))
        chosen.append(target)
    return chosen


def test_mimic_follows_the_online_top_direction_then_stays():
    gen = torch.Generator().manual_seed(3)
    d = 6
    direction = torch.tensor([3.0, -1.0, 0.5, 0.0, 2.0, 1.0], dtype=torch.float64)
    rounds = []
    for _ in range(7):
        spread = torch.randn(5, 1, generator=gen, dtype=torch.float64)
        rounds.append(0.3 + spread * direction + 0.4 * torch.randn(5, d, generator=gen, dtype=torch.float64))
    expected = mimic_reference([r.numpy() for r in rounds], warmup=4)
    ctx = AttackContext(byzantine=2)
    for t, x in enumerate(rounds):
        sent = get_attack("mimic")(x, torch.zeros(2, d, dtype=torch.float64), ctx, warmup=4)
        assert torch.equal(sent, x[expected[t]].expand(2, d)), t
        assert ctx.state["mimic_target"] == expected[t]
    assert len(set(expected[3:])) == 1  # fixed after the warm-up
    direction = direction / direction.norm()
    assert abs(float(ctx.state["mimic_z"] @ direction)) > 0.9  # it found the spread's direction


# --- label flipping -------------------------------------------------------------------------------


def test_label_flip_maps_labels_and_computes_honestly():
    entry = get_attack("label-flip")
    assert entry.label_map(torch.arange(10), 10).tolist() == list(range(9, -1, -1))
    assert entry.label_map(torch.tensor([0, 1]), 2).tolist() == [1, 0]
    assert torch.equal(entry(REGULAR, OWN, gens(1)), OWN)


# --- optimised (defence-aware) ALIE and IPM -------------------------------------------------------


def test_line_search_finds_the_maximum_and_the_global_peak():
    peak = line_search(lambda s: -(math.log(s) - math.log(3.0)) ** 2, 0.01, 100.0, 17, 40)
    assert peak == pytest.approx(3.0, rel=1e-6)
    # Two peaks: the grid finds the higher one, the refinement sharpens it.
    def bump(s: float, at: float) -> float:
        return math.exp(-20.0 * (math.log(s) - math.log(at)) ** 2)

    two = line_search(lambda s: bump(s, 0.05) + 2.0 * bump(s, 20.0), 0.01, 100.0, 17, 40)
    assert two == pytest.approx(20.0, rel=1e-4)
    assert line_search(lambda s: math.nan if s > 2 else s, 0.01, 100.0, 9, 0) == pytest.approx(1.0)  # NaN is worst


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """The true median (mean of the two middle values for an even count), as NumPy's."""
    middle = x.sort(dim=0).values[(x.shape[0] - 1) // 2 : x.shape[0] // 2 + 1]
    return middle.mean(dim=0)


@pytest.mark.parametrize(("name", "lie"), [("alie-opt", "alie"), ("ipm-opt", "ipm")])
def test_optimised_factor_beats_every_factor_on_a_fine_grid(name, lie):
    x = FIVE.numpy()
    mu, sigma = x.mean(axis=0), x.std(axis=0)
    q = 3

    def defence_np(rows: np.ndarray) -> np.ndarray:
        return np.median(rows, axis=0)

    def gap(message: np.ndarray) -> float:
        base = defence_np(np.vstack([x, np.tile(mu, (q, 1))]))
        return float(np.linalg.norm(defence_np(np.vstack([x, np.tile(message, (q, 1))])) - base))

    family = (lambda s: mu - s * sigma) if lie == "alie" else (lambda s: -s * mu)
    ctx = AttackContext(byzantine=q, defence=coordinate_median)
    sent = get_attack(name)(FIVE, torch.zeros(q, 4, dtype=torch.float64), ctx).numpy()
    fine = max(gap(family(s)) for s in np.geomspace(0.01, 100.0, 2001))
    assert gap(sent[0]) >= fine - 1e-9
    # The mean defence moves without bound: the search goes to the top of its range.
    mean_ctx = AttackContext(byzantine=q, defence=lambda r: r.mean(dim=0))
    top = get_attack(name)(FIVE, torch.zeros(1, 4, dtype=torch.float64), mean_ctx, high=50.0).numpy()
    np.testing.assert_allclose(top[0], family(50.0), rtol=1e-12)


def test_optimised_attacks_need_the_defence():
    with pytest.raises(ConfigError, match="defence"):
        get_attack("alie-opt")(FIVE, torch.zeros(1, 4, dtype=torch.float64), AttackContext(byzantine=1))


# --- the RSA-aware attack -------------------------------------------------------------------------

NORMS = [1.0, 1.5, 2.0, 3.0, math.inf]


def dual_budget(t: np.ndarray, p: float) -> float:
    """||t||_p, written out: the most <g, t> can be over the dual ball ||g||_{p*} <= 1 (Hölder)."""
    if math.isinf(p):
        return float(np.abs(t).max())
    return float((np.abs(t) ** p).sum() ** (1.0 / p))


def movement(x0, regular, byzantine, t, p) -> float:
    """How far the Byzantine rows move RSA's next master along t, against the same step without them."""
    with_them = rsa_master_step(x0, torch.cat([regular, byzantine]), p=p, **MASTER)
    without = rsa_master_step(x0, regular, p=p, **MASTER)
    return float((with_them - without) @ t)


@pytest.mark.parametrize("p", NORMS)
def test_rsa_best_response_spends_the_whole_budget(p):
    gen = torch.Generator().manual_seed(11)
    q, d = 3, 9
    for trial in range(20):
        x0 = torch.randn(d, generator=gen, dtype=torch.float64) * 10 ** (trial % 4)
        regular = x0 + torch.randn(6, d, generator=gen, dtype=torch.float64)
        t = torch.randn(d, generator=gen, dtype=torch.float64)
        z = rsa_best_response(x0, t, p).expand(q, d)
        budget = q * MASTER["alpha"] * MASTER["lam"] * dual_budget(t.numpy(), p)
        assert movement(x0, regular, z, t, p) == pytest.approx(budget, rel=1e-9)
        # No other messages of the same q workers move x0 farther along t.
        for scale in (1e-3, 1.0, 1e3):
            other = x0 + scale * torch.randn(q, d, generator=gen, dtype=torch.float64)
            assert movement(x0, regular, other, t, p) <= budget * (1 + 1e-12)


def test_rsa_best_response_is_exact_for_l1_and_linf_patterns():
    x0 = torch.tensor([1e8, -3.0, 0.0, 2.5e-7], dtype=torch.float64)
    t = torch.tensor([1e-9, -2.0, 0.0, 5.0], dtype=torch.float64)
    assert torch.equal(subgradient(x0 - rsa_best_response(x0, t, 1.0), 1.0), -torch.sign(t))
    tied = torch.tensor([3.0, -3.0, 1.0, 0.0], dtype=torch.float64)
    g = subgradient(x0 - rsa_best_response(x0, tied, math.inf), math.inf)
    assert float(-(g @ tied)) == 3.0  # ||tied||_inf, with the mass split over the tied peaks or not
    assert torch.equal(rsa_best_response(x0, torch.zeros(4, dtype=torch.float64), 2.0), x0)


@pytest.mark.parametrize("p", NORMS)
@pytest.mark.parametrize("target", ["against-pull", "negative-x0", "ones"])
def test_no_registered_attack_moves_the_master_farther_than_rsa_aware(p, target):
    gen = torch.Generator().manual_seed(5)
    q, d = 3, 7
    x0 = torch.randn(d, generator=gen, dtype=torch.float64)
    regular = x0 + torch.randn(5, d, generator=gen, dtype=torch.float64)
    own = x0 + torch.randn(q, d, generator=gen, dtype=torch.float64)
    ctx_args = dict(workers=5 + q, byzantine=q, f=q, x0=x0, lam=MASTER["lam"], p=p)
    t = rsa_target(regular, x0, p, target)

    def step(messages):  # what the engines pass RSA attacks as the defence: the next master model
        return rsa_master_step(x0, messages, p=p, **MASTER)

    def ctx():
        return AttackContext(generators=[torch.Generator().manual_seed(j) for j in range(q)], defence=step, **ctx_args)

    best = movement(x0, regular, get_attack("rsa-aware")(regular, own, ctx(), target=target), t, p)
    assert best == pytest.approx(q * MASTER["alpha"] * MASTER["lam"] * dual_budget(t.numpy(), p), rel=1e-9)
    for name in (n for n in ATTACKS if not ATTACKS[n].needs_graph):  # graph attacks need a receiver
        sent = get_attack(name)(regular, own, ctx(), **options_for(name))
        assert movement(x0, regular, sent, t, p) <= best * (1 + 1e-12) + 1e-15, name


def test_against_pull_reverses_the_regular_workers_pull_for_l1():
    x0 = torch.zeros(3, dtype=torch.float64)
    regular = torch.tensor([[1.0, -1.0, 2.0], [3.0, -2.0, -1.0], [2.0, 1.0, 0.5]], dtype=torch.float64)
    # sum_i sign(x0 - x_i) = [-3, 1, -1]: the regular workers pull x0 up, down, up; the attack pushes the other way.
    ctx = AttackContext(byzantine=2, x0=x0, p=1.0)
    z = get_attack("rsa-aware")(regular, torch.zeros(2, 3, dtype=torch.float64), ctx)
    assert torch.equal(torch.sign(z - x0), torch.tensor([[-1.0, 1.0, -1.0]] * 2, dtype=torch.float64))


def test_rsa_aware_needs_the_master():
    with pytest.raises(ConfigError, match="master"):
        get_attack("rsa-aware")(REGULAR, OWN, AttackContext(byzantine=1))

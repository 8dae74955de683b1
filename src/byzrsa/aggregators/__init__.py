r"""Gradient-aggregation rules: ``(m, d)`` messages -> ``(d,)`` aggregate.

Every rule is a pure function of a floating-point tensor ``x`` whose ``m`` rows
are the workers' messages. The output keeps the input's dtype and device.
``RULES`` is the registry: every rule is one :class:`Rule` entry with its options,
its label and the properties the shared property tests check
(``tests/test_aggregators.py``); ``get_rule`` looks one up by its config name and
``check_rule`` rejects impossible settings before training starts. Each rule
lives in a module of this package; adding one is a function there and an entry here.

Non-finite messages (docs/protocol.md, convention 6) are treated per rule; each
docstring says how. In short: ``mean`` propagates them (it is the non-robust
baseline); ``median`` and ``trimmed_mean`` read a NaN entry as ``+inf`` (an
outlier on one side); ``krum``/``multi_krum`` never select a row with a
non-finite entry; ``geometric_median`` drops such rows. When every row is
non-finite, Krum and the geometric median return the (non-finite) mean.

Speed choices, measured on CPU in float32 (a shared 2-core machine, so best of
several interleaved runs, one thread). Since then the CPU median and trimmed
mean select with NumPy's introselect, 1.3-1.9x faster again (see :func:`_middle`
and ``benchmarks/run.py``); on other devices they keep the ``topk`` selections
measured here. For the even-``m`` median, selecting the
``m // 2 + 1`` smallest entries per coordinate with ``topk`` and then the top two
of those beats a full sort along dim 0 and two ``kthvalue`` calls ((100, 100_000):
~580 ms vs ~1010 ms and ~1110 ms; (20, 7850): ~4.8 ms vs ~8.5 ms and ~15 ms;
``torch.median``, which returns the *lower* middle and so is not used, takes
~430 ms and ~7 ms). The trimmed mean likewise uses two ``topk`` selections
((100, 100_000), f = 20: ~1.1 s vs ~1.35 s for a sort; about equal at (20, 7850)).
Krum: two Gram matrices and no (m, d) temporaries beyond one centring, ~1.2 ms at
(20, 7850) and ~170 ms at (100, 100_000). The geometric median's per-iteration
distances: see :func:`geometric_median_with_info`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from byzrsa.aggregators._common import _check_f, _check_krum, _check_trimmed
from byzrsa.aggregators.bulyan import _check_bulyan, bulyan, bulyan_selection
from byzrsa.aggregators.cclip import centered_clipping
from byzrsa.aggregators.coordinate import mean, median, trimmed_mean
from byzrsa.aggregators.ios import ios, ios_check
from byzrsa.aggregators.geomed import geometric_median, geometric_median_with_info
from byzrsa.aggregators.krum import krum, krum_scores, multi_krum
from byzrsa.aggregators.signsgd import sign_majority
from byzrsa.errors import ConfigError
from byzrsa.registry import Entry, Option, Registry, at_least, non_negative, positive

__all__ = [
    "mean",
    "median",
    "trimmed_mean",
    "geometric_median",
    "geometric_median_with_info",
    "krum",
    "multi_krum",
    "krum_scores",
    "centered_clipping",
    "bulyan",
    "bulyan_selection",
    "sign_majority",
    "ios",
    "Rule",
    "RULES",
    "get_rule",
    "check_rule",
]


@dataclass(frozen=True)
class Rule(Entry):
    """One aggregation rule: ``fn(x, [f,] **options) -> (d,)`` and the properties the shared tests hold it to.

    Attributes (beyond :class:`byzrsa.registry.Entry`)
    ----------
    needs_f : bool
        The rule takes the number of Byzantine rows ``f`` as its second argument.
    translation_equivariant, scale_equivariant : bool
        ``rule(x + t) = rule(x) + t`` and ``rule(a x) = a rule(x)`` for ``a > 0``.
    robust : bool
        The output stays bounded when fewer than the breakdown number of rows
        are arbitrary outliers (False for the mean).
    uses_previous : bool
        The rule takes the keyword ``previous``: the previous round's aggregate
        (None in the first round), e.g. the centre of centered clipping. The
        engines keep it.
    sign_output : bool
        The output is a vote in ``{-1, 0, 1}^d`` (signSGD), not an estimate of the
        rows: identical rows return that row's sign and the output is bounded by
        1 in every coordinate, which is what the shared tests check instead of
        "returns that row" and "within the range of the regular rows".
    weighted : bool
        The rule takes keywords ``weights`` (one positive weight per row) and
        ``keep`` (a row it never drops): on a graph it gets the node's mixing
        weights, its own row first (IOS).
    check : callable or None
        ``check(m, f, options)`` raises :class:`ConfigError` when the rule cannot
        run on ``m`` rows of which ``f`` are Byzantine (Krum: ``m >= 2f + 3``).
    """

    needs_f: bool = False
    translation_equivariant: bool = True
    scale_equivariant: bool = True
    robust: bool = True
    uses_previous: bool = False
    sign_output: bool = False
    weighted: bool = False
    check: Callable[[int, int, dict[str, Any]], None] | None = None

    def __call__(self, x: Tensor, f: int = 0, **options: Any) -> Tensor:
        """Aggregate ``x`` (m, d); ``f`` is passed only to rules that take it."""
        if self.needs_f:
            return self.fn(x, f, **options)
        return self.fn(x, **options)


def _krum_check(m: int, f: int, options: dict[str, Any]) -> None:
    _check_krum("krum", m, f)


def _multi_krum_check(m: int, f: int, options: dict[str, Any]) -> None:
    _check_krum("multi-krum", m, f)
    k = options.get("k")
    if k is not None and not 1 <= k <= m:
        raise ConfigError(f"multi-krum needs 1 <= k <= m: got k = {k}, m = {m}")


def _trimmed_check(m: int, f: int, options: dict[str, Any]) -> None:
    _check_trimmed(m, f)


def _bulyan_check(m: int, f: int, options: dict[str, Any]) -> None:
    _check_bulyan(m, f)


RULES: Registry[Rule] = Registry("aggregation rule")
RULES.register(Rule("mean", mean, "Mean", "coordinate-wise mean (not robust)", robust=False))
RULES.register(Rule("median", median, "Median", "coordinate-wise true median (mean of the two middle values for even m)"))
RULES.register(Rule(
    "trimmed-mean", trimmed_mean, "Trimmed mean", "coordinate-wise mean after dropping the f largest and f smallest",
    needs_f=True, check=_trimmed_check,
))
RULES.register(Rule(
    "geomed", geometric_median, "GeoMed", "geometric median (Weiszfeld, relative stopping rule, equivariant start)",
    options=(
        Option("tol", float, 1e-7, "relative stopping tolerance of Weiszfeld's iterations", non_negative),
        Option("max_iter", int, 1000, "iteration cap", at_least(0)),
    ),
    uses_previous=True,
))
RULES.register(Rule(
    "krum", krum, "Krum", "the row with the lowest Krum score (m - f - 2 nearest neighbours)",
    needs_f=True, check=_krum_check,
))
RULES.register(Rule(
    "multi-krum", multi_krum, "Multi-Krum", "mean of the k rows with the lowest Krum scores",
    options=(Option("k", int, None, "rows averaged (default m - f)", at_least(1), optional=True),),
    needs_f=True, check=_multi_krum_check,
))
RULES.register(Rule(
    "cclip", centered_clipping, "CClip", "centered clipping around the previous aggregate (median in round 1)",
    options=(
        Option("tau", float, 10.0, "clipping radius (absolute)", positive),
        Option("iters", int, 3, "clipping iterations per round", at_least(1)),
    ),
    scale_equivariant=False, uses_previous=True,
))
RULES.register(Rule(
    "bulyan", bulyan, "Bulyan", "m - 2f rows by iterated Krum, then the mean of the m - 4f values nearest the median",
    needs_f=True, check=_bulyan_check,
))
RULES.register(Rule(
    "signsgd", sign_majority, "signSGD", "majority vote of the rows' signs (a step direction in {-1, 0, 1})",
    translation_equivariant=False, scale_equivariant=False, sign_output=True,
))

RULES.register(Rule(
    "ios", ios, "IOS", "iterative outlier scissor: f times drop the row farthest from the (weighted) mean of the rest",
    needs_f=True, weighted=True, check=ios_check,
))


def get_rule(name: str) -> Rule:
    """The rule registered as ``name``; :class:`ConfigError` listing the valid names otherwise."""
    return RULES[name]


def check_rule(name: str, m: int, f: int, options: dict[str, Any] | None = None) -> None:
    """Reject a rule that cannot run with ``m`` rows of which ``f`` are Byzantine.

    Raises :class:`ConfigError` (with the numbers) for an unknown rule, ``m < 1``,
    ``f < 0`` or ``f > m``, and whatever the rule's own ``check`` refuses
    (Krum / multi-Krum with ``m < 2f + 3``, the trimmed mean with ``m <= 2f``,
    Bulyan with ``m < 4f + 3``).
    """
    rule = get_rule(name)
    f = _check_f(f)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"{name} needs at least one worker (m >= 1), got m = {m}")
    if f > m:
        raise ConfigError(f"f = {f} Byzantine workers cannot exceed the m = {m} workers")
    if rule.check is not None:
        rule.check(m, f, rule.resolve(options, "rule"))

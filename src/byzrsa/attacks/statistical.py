r"""Attacks built from the regular messages' statistics: ALIE and IPM.

Both send one message, the same for every Byzantine worker, computed from mu
and sigma, the coordinate-wise mean and population standard deviation of the
round's regular messages (:func:`byzrsa.attacks.base.regular_moments`).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

from torch import Tensor

from byzrsa.attacks.base import AttackContext, regular_moments, same_row
from byzrsa.errors import ConfigError

__all__ = ["alie_z_max", "alie_message", "alie", "ipm_message", "ipm"]


def alie_z_max(n: int, f: int) -> float:
    r"""ALIE's default factor: :math:`z_{\max} = \Phi^{-1}\big((n - s)/n\big)`, :math:`s = \lfloor n/2 + 1\rfloor - f`.

    Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses
    For Distributed Learning", NeurIPS 2019 (its model-corruption algorithm): s is the number of
    regular workers the f Byzantine ones must win over to form a majority, and
    :math:`z_{\max}` the largest z for which that many regular workers are
    expected to lie farther from the mean than the lie (:math:`\Phi` the
    standard normal CDF).

    Parameters
    ----------
    n : int
        Number of workers, regular and Byzantine.
    f : int
        Number of Byzantine workers (the attacker's own count, q).

    Raises
    ------
    ConfigError
        When :math:`(n - s)/n` is not in (0, 1): with a Byzantine majority
        (:math:`f \ge \lfloor n/2 + 1\rfloor`) the quantile is infinite; give
        ``z`` explicitly then.
    """
    s = math.floor(n / 2 + 1) - f
    level = (n - s) / n if n > 0 else math.nan
    if not 0.0 < level < 1.0:
        raise ConfigError(
            f"alie attack: z_max = Phi^-1((n - s)/n) with s = floor(n/2 + 1) - f is undefined for n = {n}, "
            f"f = {f} ((n - s)/n = {level:g}); set the option z"
        )
    return NormalDist().inv_cdf(level)


def alie_message(regular: Tensor, z: float) -> Tensor:
    r"""The ALIE lie :math:`\mu - z\,\sigma`, shape (d,)."""
    mu, sigma = regular_moments(regular)
    return mu - z * sigma


def alie(regular: Tensor, own: Tensor, ctx: AttackContext, *, z: float | None = None) -> Tensor:
    r"""A Little Is Enough: every Byzantine worker sends :math:`\mu - z\,\sigma`.

    .. math:: m = \mu - z\,\sigma ,\qquad z = z_{\max} = \Phi^{-1}\!\Big(\frac{n - s}{n}\Big),
              \quad s = \Big\lfloor \frac n2 + 1 \Big\rfloor - f

    Baruch, Baruch and Goldberg, NeurIPS 2019 (see :func:`alie_z_max`), with
    n = ``ctx.workers`` and f = ``ctx.byzantine``.

    Departures, on purpose: mu and sigma are those of all the regular messages
    (docs/protocol.md, omniscient attacker), where the paper estimates them from the
    Byzantine workers' own honest values, and sigma is the population standard
    deviation. The direction of the shift is immaterial to the paper's argument,
    which is symmetric; :math:`\mu - z\sigma` is what the bucketing paper's code
    sends. That code also uses the quantile level
    :math:`(n - f - s)/(n - f)` and the sample deviation: set ``z`` to compare.

    Parameters
    ----------
    z : float or None
        The factor; None for :math:`z_{\max}`.
    """
    if own.shape[0] == 0:
        return own.clone()
    if z is None:
        z = alie_z_max(ctx.workers, ctx.byzantine)
    return same_row(alie_message(regular, z), own)


def ipm_message(regular: Tensor, epsilon: float) -> Tensor:
    r"""The IPM lie :math:`-\epsilon\,\mu`, shape (d,)."""
    return -epsilon * regular.mean(dim=0)


def ipm(regular: Tensor, own: Tensor, ctx: AttackContext, *, epsilon: float = 0.1) -> Tensor:
    r"""Inner-product manipulation: every Byzantine worker sends :math:`-\epsilon\,\mu`.

    .. math:: m = -\frac{\epsilon}{r} \sum_{i \in R} x_i = -\epsilon\,\mu

    Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by
    Inner Product Manipulation", UAI 2019, Section 4: the lie makes the inner
    product of the aggregate with the true mean negative. A small epsilon (0.1)
    hides the lie among the regular messages (it defeats Krum); a large one
    (e.g. 100) drags coordinate-wise rules.

    Parameters
    ----------
    epsilon : float
        The factor, > 0.
    """
    if own.shape[0] == 0:
        return own.clone()
    return same_row(ipm_message(regular, epsilon), own)


def alie_check(regular: int, byzantine: int, options: dict[str, Any]) -> None:
    """A default z needs a finite quantile (no Byzantine majority)."""
    if byzantine > 0 and options["z"] is None:
        alie_z_max(regular + byzantine, byzantine)

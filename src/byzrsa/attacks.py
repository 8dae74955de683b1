"""Byzantine attacks: what the q Byzantine workers send instead of the truth.

An attack is a pure function of what an omniscient attacker may see:

* ``regular``: the messages of the regular workers this iteration, ``(r, d)``;
* ``own``: the Byzantine workers' own true values, ``(q, d)`` (the model a
  Byzantine worker would have sent had it been honest, or its true gradient);
* ``generators``: one ``torch.Generator`` per Byzantine worker, for random attacks,

and returns the ``(q, d)`` messages actually sent. The same attacks apply to
models (RSA, where messages are local iterates) and to gradients (the
gradient-aggregation baselines). One generator per Byzantine worker means a
Byzantine *process* of the distributed engine, holding only its own generator,
draws exactly what the simulator draws for its row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from byzrsa.errors import ConfigError

__all__ = [
    "Attack",
    "ATTACKS",
    "get_attack",
    "check_attack",
    "same_value",
    "sign_flip",
    "copy_worker",
    "gaussian",
    "non_finite",
    "negative_sum",
]


def same_value(regular: Tensor, own: Tensor, generators: Sequence[torch.Generator], *, c: float = 100.0) -> Tensor:
    """Every Byzantine worker sends ``c * 1`` (the paper's same-value attack)."""
    return torch.full_like(own, c)


def sign_flip(regular: Tensor, own: Tensor, generators: Sequence[torch.Generator], *, sigma: float = -4.0) -> Tensor:
    """Each Byzantine worker sends ``sigma`` times its own true value (sigma < 0 flips it)."""
    return own * sigma


def copy_worker(regular: Tensor, own: Tensor, generators: Sequence[torch.Generator], *, copy_from: int = 0) -> Tensor:
    """Every Byzantine worker sends regular worker ``copy_from``'s message (0 = first regular worker).

    On a heterogeneous split this makes that worker's data count q + 1 times and
    hides what the Byzantine workers' own data would have contributed.
    """
    return regular[copy_from].expand_as(own).clone()


def gaussian(regular: Tensor, own: Tensor, generators: Sequence[torch.Generator], *, std: float = 200.0) -> Tensor:
    """Each Byzantine worker sends i.i.d. ``N(0, std^2)`` entries, drawn from its own generator."""
    rows = [torch.randn(own.shape[1], generator=g, dtype=own.dtype, device=own.device) for g in generators]
    return torch.stack(rows) * std if rows else torch.empty_like(own)


def non_finite(regular: Tensor, own: Tensor, generators: Sequence[torch.Generator], *, value: float = math.nan) -> Tensor:
    """Every Byzantine worker sends a vector of ``value`` (NaN, +inf or -inf)."""
    return torch.full_like(own, value)


def negative_sum(regular: Tensor, own: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Every Byzantine worker sends minus the sum of the regular messages (attack a2 of the paper)."""
    return (-regular.sum(dim=0)).expand_as(own).clone()


def _none(regular: Tensor, own: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    return own.clone()


@dataclass(frozen=True)
class Attack:
    """An entry of the attack table.

    ``params`` maps each keyword of ``fn`` to the config field that sets it.
    ``needs_own`` says whether the Byzantine workers' true values must be
    computed (they cost a gradient or a local step per Byzantine worker).
    """

    name: str
    fn: Callable[..., Tensor]
    params: dict[str, str] = field(default_factory=dict)
    needs_own: bool = False

    def __call__(
        self, regular: Tensor, own: Tensor, generators: Sequence[torch.Generator], **params: Any
    ) -> Tensor:
        return self.fn(regular, own, generators, **params)


ATTACKS: dict[str, Attack] = {
    a.name: a
    for a in (
        Attack("none", _none, needs_own=True),
        Attack("same-value", same_value, {"c": "attack_c"}),
        Attack("sign-flip", sign_flip, {"sigma": "attack_sigma"}, needs_own=True),
        Attack("copy", copy_worker, {"copy_from": "attack_copy_from"}),
        Attack("gaussian", gaussian, {"std": "attack_std"}),
        Attack("non-finite", non_finite, {"value": "attack_value"}),
        Attack("negative-sum", negative_sum),
    )
}


def get_attack(name: str) -> Attack:
    """The attack called ``name``; :class:`ConfigError` listing the valid names otherwise."""
    try:
        return ATTACKS[name]
    except KeyError:
        raise ConfigError(f"unknown attack {name!r}: choose one of {', '.join(ATTACKS)}") from None


def check_attack(name: str, regular: int, byzantine: int, params: dict[str, Any]) -> None:
    """Validate an attack's settings before training (raises :class:`ConfigError`)."""
    get_attack(name)
    if name == "copy" and byzantine > 0 and not 0 <= int(params.get("copy_from", 0)) < regular:
        raise ConfigError(
            f"copy attack: attack_copy_from={params.get('copy_from')} is not a regular worker (0..{regular - 1})"
        )
    if name == "non-finite" and math.isfinite(float(params.get("value", math.nan))):
        raise ConfigError("non-finite attack: attack_value must be nan, inf or -inf")
    if name == "gaussian" and not float(params.get("std", 0.0)) >= 0:
        raise ConfigError("gaussian attack: attack_std must be >= 0")

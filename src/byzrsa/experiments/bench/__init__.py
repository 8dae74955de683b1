"""``byzrsa bench``: the robustness table of RSA against today's defences and attacks.

The package's modules: :mod:`.grid` (a grid's types and a user's TOML grid),
:mod:`.presets` (the named grids), :mod:`.published` (the published numbers the
presets mirror), :mod:`.tune` (fair tuning on a validation split, extended past
an edge), :mod:`.cost` (the estimate), :mod:`.command` (plan, run, resume:
:func:`bench`), :mod:`.stats` (final accuracies, paired comparisons,
convergence), :mod:`.theory` (lambda0 beside each RSA row), :mod:`.figures` and
:mod:`.report`. No import circle: ``command`` imports ``report`` (when it writes
one) and nothing imports ``command``. The paper's reproduction is the sibling
package :mod:`byzrsa.experiments.paper`; run folders, plots and the runner
(:mod:`~byzrsa.folders`, :mod:`~byzrsa.experiments.plots`,
:mod:`~byzrsa.experiments.runner`) and ``byzrsa tune`` sit beside both.

The command's names are read from :mod:`.command` on first use, so importing a
grid or a preset (``byzrsa bench --list``) does not import the engines.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Scenario", "Cell", "BenchPlan", "plan_bench", "plan_grid", "chosen_values", "bench", "apply_overrides"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from byzrsa.experiments.bench import command

        return getattr(command, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""`byzrsa bench`: presets as data, the sorted-shards split, the validation split, and a tiny grid end to end
(every output, the resume, and that tuning never reads the test set)."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from byzrsa.cli import main
from byzrsa.config import config_from_dict
from byzrsa.data import partition
from byzrsa.data.validation import validation_indices, validation_split
from byzrsa.engines.common import build_problem
from byzrsa.errors import ConfigError
from byzrsa.experiments import paper
from byzrsa.experiments.bench import bench, plan_bench, plan_grid
from byzrsa.experiments.bench.presets import (
    PRESETS,
    AttackSpec,
    Grid,
    Level,
    MethodSpec,
    Tuning,
    grid_from_dict,
    resolve_f,
)
from byzrsa.experiments.bench.stats import summarise

BASE = {"dataset": "digits", "pixels": "unit", "model": "softmax", "workers": 10, "batch_size": 16,
        "iterations": 20, "eval_every": 5, "lr_schedule": "constant", "mu": 0.0}


def tiny_grid(**changes) -> Grid:
    grid = Grid(
        name="tiny", description="a tiny grid on digits", base=BASE,
        levels=(Level("iid", {"split": "iid"}), Level("by-label", {"split": "by-label"})),
        methods=(MethodSpec("RSA", {"method": "rsa", "lr": 1.0, "lam": 0.01}),
                 MethodSpec("Ideal SGD", {"method": "ideal-sgd", "lr": 0.3}),
                 MethodSpec("Median", {"method": "median", "lr": 0.3})),
        attacks=(AttackSpec("none", {"attack": "none"}), AttackSpec("sign-flip", {"attack": "sign-flip"})),
        byzantine=(2,), seeds=(0, 1, 2), tuning=Tuning(validation=0.2, seeds=(0,), lr=(0.5, 2.0), lam=(1.0,)),
    )
    return grid.with_changes(**changes)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "tiny"
    result = bench(tiny_grid(), out=out, jobs=1, curves=["sign-flip"], calibrate=False, quiet=True)
    return out, result


# --------------------------------------------------------------------------- presets


@pytest.mark.slow
def test_presets_are_listed_and_plan(capsys):
    assert main(["bench", "--list"]) == 0
    text = capsys.readouterr().out
    for name in ("quick", "paper-plus", "fmnist-cnn", "bucketing-exp3"):
        assert f"{name}:" in text
    for name in ("quick", "bucketing-exp3"):
        plan = plan_bench(PRESETS[name], untuned=True)
        plan_grid(plan)
        assert plan.runs and all(len(c.keys) == len(PRESETS[name].seeds) or c.na for c in plan.cells)
    assert len(PRESETS["quick"].seeds) >= 3 and len(PRESETS["quick"].levels) == 4


def test_bucketing_exp3_is_the_papers_setting():
    g = PRESETS["bucketing-exp3"]
    assert (g.base["workers"], g.byzantine, g.base["model"], g.base["batch_size"], g.base["iterations"]) == (
        25, (5,), "cnn", 32, 600)
    assert g.base["lr_schedule"] == "constant" and [lv.settings["split"] for lv in g.levels] == ["sorted-shards"]
    names = {a.settings["attack"]: a.settings for a in g.attacks}
    assert {"alie", "ipm", "label-flip", "mimic", "sign-flip"} <= set(names)
    assert names["ipm"]["attack.epsilon"] == 0.1
    gradient = [m for m in g.methods if m.settings["method"] != "rsa"]
    assert all(m.settings["momentum"] == 0.9 for m in gradient)
    # lr 0.01 with their m = 0.9 m + g is lr 0.1 with byzrsa's m = 0.9 m + 0.1 g
    assert all(m.settings["lr"] == pytest.approx(0.01 / (1 - 0.9)) for m in gradient)
    bucketed = {m.settings["method"] for m in gradient if m.settings.get("pre")}
    plain = {m.settings["method"] for m in gradient if not m.settings.get("pre")} - {"sgd", "ideal-sgd"}
    assert bucketed == plain == {"krum", "median", "geomed", "cclip"}
    assert all(m.settings["pre"] == [{"name": "bucketing", "s": 2}] for m in gradient if m.settings.get("pre"))
    assert any(m.settings["method"] == "rsa" for m in g.methods)
    # the baselines keep the paper's values; only RSA (l1 and l2, not in the paper) is tuned: 3 x 3 points x 6 attacks
    plan = plan_bench(g)
    assert {c.method for c in plan.tune_runs.values()} == {"rsa"} and len(plan.tune_runs) == 2 * 9 * 6
    assert {c.norm for c in plan.tune_runs.values()} == {"l1", "l2"}
    assert all(not j.start for j in plan.tune_jobs if not j.method.startswith("RSA"))


@pytest.mark.slow
def test_user_grid_from_toml_and_declared_f(tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_text("""
seeds = [0, 1, 2]
byzantine = [2]
declared_f = ["q", "q+1"]
levels = ["iid", "dirichlet-0.5"]
attacks = ["none", {attack = "ipm", "attack.epsilon" = 0.5, label = "IPM 0.5"}]
[base]
dataset = "digits"
workers = 10
iterations = 10
eval_every = 5
[[methods]]
method = "median"
lr = 0.1
[[methods]]
label = "Bucketing + CClip"
method = "cclip"
pre = [{name = "bucketing", s = 2}]
"method.tau" = 2.0
tune = {lr = [1.0], "method.tau" = [0.5, 1.0]}
[tuning]
validation = 0.25
""")
    assert main(["bench", "--grid", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "4 scenario(s)" in err and "estimated" in err
    g = grid_from_dict({"levels": ["iid"], "methods": ["median"], "attacks": ["none"]})
    assert g.seeds == (0, 1, 2) and resolve_f("q+1", 4) == 5 and resolve_f(3, 4) == 3
    with pytest.raises(ConfigError, match="unknown key"):
        grid_from_dict({"levels": ["iid"], "methods": ["median"], "attacks": ["none"], "sedes": [0]})
    assert main(["bench", "no-such-preset"]) == 2
    assert "unknown bench preset" in capsys.readouterr().err


# --------------------------------------------------------------------------- data


def test_sorted_shards_split():
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, 25, "sorted-shards", seed=3, byzantine=5)
    assert len(parts) == 25 and sorted(np.concatenate(parts).tolist()) == list(range(1000))
    for p in parts[:20]:  # regular workers: contiguous label-sorted shards, one or two classes
        assert len(np.unique(labels[p])) <= 2 and np.all(np.diff(labels[p]) >= 0)
    for p in parts[20:]:  # Byzantine workers: iid samples
        assert len(p) == 1000 // 25 and len(np.unique(labels[p])) >= 5


@pytest.mark.slow
def test_validation_split_replaces_the_test_set():
    config = config_from_dict({**BASE, "validation": 0.25})
    plain = build_problem(config.replace(validation=0.0))
    held = build_problem(config)
    n = plain.train_y.shape[0]
    train, val = validation_indices(plain.dataset.train_y.numpy(), 0.25)
    assert len(train) + len(val) == n and not set(train) & set(val)
    assert held.test_y.shape[0] == len(val) and held.train_y.shape[0] == len(train)
    assert torch.equal(held.test_x, plain.train_x[torch.from_numpy(val)])  # scored on held-out training samples
    counts = np.bincount(held.test_y.numpy(), minlength=10)
    assert counts.min() > 0 and counts.max() - counts.min() <= 3  # stratified
    with pytest.raises(ConfigError, match="validation"):
        build_problem(config.replace(validation=1.0))
    assert validation_split(plain.dataset, 0.0) is plain.dataset


def test_confidence_interval_is_students_t():
    s = summarise([0.5, 0.6, 0.7])
    assert s.mean == pytest.approx(0.6) and s.ci == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isinf(summarise([0.5]).ci)


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_grid_writes_every_output(clean):
    out, result = clean
    assert not result["failures"]
    report = (out / "report.md").read_text()
    for text in ("## Where RSA breaks", "### Worst-case ranking", "### Best method under each attack",
                 "| rank | method | tuned values", "paired interval", "## Hyper-parameters", "| drift |"):
        assert text in report
    for level in ("iid", "by-label"):
        for suffix in ("png", "svg"):
            assert (out / f"heatmap-{level}-q2-f2.{suffix}").stat().st_size > 1000
            assert (out / "curves" / f"{level}-q2-f2-sign-flip.{suffix}").stat().st_size > 1000
    assert not (out / "curves" / "iid-q2-f2-none.png").exists()  # curves only on demand
    cells = json.loads((out / "cells.json").read_text())["cells"]
    assert len(cells) == 2 * 3 * 2
    with open(out / "cells.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(cells)
    for cell in cells:
        values = list(cell["per_seed"].values())
        assert cell["n_seeds"] == 3 and cell["tuned"]
        assert cell["mean"] == pytest.approx(np.mean(values))
        assert cell["ci95"] == pytest.approx(4.302653 * np.std(values, ddof=1) / math.sqrt(3), rel=1e-5)
    # each method's worst attack is marked once per scenario (Ideal SGD, the ceiling, has none)
    for level in ("iid", "by-label"):
        for method in ("RSA", "Median"):
            mine = [c for c in cells if c["level"] == level and c["method"] == method]
            worst = [c for c in mine if c["worst_for_method"]]
            assert len(worst) == 1 and worst[0]["mean"] == min(c["mean"] for c in mine)
    # Ideal SGD ignores the attack: one run per seed shared by both columns
    ideal = [c for c in cells if c["method"] == "Ideal SGD" and c["level"] == "iid"]
    assert ideal[0]["run_keys"] == ideal[1]["run_keys"]
    tuning = json.loads((out / "tuning.json").read_text())
    assert len(tuning["jobs"]) == 6
    for j in tuning["jobs"]:  # the chosen lr is one searched; it sits at an edge only when the limit is spent
        lr = j["chosen"]["values"]["lr"]
        assert any(lr == pytest.approx(j["start"]["lr"] * f) for f in j["factors"]["lr"])
        assert ("lr" in j["edge"]) <= (j["extended"]["lr"] == 3)
        assert len(j["points"]) == len(j["factors"]["lr"]) * len(j["factors"].get("lam", [1]))
    assert "Median" in (out / "tuning.md").read_text()
    chosen = {(j["method"], j["level"]): j["chosen"]["values"] for j in tuning["jobs"]}
    assert all(c["values"] == chosen[(c["method"], c["level"])] for c in cells)


@pytest.mark.slow
def test_report_maps_every_run_folder_to_its_cell(clean):
    out, _ = clean
    report = (out / "report.md").read_text()
    table = report[report.index("## Run folders"):]
    for cell in json.loads((out / "cells.json").read_text())["cells"]:
        row = next(line for line in table.splitlines()
                   if line.startswith(f"| {cell['level']} | {cell['q']} | {cell['f']} | {cell['method']} | {cell['attack']} |"))
        for seed, key in cell["run_keys"].items():
            assert f"{seed}: `{key}`" in row and (out / "runs" / key / "summary.json").is_file()


@pytest.mark.slow
def test_resume_runs_only_what_is_missing(clean, monkeypatch):
    out, _ = clean
    before = (out / "cells.json").read_text()
    calls = []
    real = paper.execute_one
    monkeypatch.setattr(paper, "execute_one", lambda *a: calls.append(a[0]) or real(*a))
    again = bench(tiny_grid(), out=out, jobs=1, calibrate=False, quiet=True)
    assert again["pending"] == 0 and calls == []
    victim = json.loads(before)["cells"][0]["run_keys"]["1"]
    shutil.rmtree(out / "runs" / victim)
    (out / "runs" / f".tmp-{victim}-999").mkdir()  # what an interrupted run leaves behind
    again = bench(tiny_grid(), out=out, jobs=1, calibrate=False, quiet=True)
    assert again["pending"] == 1 and calls == [victim]
    assert json.loads((out / "cells.json").read_text())["cells"] == json.loads(before)["cells"]


@pytest.mark.slow
def test_tuning_never_reads_the_test_set(clean, tmp_path, monkeypatch):
    """The same grid on data whose test labels are poisoned: tuning must choose exactly as before."""
    import byzrsa.data

    out, _ = clean
    load = byzrsa.data.load_dataset

    def poisoned(*args, **kwargs):
        data = load(*args, **kwargs)
        return type(data)(data.name, data.train_x, data.train_y, data.test_x, (data.test_y + 1) % 10,
                          data.num_classes, data.train_groups)

    monkeypatch.setattr(byzrsa.data, "load_dataset", poisoned)
    monkeypatch.setattr(paper, "_DATASETS", {})
    bench(tiny_grid(), out=tmp_path / "poisoned", jobs=1, calibrate=False, quiet=True)
    clean_tuning = json.loads((out / "tuning.json").read_text())
    dirty_tuning = json.loads((tmp_path / "poisoned" / "tuning.json").read_text())
    assert dirty_tuning == clean_tuning  # every score of every point, and every choice
    # ... while the grid's runs did read the (poisoned) test set
    clean_cells = json.loads((out / "cells.json").read_text())["cells"]
    dirty_cells = json.loads((tmp_path / "poisoned" / "cells.json").read_text())["cells"]
    best = max(clean_cells, key=lambda c: c["mean"])
    same = next(c for c in dirty_cells if (c["level"], c["method"], c["attack"]) ==
                (best["level"], best["method"], best["attack"]))
    assert best["mean"] > 0.6 and same["mean"] < 0.3


def test_untuned_is_marked(tmp_path):
    grid = tiny_grid(levels=(Level("iid", {"split": "iid"}),), methods=tiny_grid().methods[2:], seeds=(0,))
    result = bench(grid, out=tmp_path, jobs=1, untuned=True, calibrate=False, quiet=True)
    report = (tmp_path / "report.md").read_text()
    assert result["tuning_runs"] == 0 and "(UNTUNED)" in report and "Only 1 seed" in report
    cells = json.loads((tmp_path / "cells.json").read_text())["cells"]
    assert all(not c["tuned"] and c["values"] == {"lr": 0.3} for c in cells)


def test_one_seed_gives_no_verdict_of_tie_or_loss():
    """With one seed there is no interval: a gap is reported as such, never as "within the CI of the best"."""
    from byzrsa.experiments.bench.report import _breaks_text, verdicts
    from byzrsa.experiments.bench.stats import CellResult

    def cell(method, attack, *values):
        return CellResult("s", method, attack, {}, summarise(values), dict(enumerate(values)))

    one = [cell("RSA", "alie", 0.10), cell("CClip", "alie", 0.90)]
    v = verdicts(one, ["RSA", "CClip"], ["alie"], ["RSA"], [])
    assert v["per_attack"][0]["rsa"]["RSA"]["status"] == "no interval"
    assert v["per_attack"][0]["tied"] == []
    assert [row["status"] for row in v["ranking"]] == ["best worst case", "no interval (one seed)"]
    text = _breaks_text("s", "RSA", v["rsa"]["RSA"])
    assert "within the CI" not in text and "no intervals" in text and "by 0.800" in text
    three = [cell("RSA", "alie", 0.10, 0.12, 0.11), cell("CClip", "alie", 0.90, 0.91, 0.89)]
    v3 = verdicts(three, ["RSA", "CClip"], ["alie"], ["RSA"], [])
    assert v3["per_attack"][0]["rsa"]["RSA"]["status"] == "loses"


# --------------------------------------------------------------------------- tuning past an edge


def _walk(grid: Grid, best: dict[str, float]):
    """Settle ``grid``'s tuning against a fake objective peaked at ``best`` (key -> value): no run trains."""
    plan = plan_bench(grid)
    seen = []

    def accuracy(key):
        c = plan.tune_runs[key]
        seen.append(key)
        here = {"lr": c.lr, "lam": c.lam}
        return math.exp(-sum(math.log(here[k] / v) ** 2 for k, v in best.items()) / 10)

    assert plan.settle_tuning(lambda key: True, accuracy) == {}
    return plan


def test_tuning_walks_out_to_a_far_optimum_and_stops_at_the_limit():
    grid = tiny_grid(levels=(Level("iid", {"split": "iid"}),), methods=(MethodSpec("Median", {"method": "median",
                     "lr": 0.3}),), tuning=Tuning(seeds=(0,), lr=(1 / 3, 1.0, 3.0)))
    # the best lr is 27 x the start: three steps past the upper edge; the fourth shows it is interior
    job = _walk(grid, {"lr": 0.3 * 27}).tune_jobs[0]
    assert job.chosen.values["lr"] == pytest.approx(0.3 * 27) and job.edge == []
    assert job.extended == {"lr": 3} and job.factors["lr"] == pytest.approx([1 / 3, 1, 3, 9, 27, 81])
    assert len(job.points) == 6
    # further still (3^6 x): the walk stops after 3 extensions, at the edge, flagged
    far = _walk(grid, {"lr": 0.3 * 3**6}).tune_jobs[0]
    assert far.chosen.values["lr"] == pytest.approx(0.3 * 81) and far.edge == ["lr"] and far.extended == {"lr": 3}
    from byzrsa.experiments.bench.tune import format_tuning

    table = format_tuning([job, far], grid.tuning, False)
    assert table.count("still at the edge of the range after 3 extension(s): lr") == 1
    assert "lr 0.3 x [0.3333, 1, 3, 9, 27, 81] (extended 3x)" in table
    # downwards too, and an interior optimum needs no extension at all
    low = _walk(grid, {"lr": 0.3 / 9}).tune_jobs[0]
    assert low.chosen.values["lr"] == pytest.approx(0.3 / 9) and low.extended == {"lr": 2} and not low.edge
    inside = _walk(grid, {"lr": 0.3}).tune_jobs[0]
    assert inside.extended == {"lr": 0} and len(inside.points) == 3
    # the limit is the grid's: extensions = 0 flags the first edge
    none = _walk(grid.with_changes(tuning=Tuning(seeds=(0,), extensions=0)), {"lr": 0.3 * 27}).tune_jobs[0]
    assert none.edge == ["lr"] and len(none.points) == 3


def test_rsa_lr_and_lambda_stay_a_joint_grid_when_extended():
    grid = tiny_grid(levels=(Level("iid", {"split": "iid"}),), methods=tiny_grid().methods[:1],
                     tuning=Tuning(seeds=(0,), lr=(1 / 3, 1.0, 3.0), lam=(1 / 3, 1.0, 3.0)))
    job = _walk(grid, {"lr": 1.0 * 9, "lam": 0.01 / 9}).tune_jobs[0]
    assert job.chosen.values == pytest.approx({"lr": 9.0, "lam": 0.01 / 9}) and not job.edge
    assert job.extended == {"lr": 2, "lam": 2}
    grid_points = {(p.factors["lr"], p.factors["lam"]) for p in job.points}
    assert len(job.points) == len(grid_points) == len(job.factors["lr"]) * len(job.factors["lam"]) == 25


def test_a_setting_that_learns_nothing_does_not_win_the_worst_case():
    """e3's trap, as a fake objective: small steps learn nothing (0.10 everywhere, digits has 10 classes); lr 0.9
    learns (0.85) but one attack pushes it below chance (0.05); lr 2.7 holds 0.3 under it; lr 8.1 diverges."""
    from byzrsa.experiments.bench.tune import choose, format_tuning

    grid = tiny_grid(levels=(Level("by-label", {"split": "by-label"}),), methods=(MethodSpec("Median", {
                     "method": "median", "lr": 0.3}),), tuning=Tuning(seeds=(0,), lr=(1 / 3, 1.0, 3.0)))
    constant = 0.1 * 3 / 3  # 0.10000000000000002, as a mean over seeds of 0.1 comes out: still chance
    table = {0.1: (constant,) * 2, 0.3: (constant,) * 2, 0.9: (0.85, 0.05), 2.7: (0.90, 0.30), 8.1: (0.0, 0.0)}

    def settled(fake):
        plan = plan_bench(grid)

        def accuracy(key):
            c = plan.tune_runs[key]
            return fake[round(c.lr, 6)][c.attack != "none"]

        assert plan.settle_tuning(lambda key: True, accuracy) == {}
        return plan, accuracy

    plan, _ = settled(table)
    assert plan.chance == pytest.approx(0.1)
    job = plan.tune_jobs[0]
    assert job.chosen.values["lr"] == pytest.approx(2.7) and job.chosen.score == pytest.approx(0.3)
    assert job.extended == {"lr": 2} and not job.edge  # walked out through 0.9 (chosen by its mean) to 2.7
    # where nothing beats chance in the worst case, the larger mean wins, and the table says so
    plan, accuracy = settled({**table, 2.7: (0.0, 0.0)})
    trapped = plan.tune_jobs[0]
    assert trapped.chosen.values["lr"] == pytest.approx(0.9) and trapped.chosen.mean == pytest.approx(0.45)
    assert "no point beats chance, 0.1, in the worst case: chosen by its mean over the attacks, 0.4500" in \
        format_tuning([trapped], grid.tuning, False)
    # the bare worst case (no chance floor) keeps the start, which learns nothing
    choose([trapped], accuracy, 0.0)
    assert trapped.chosen.values["lr"] == pytest.approx(0.3) and trapped.chosen.score == pytest.approx(0.1)


def test_grid_toml_takes_extensions():
    g = grid_from_dict({"levels": ["iid"], "methods": ["median"], "attacks": ["none"], "tuning": {"extensions": 1}})
    assert g.tuning.extensions == 1
    with pytest.raises(ConfigError, match="extensions"):
        grid_from_dict({"levels": ["iid"], "methods": ["median"], "attacks": ["none"], "tuning": {"extensions": -1}})


@pytest.mark.slow
def test_byzrsa_tune_walks_out_and_scores_on_validation(tmp_path, capsys):
    """A real (tiny) tune whose grid starts far below the best step (about 0.8 here): it walks out to it and
    stops there; with a tighter limit it stops at the limit, flagged. Scored on a validation split by default."""
    out = tmp_path / "t"
    args = ["tune", "--dataset", "digits", "--pixels", "unit", "--method", "median", "--workers", "5",
            "--iterations", "15", "--lr-schedule", "constant", "--mu", "0", "--grid", "0.01,0.03", "--jobs", "1",
            "--quiet", "--out", str(out)]
    assert main(args + ["--extensions", "5"]) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "tune.json").read_text())
    assert table["config"]["validation"] == pytest.approx(0.2) and table["scored_on"].startswith("validation")
    lrs = [r["lr"] for r in table["rows"]]
    assert lrs == pytest.approx([0.01 * 3**i for i in range(len(lrs))])
    best = table["best"]["lr"]
    assert 0.01 < best < lrs[-1] and table["best_on_grid_edge"] is None  # walked out, found an inner best
    accuracy = {r["lr"]: r["final_accuracy"] for r in table["rows"]}
    assert accuracy[best] == max(accuracy.values()) > accuracy[0.01] + 0.1
    assert "validation" in printed and "TEST" not in printed and "still on the edge" not in printed
    # a limit that ends the walk before the best: stopped at the limit, at the edge, flagged (runs reused)
    assert main(args + ["--extensions", "1"]) == 0
    printed = capsys.readouterr().out
    short = json.loads((out / "tune.json").read_text())
    assert [r["lr"] for r in short["rows"]] == pytest.approx([0.01, 0.03, 0.09])
    assert short["best"]["lr"] == pytest.approx(0.09) and short["best_on_grid_edge"] == "lr"
    assert "still on the edge of the grid after 1 extension(s)" in printed
    # ranking by the test set needs the flag, and says so
    assert main(args[:-1] + [str(tmp_path / "t2"), "--rank-by-test", "--extensions", "0"]) == 0
    printed = capsys.readouterr().out
    assert "ranked by TEST accuracy" in printed and "TEST accuracy (--rank-by-test" in printed
    assert main(args + ["--rank-by-test", "--validation", "0.1"]) == 2


# --------------------------------------------------------------------------- convergence and paired verdicts


def test_drift_is_the_change_over_the_last_fifth():
    from byzrsa.experiments.bench.stats import convergence, drift_of

    rising = [{"iteration": k, "accuracy": k / 100} for k in range(10, 101, 10)]
    # final window: iterations >= 90 (0.9, 1.0); earlier window: 70..80 (0.7, 0.8)
    assert drift_of(rising) == pytest.approx(0.95 - 0.75)
    flat = [{"iteration": k, "accuracy": 0.8 + (0.002 if k % 20 else 0.0)} for k in range(10, 101, 10)]
    assert abs(drift_of(flat)) < 0.01
    coarse = [{"iteration": 50, "accuracy": 0.5}, {"iteration": 100, "accuracy": 0.6}]  # nothing in 70..80
    assert drift_of(coarse) == pytest.approx(0.1)
    assert drift_of([{"iteration": 100, "accuracy": 0.6}]) is None
    diverged = rising[:5] + [{"iteration": k, "accuracy": math.nan} for k in range(60, 101, 10)]
    assert drift_of(diverged) == 0.0  # NaN counts as 0 on both sides: diverged is settled (at 0)
    assert convergence([0.2, 0.22], [0.9, 0.91]) == (pytest.approx(0.21), False)
    assert convergence([0.005, -0.003], [0.9, 0.91])[1] is True  # within the 0.01 floor
    assert convergence([0.04, 0.04], [0.5, 0.7])[1] is True  # within the seed spread (std 0.14)
    assert convergence([], []) == (None, None)


def _cell(method, attack, *values, converged=True):
    from byzrsa.experiments.bench.stats import CellResult

    return CellResult("s", method, attack, {}, summarise(values), dict(enumerate(values)), converged=converged,
                      drift=0.0 if converged else 0.2)


def test_paired_seeds_decide_what_overlapping_intervals_cannot():
    from byzrsa.experiments.bench.report import verdicts
    from byzrsa.experiments.bench.stats import compare, paired_difference

    # seed effects shared by both methods: the unpaired intervals overlap, every per-seed difference is -0.02
    rsa, best = _cell("RSA", "alie", 0.50, 0.60, 0.70), _cell("CClip", "alie", 0.52, 0.62, 0.72)
    assert rsa.stat.high > best.stat.low  # unpaired: overlapping
    d = paired_difference(rsa, best)
    assert d.mean == pytest.approx(-0.02) and compare(rsa, best) == "below" and compare(best, rsa) == "above"
    v = verdicts([rsa, best], ["RSA", "CClip"], ["alie"], ["RSA"], [])
    assert v["per_attack"][0]["rsa"]["RSA"]["status"] == "loses"
    noisy = _cell("RSA", "alie", 0.50, 0.64, 0.70)  # differences -0.02, +0.02, -0.02: the interval holds 0
    assert compare(noisy, best) == "tie"
    # only common seeds pair; fewer than two decide nothing
    lone = _cell("RSA", "alie", 0.1)
    assert compare(lone, best) == "no interval"


def test_non_converged_cell_is_reported_as_such():
    from byzrsa.experiments.bench.report import _breaks_text, verdicts

    slow = [_cell("RSA", "alie", 0.50, 0.51, 0.52, converged=False), _cell("CClip", "alie", 0.90, 0.91, 0.89)]
    v = verdicts(slow, ["RSA", "CClip"], ["alie"], ["RSA"], [])
    assert v["per_attack"][0]["rsa"]["RSA"]["status"] == "not converged"
    assert [row["status"] for row in v["ranking"]] == ["best worst case", "not converged"]
    text = _breaks_text("s", "RSA", v["rsa"]["RSA"])
    assert "not converged (no verdict) under alie" in text and "loses" not in text
    # the best's cell not converged: no verdict for RSA either
    v = verdicts([_cell("RSA", "alie", 0.5, 0.51, 0.52), _cell("CClip", "alie", 0.9, 0.91, 0.89, converged=False)],
                 ["RSA", "CClip"], ["alie"], ["RSA"], [])
    assert v["per_attack"][0]["rsa"]["RSA"]["status"] == "not converged"


@pytest.mark.slow
def test_a_short_run_is_a_non_converged_cell_in_the_report(tmp_path):
    """End to end: RSA at a small step over 20 iterations is still climbing; Median over 300 has settled."""
    grid = tiny_grid(levels=(Level("iid", {"split": "iid"}),), attacks=(AttackSpec("none", {"attack": "none"}),),
                     methods=(MethodSpec("RSA", {"method": "rsa", "lr": 0.05, "lam": 0.01}),
                              MethodSpec("Median", {"method": "median", "lr": 0.3, "iterations": 300,
                                                    "eval_every": 10})), seeds=(0, 1))
    bench(grid, out=tmp_path, jobs=1, untuned=True, calibrate=False, quiet=True)
    cells = {c["method"]: c for c in json.loads((tmp_path / "cells.json").read_text())["cells"]}
    assert cells["RSA"]["converged"] is False and cells["RSA"]["drift"] > 0.1
    assert cells["Median"]["converged"] is True and abs(cells["Median"]["drift"]) <= 0.01
    report = (tmp_path / "report.md").read_text()
    assert "RSA: not converged (gap" in report and "| not converged |" in report
    assert "not converged (no verdict) in 1" in report and "loses (paired interval below 0) in 0" in report


def test_paired_seeds_give_every_method_the_same_batches_and_draws():
    """Seed s: every method of a cell gets the same shards, batch indices, Byzantine draws and initial model."""
    plan = plan_bench(tiny_grid())
    plan_grid(plan)
    by_method = {}
    for cell in plan.cells:
        if cell.scenario.level == "by-label" and cell.attack == "sign-flip":
            by_method[cell.method] = {s: plan.runs[k] for s, k in cell.keys.items()}
    assert set(by_method) == {"RSA", "Ideal SGD", "Median"}

    def draws(config):
        problem = build_problem(config)
        batches = [problem.sampler(w).next_block()[:5] for w in range(config.workers)]
        attack = [torch.rand(3, generator=g) for g in problem.attack_generators()]
        return problem.shards, batches, attack, problem.init_vector()

    for seed in (0, 1):
        configs = {m: runs[seed] for m, runs in by_method.items()}
        assert len({c.seed for c in configs.values()}) == 1 and len({c.method for c in configs.values()}) == 3
        got = {m: draws(c) for m, c in configs.items()}
        ref = got["Median"]
        for m, (shards, batches, attack, init) in got.items():
            assert all(torch.equal(a, b) for a, b in zip(shards, ref[0])), m
            assert all(torch.equal(a, b) for a, b in zip(batches, ref[1])), m
            assert all(torch.equal(a, b) for a, b in zip(attack, ref[2])), m
            assert torch.equal(init, ref[3]), m
    # ... and another seed draws other batches
    other = draws(by_method["Median"][1])[1]
    assert not all(torch.equal(a, b) for a, b in zip(other, draws(by_method["Median"][0])[1]))
    # the tuning runs of every method share one validation split (a fixed seed, not the method's)
    tune_configs = list(plan.tune_runs.values())
    assert {c.validation for c in tune_configs} == {0.2} and {c.seed for c in tune_configs} == {0}


@pytest.mark.slow
def test_rsa_rows_show_lambda0_beside_lambda(tmp_path):
    """Theorem 1's lambda0 per (level, q, norm), as `byzrsa lambda0` computes it, cached, and in the ranking."""
    from byzrsa.experiments.bench.theory import lambda0_of, lambda0_table
    from byzrsa.experiments.paper.theory import lambda0, objective_from_config, solve_consensus

    grid = tiny_grid(levels=(Level("by-label", {"split": "by-label"}),),
                     attacks=(AttackSpec("none", {"attack": "none"}),),
                     methods=(MethodSpec("RSA l1", {"method": "rsa", "lr": 1.0, "lam": 0.01, "norm": "l1"}),
                              MethodSpec("RSA l2", {"method": "rsa", "lr": 1.0, "lam": 0.1, "norm": "l2"}),
                              MethodSpec("Median", {"method": "median", "lr": 0.3})),
                     base={**BASE, "mu": 0.01}, seeds=(0, 1))
    plan = plan_bench(grid, untuned=True)
    plan_grid(plan)
    configs = [plan.runs[c.keys[0]] for c in plan.cells]
    table = lambda0_table(tmp_path, configs)
    assert len(table) == 2 and (tmp_path / "lambda0.json").exists()
    objective = objective_from_config(configs[0])
    x_star = solve_consensus(objective, tol=1e-8)[0]
    for c in configs[:2]:
        expected = lambda0(objective, x_star, 1.0 if c.norm == "l1" else 2.0)[0]
        assert lambda0_of(table, c) == pytest.approx(expected, rel=1e-3)
    assert lambda0_of(table, configs[1]) > lambda0_of(table, configs[0])  # ||g||_2 >= ||g||_inf
    assert lambda0_of(table, configs[2]) is None  # not RSA
    bench(grid, out=tmp_path, jobs=1, untuned=True, calibrate=False, quiet=True)
    report = (tmp_path / "report.md").read_text()
    l1 = lambda0_of(table, configs[0])
    assert f"lr=1, lam=0.01 (lambda0 {l1:.3g})" in report
    assert report.count("(lambda0 ") == 2
    assert "RSA l1: over 1" in report and "RSA l2: over 1" in report  # where RSA breaks, per norm


# --------------------------------------------------------------------------- published numbers


def test_published_entries_name_cells_of_their_preset():
    for name in ("bucketing-exp3", "paper-plus"):
        g = PRESETS[name]
        assert g.published, name
        methods, attacks = {m.label for m in g.methods}, {a.label for a in g.attacks}
        for p in g.published:
            named = set(p.values) | {m for pair in p.order for m in pair}
            assert named <= methods and p.attack in attacks and p.q in g.byzantine, (name, p)
            assert p.level in {lv.label for lv in g.levels} and p.source
    exp3 = PRESETS["bucketing-exp3"].published
    assert len(exp3) == 5 and all(len(p.values) == 8 for p in exp3)
    alie = next(p for p in exp3 if p.attack == "ALIE")
    assert alie.values["Bucketing + GeoMed (RFA, 8 iterations)"] == 0.877 and alie.values["Median"] == 0.099


def test_published_ordering_is_checked_by_paired_comparison():
    from byzrsa.experiments.bench.grid import Published
    from byzrsa.experiments.bench.published import agreement, published_pairs, published_section

    class S:  # a scenario
        level, q = "by-label", 4

    def cell(method, *values, converged=True):
        c = _cell(method, "copy", *values, converged=converged)
        c.scenario = S
        return c

    p = Published("by-label", 4, "copy", "a paper, Fig. 1", {"A": 0.9, "B": 0.5, "C": 0.895}, (("A", "D"),))
    assert sorted(published_pairs(p)) == sorted([("A", "B", "above"), ("A", "C", "tie"), ("C", "B", "above"),
                                                 ("A", "D", "above")])
    cells = [cell("A", 0.80, 0.82, 0.81), cell("B", 0.85, 0.86, 0.88),  # byzrsa: B above A, against the paper
             cell("C", 0.79, 0.80, 0.82), cell("D", 0.2, 0.3, 0.25, converged=False)]
    rows = {(r["a"], r["b"]): r for r in agreement(p, {c.method: c for c in cells})}
    assert rows[("A", "B")]["agrees"] is False and rows[("A", "B")]["ours"] == "below"
    assert rows[("A", "C")]["agrees"] is True  # a published tie, tied in byzrsa
    assert rows[("C", "B")]["agrees"] is False
    assert rows[("A", "D")]["agrees"] is None and rows[("A", "D")]["ours"] == "not converged"
    text = "\n".join(published_section([p], cells))
    assert "Ordering: agrees in 1 of 4 published pairs; disagrees in 2" in text
    assert "| A | 0.900 | 0.810 ± " in text and "| D | (ordering only) |" in text
    assert "1 agree, 2 disagree, 1 undecided" in text


# --------------------------------------------------------------------------- signals


SIGNAL_GRID = """
seeds = [0, 1]
byzantine = [2]
levels = ["iid"]
attacks = ["none", "sign-flip"]
[base]
dataset = "digits"
pixels = "unit"
workers = 10
iterations = 100000
eval_every = 50
[[methods]]
method = "median"
lr = 0.1
"""


@pytest.mark.slow
@pytest.mark.parametrize(("command", "sig", "group"), [("bench", "SIGINT", False), ("bench", "SIGTERM", True),
                                                       ("reproduce", "SIGTERM", False)])
def test_an_interrupted_bench_or_reproduce_exits_quietly_with_the_shells_status(tmp_path, command, sig, group):
    """One line on stderr, no traceback and no pool exit-hook noise; 130 after SIGINT, 143 after SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import uuid

    from processes import marked_processes, wait_gone

    out, marker = tmp_path / "out", f"byzrsa-test-{uuid.uuid4()}"
    (tmp_path / "g.toml").write_text(SIGNAL_GRID)
    args = (["bench", "--grid", str(tmp_path / "g.toml")] if command == "bench"
            else ["reproduce", "fig4a", "--quick", "--dataset", "digits", "--iterations", "100000"])
    proc = subprocess.Popen([sys.executable, "-m", "byzrsa.cli", *args, "--jobs", "2", "--quiet", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group,
                            env={**os.environ, "BYZRSA_TEST_MARK": marker})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (list((out / "runs").glob(".tmp-*/metrics.csv"))
                                               and len(marked_processes(marker)) >= 3):
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.2)
        number = getattr(signal, sig)
        os.killpg(proc.pid, number) if group else proc.send_signal(number)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + number, stderr
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0], stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert wait_gone(marker) == []


def test_interrupted_status_is_128_plus_the_signal():
    from byzrsa.cli import interrupted_status

    assert interrupted_status(KeyboardInterrupt()) == 130  # Ctrl-C
    assert interrupted_status(KeyboardInterrupt("SIGINT")) == 130
    assert interrupted_status(KeyboardInterrupt("SIGTERM")) == 143
    assert interrupted_status(KeyboardInterrupt("SIGHUP")) == 129
    assert interrupted_status(KeyboardInterrupt("not a signal")) == 130

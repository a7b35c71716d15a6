"""rmlab.report's Table 3 report on fake sweep directories (no training).

Std convention under test: the SAMPLE standard deviation over seeds (ddof=1, ``statistics.stdev``), not the
population one; a single seed shows its value without ``±``.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import yaml

from rmlab.paper_table3 import PAPER_TABLE3
from rmlab.report import (COLUMNS, LOSS_ORDER, build_report, print_report,
                          write_report)

REPO_ROOT = Path(__file__).resolve().parents[1]
SECTION_NAMES = ("Chat", "Chat Hard", "Safety", "Reasoning")


def scores(avg: float, offset: float = 0.0) -> dict[str, float]:
    """A Table 3 dict: Avg plus four sections derived from it (so columns differ)."""
    return {"Avg": avg, **{name: round(avg + offset + 0.01 * i, 4) for i, name in enumerate(SECTION_NAMES)}}


def write_multirun(sweep: Path, params: dict[str, str], task: list[str]) -> None:
    sweep.mkdir(parents=True, exist_ok=True)
    config = {"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                    "params": params},
                        "sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}_${hydra.job.override_dirname}"},
                        "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": task}},
              "seed": 42}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(config))


def add_job(sweep: Path, num: int, overrides: list[str], table3: Optional[dict[str, float]] = None,
            error: Optional[str] = None, hydra_dir: bool = True) -> Path:
    """A job dir like Hydra's: .hydra/overrides.yaml (+ config.yaml) and metrics.json or failed.json or neither."""
    job = sweep / f"{num}_{','.join(sorted(overrides))}"
    job.mkdir(parents=True)
    values = dict(item.lstrip("+").split("=", 1) for item in overrides)
    if hydra_dir:
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": int(values.get("seed", 42))}))
    if table3 is not None:
        run = {"loss": values.get("loss"), "seed": int(values.get("seed", 42)), "train_pairs": 850}
        (job / "metrics.json").write_text(json.dumps({"table3": table3, "eval": {}, "data": {}, "run": run}))
    if error is not None:
        failed = {"error": error, "traceback": f"Traceback (most recent call last):\n{error}\n",
                  "loss": values.get("loss"), "seed": int(values.get("seed", 42))}
        (job / "failed.json").write_text(json.dumps(failed))
    return job


BT = [scores(0.80, 0.02), scores(0.83, -0.01), scores(0.86, 0.03)]
FOCAL_OK = {1: scores(0.70), 3: scores(0.76, 0.02)}
SWEEP_LOSSES = ["hinge", "bt", "cross_entropy", "focal", "margin_mse"]  # deliberately not in Table 3 order


@pytest.fixture
def sweep(tmp_path) -> Path:
    """loss x seed(1,2,3): bt all OK, focal 2 OK + 1 failed, hinge all failed, margin_mse 1 OK + 1 running
    (dir without result) + 1 absent, cross_entropy no job dir at all."""
    root = tmp_path / "2024-10-24_12-00-00"
    write_multirun(root, {"loss": ",".join(SWEEP_LOSSES), "seed": "1,2,3"}, ["+sweeps=table3"])

    def add(loss: str, seed: int, **result) -> None:  # job numbers as Hydra's basic sweeper gives them
        add_job(root, SWEEP_LOSSES.index(loss) * 3 + seed - 1, [f"loss={loss}", f"seed={seed}", "+sweeps=table3"],
                **result)

    for seed in (1, 2, 3):
        add("bt", seed, table3=BT[seed - 1])
        if seed in FOCAL_OK:
            add("focal", seed, table3=FOCAL_OK[seed])
        else:
            add("focal", seed, error="RuntimeError: CUDA out of memory")
        add("hinge", seed, error="ValueError: boom [margin]\nsecond line")
        if seed == 1:
            add("margin_mse", seed, table3=scores(0.65))
        elif seed == 2:
            add("margin_mse", seed)  # still running: no result yet
    return root


def rows_by_label(report):
    return {row.label: row for row in report.rows}


def test_mean_and_sample_std_over_seeds(sweep):
    bt = rows_by_label(build_report(sweep))["bt"]
    for column in COLUMNS:
        values = [run[column] for run in BT]
        mean, std, n = bt.stats(column)
        assert n == 3
        assert mean == pytest.approx(statistics.fmean(values))
        assert std == pytest.approx(statistics.stdev(values))  # sample std, ddof=1
        assert std != pytest.approx(statistics.pstdev(values))
        assert bt.cell(column) == f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
    assert bt.cell("Avg") == "83.0 ± 3.0"
    assert bt.seeds == "3/3" and bt.status == "ok"


def test_rows_in_table3_order_with_unknown_losses_last_sorted(tmp_path):
    root = tmp_path / "sweep"
    for num, loss in enumerate(["zeta", "tempered_log", "alpha", "bt", "hinge", "bt_temperature"]):
        add_job(root, num, [f"loss={loss}", "seed=1"], scores(0.5 + 0.01 * num), hydra_dir=num % 2 == 0)
    labels = [row.label for row in build_report(root).rows]
    assert labels == ["bt", "bt_temperature", "hinge", "tempered_log", "alpha", "zeta"]
    assert [label for label in labels if label in LOSS_ORDER] == [l for l in LOSS_ORDER if l in labels]
    single = rows_by_label(build_report(root))["bt"]
    assert single.cell("Avg") == "53.0"  # one seed: no ± and no std
    assert single.stats("Avg")[1] is None


def test_sweep_rows_order_and_partial_failure(sweep):
    report = build_report(sweep)
    assert [row.label for row in report.rows] == ["bt", "focal", "hinge", "margin_mse", "cross_entropy"]
    focal = rows_by_label(report)["focal"]
    assert focal.stats("Avg")[0] == pytest.approx(statistics.fmean(run["Avg"] for run in FOCAL_OK.values()))
    assert focal.cell("Avg") == "73.0 ± 4.2"
    assert focal.seeds == "2/3"
    assert focal.status == "failed (1/3 seeds): RuntimeError: CUDA out of memory"


def test_failed_and_missing_are_never_zero(sweep):
    rows = rows_by_label(build_report(sweep))
    hinge, margin, ce = rows["hinge"], rows["margin_mse"], rows["cross_entropy"]
    assert [hinge.cell(c) for c in COLUMNS] == ["failed"] * len(COLUMNS)
    assert hinge.status == "failed (3/3 seeds): ValueError: boom [margin]"  # first error line only
    assert [ce.cell(c) for c in COLUMNS] == ["missing"] * len(COLUMNS)
    assert ce.status == "missing (3/3 seeds)" and ce.seeds == "0/3"
    assert margin.cell("Avg") == "65.0" and margin.status == "missing (2/3 seeds)"
    for row in (hinge, ce):
        assert all(row.stats(c) == (None, None, 0) for c in COLUMNS)
        assert not any(row.cell(c).startswith("0") for c in COLUMNS)


def test_jobs_list_failed_and_missing(sweep):
    report = build_report(sweep)
    problems = {job.name: job for job in report.jobs if job.status != "ok"}
    assert sum(job.status == "failed" for job in report.jobs) == 4
    failed = {name: job.detail for name, job in problems.items() if job.status == "failed"}
    assert failed["10_+sweeps=table3,loss=focal,seed=2"] == "RuntimeError: CUDA out of memory"
    assert failed["0_+sweeps=table3,loss=hinge,seed=1"] == "ValueError: boom [margin]"
    missing = {name: job.detail for name, job in problems.items() if job.status == "missing"}
    assert missing["13_+sweeps=table3,loss=margin_mse,seed=2"].startswith("no metrics.json or failed.json")
    assert missing["#14 loss=margin_mse,seed=3"] == "no job directory"
    assert {"#6 loss=cross_entropy,seed=1", "#7 loss=cross_entropy,seed=2", "#8 loss=cross_entropy,seed=3"} \
        <= set(missing)
    assert len(report.jobs) == 15


def test_other_swept_keys_split_rows(tmp_path):
    root = tmp_path / "gamma"
    write_multirun(root, {"seed": "1,2"}, ["loss=focal", "loss.gamma=10,2,1"])
    avg = {("10", 1): 0.61, ("10", 2): 0.65, ("2", 1): 0.70, ("2", 2): 0.74, ("1", 1): 0.80}
    for num, ((gamma, seed), value) in enumerate(avg.items()):
        add_job(root, num, [f"seed={seed}", "loss=focal", f"loss.gamma={gamma}"], scores(value))
    rows = build_report(root).rows
    assert [row.label for row in rows] == ["focal (loss.gamma=1)", "focal (loss.gamma=2)", "focal (loss.gamma=10)"]
    by_gamma = {row.extra["loss.gamma"]: row for row in rows}
    assert by_gamma["2"].stats("Avg")[0] == pytest.approx(statistics.fmean([0.70, 0.74]))
    assert by_gamma["10"].stats("Avg")[1] == pytest.approx(statistics.stdev([0.61, 0.65]))
    assert by_gamma["1"].seeds == "1/2" and by_gamma["1"].status == "missing (1/2 seeds)"  # gamma=1, seed=2 absent


def test_unreadable_metrics_counts_as_failed(tmp_path):
    job = add_job(tmp_path / "s", 0, ["loss=bt", "seed=1"])
    (job / "metrics.json").write_text("{truncated")
    row = build_report(tmp_path / "s").rows[0]
    assert row.cell("Avg") == "failed" and row.status.startswith("failed (1/1 seeds): unreadable result file")


def test_write_report_writes_three_files(sweep):
    paths = write_report(sweep)
    assert set(paths) == {"md", "csv", "png"}
    assert all(path.parent == sweep and path.stat().st_size > 0 for path in paths.values())
    markdown = paths["md"].read_text()
    assert "| loss | Avg | Chat | Chat Hard | Safety | Reasoning | seeds ok | status |" in markdown
    assert "| bt | 83.0 ± 3.0 |" in markdown
    assert "| hinge | failed | failed | failed | failed | failed | 0/3 | failed (3/3 seeds): ValueError: boom [margin] |" \
        in markdown
    assert "## Jobs" in markdown and "`#14 loss=margin_mse,seed=3`: missing: no job directory" in markdown
    assert "## Paper's numbers (reference, not this sweep): Skywork-Reward, arXiv 2410.18451, Table 3" in markdown
    with paths["csv"].open() as handle:
        table = {row["label"]: row for row in csv.DictReader(handle)}
    assert list(table) == ["bt", "focal", "hinge", "margin_mse", "cross_entropy"]
    assert float(table["bt"]["Avg mean %"]) == pytest.approx(100 * statistics.fmean(r["Avg"] for r in BT))
    assert float(table["bt"]["Avg std %"]) == pytest.approx(100 * statistics.stdev(r["Avg"] for r in BT))
    assert table["hinge"]["Avg mean %"] == "" and table["hinge"]["n_failed"] == "3"
    assert table["cross_entropy"]["Chat mean %"] == "" and table["cross_entropy"]["n_missing"] == "3"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_paper_block_complete_and_consistent():
    assert list(PAPER_TABLE3) == list(LOSS_ORDER)
    for name, values in PAPER_TABLE3.values():
        assert name and len(values) == len(COLUMNS)
        assert values[0] == pytest.approx(statistics.fmean(values[1:]), abs=0.1)  # Avg = mean of the sections
    assert PAPER_TABLE3["bt"][1] == (93.8, 95.8, 91.4, 92.0, 96.1)


def test_print_report_shows_everything(sweep, capsys):
    from rich.console import Console

    print_report(build_report(sweep), Console(width=220, force_terminal=False))
    out = capsys.readouterr().out
    for text in ("83.0 ± 3.0", "failed (1/3 seeds): RuntimeError: CUDA out of memory", "boom [margin]",
                 "missing (3/3 seeds)", "#14 loss=margin_mse,seed=3", "Paper's numbers (reference, not this sweep)",
                 "Temperature-adjusted Bradley-Terry"):
        assert text in out


@pytest.mark.slow
def test_cli_entry_point(sweep):
    done = subprocess.run([sys.executable, "-m", "rmlab.report", str(sweep)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for text in ("Table 3", "83.0 ± 3.0", "73.0 ± 4.2", "failed (3/3 seeds)", "arXiv 2410.18451", "93.8"):
        assert text in done.stdout
    assert all((sweep / f"table3.{suffix}").is_file() for suffix in ("md", "csv", "png"))
    bad = subprocess.run([sys.executable, "-m", "rmlab.report", str(sweep / "nope")], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a directory" in bad.stderr


@pytest.mark.slow
def test_import_stays_light():
    code = "import sys, rmlab.report; bad = {'torch', 'lightning'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)

"""`peft-tui compare --seeds N` (one row per method: mean ± sample std) and the within-noise wording of
the recommendations (pure functions on hand-made rows)."""

from __future__ import annotations

import json
import statistics

import pytest
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.report import recommend as rec
from peft_tui.report.seeds import aggregate, mean_std, noise_threshold

runner = CliRunner()


def run_row(id, name, acc, seed, f1=None, params=1000, time=1.0, mem=100.0):
    return {"id": id, "name": name, "method": name, "accuracy": acc, "f1": acc if f1 is None else f1,
            "trainable_params": params, "train_time_s": time, "peak_memory_mb": mem, "memory_kind": "RSS",
            "seed": seed}


@pytest.mark.slow
def test_compare_seeds_aggregates(tmp_path):
    csv_path = tmp_path / "t.csv"
    res = runner.invoke(app, ["compare", "--model", "tiny", "--set", "data.size=80", "--epochs", "1",
                              "--methods", "lora,bitfit", "--seeds", "2", "--no-baseline", "--device", "cpu",
                              "--store", str(tmp_path / "s"), "--csv", str(csv_path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    runs = doc["table"]
    assert [(r["method"], r["seed"]) for r in runs] == [("lora", 42), ("lora", 43), ("bitfit", 42), ("bitfit", 43)]
    agg = {r["method"]: r for r in doc["aggregated"]}
    assert set(agg) == {"lora", "bitfit"}
    for method, row in agg.items():
        accs = [r["accuracy"] for r in runs if r["method"] == method]
        f1s = [r["f1"] for r in runs if r["method"] == method]
        assert row["n"] == 2 and row["seeds"] == [42, 43]
        assert row["accuracy"] == pytest.approx(statistics.mean(accs))
        assert row["accuracy_std"] == pytest.approx(statistics.stdev(accs))
        assert row["f1"] == pytest.approx(statistics.mean(f1s))
        assert row["f1_std"] == pytest.approx(statistics.stdev(f1s))
        assert row["train_time_s"] == pytest.approx(statistics.mean(r["train_time_s"] for r in runs
                                                                    if r["method"] == method))
    assert "mean of 2 seed(s)" in doc["recommendations"][0]
    lines = csv_path.read_text().splitlines()
    assert lines[0].endswith("seed,n,accuracy_std,f1_std") and len(lines) == 1 + 4 + 2


@pytest.mark.slow
def test_compare_seeds_human_table_and_bad_value(tmp_path):
    args = ["compare", "--model", "tiny", "--set", "data.size=80", "--epochs", "1", "--methods", "bitfit",
            "--no-baseline", "--device", "cpu", "--store", str(tmp_path / "s")]
    res = runner.invoke(app, args + ["--seeds", "2"])
    assert res.exit_code == 0, res.output
    assert "mean ± sample std over 2 seeds" in res.stdout and "| bitfit | bitfit | 2 |" in res.stdout
    bad = runner.invoke(app, args + ["--seeds", "0"])
    assert bad.exit_code == 2 and "--seeds 0" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_mean_std():
    assert mean_std([]) == (None, None)
    assert mean_std([0.5]) == (0.5, None)
    m, s = mean_std([0.8, 0.9, 1.0])
    assert m == pytest.approx(0.9) and s == pytest.approx(0.1)


def test_within_noise_is_said_not_a_winner():
    # lora 85.1 ± 1.0, full 85.0 ± 1.0 over 3 seeds: a 0.1-point gap, far under two standard errors
    rows = [run_row(1, "lora", 0.841, 1), run_row(2, "lora", 0.851, 2), run_row(3, "lora", 0.861, 3),
            run_row(4, "full", 0.840, 1), run_row(5, "full", 0.850, 2), run_row(6, "full", 0.860, 3),
            run_row(7, "head", 0.50, 1), run_row(8, "head", 0.51, 2), run_row(9, "head", 0.52, 3)]
    agg = aggregate(rows)
    assert noise_threshold(agg[0], agg[1]) == pytest.approx(2 * (2 * 0.01 ** 2 / 3) ** 0.5)
    best = rec.best_accuracy(agg)
    assert "within noise" in best.text and "none of them is the winner" in best.text
    assert "lora" in best.text and "full" in best.text and "head" not in best.text
    assert "85.1% ± 1.0" in best.text and "85.0% ± 1.0" in best.text
    assert best.run_ids == (1, 2, 3, 4, 5, 6)


def test_clearly_different_names_a_winner():
    rows = [run_row(1, "lora", 0.90, 1), run_row(2, "lora", 0.91, 2), run_row(3, "lora", 0.92, 3),
            run_row(4, "bitfit", 0.80, 1), run_row(5, "bitfit", 0.81, 2), run_row(6, "bitfit", 0.82, 3)]
    best = rec.best_accuracy(aggregate(rows))
    assert "within noise" not in best.text
    assert best.text.startswith("lora (mean of 3 seed(s), runs 1, 2, 3): 91.0% ± 1.0")
    assert "next is bitfit" in best.text and "beyond two standard errors" in best.text
    assert best.run_ids == (1, 2, 3, 4, 5, 6)


def test_one_seed_says_noise_unknown_only_for_a_small_gap():
    close = rec.best_accuracy([run_row(1, "lora", 0.851, 42), run_row(2, "full", 0.850, 42)])
    assert "noise is unknown" in close.text and "0.1 points" in close.text and "within noise" not in close.text
    far = rec.best_accuracy([run_row(1, "lora", 0.90, 42), run_row(2, "full", 0.80, 42)])
    assert "noise" not in far.text and far.text.startswith("lora (run 1): 90.0%")
    # a single seed aggregated (n=1) also has unknown noise
    assert "noise is unknown" in rec.best_accuracy(aggregate([run_row(1, "lora", 0.851, 42),
                                                              run_row(2, "full", 0.850, 42)])).text

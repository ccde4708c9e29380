"""How good are the estimates? Each configuration is estimated, then run in its own process (the engine's
`execute` on a temporary store), and the estimate is graded against what that process measured.

Methods full, lora, adapters, bitfit and prefix on the tiny model and on MiniLM, at two batch sizes and
two max_lengths, 1 epoch. The data is written here: synthetic sentences joined into rows of 1 to 24
sentences (about 20 to 450 tokens, most short), so both max_lengths truncate some rows.

Per run it prints the estimated and the measured peak memory: CPU, the process's peak RSS (VmHWM; the
engine samples RSS between steps and misses the peak inside the backward pass, its sampled peak is shown
too; `ru_maxrss` would not do, a child inherits its parent's). And the time of the training steps:
estimated before the run, against the run's `train_time_s` (wall) and its CPU seconds over the same
steps; and after calibration on the run itself (the ETA at step 20: elapsed + the rest at the rate so
far) against `train_time_s`. Goals: memory within +-20%, time within +-30% before and +-10% after.

The machine may be shared: the load average is printed per run, and other tenants slow a run by a
factor no estimate can know. `--clock cpu` calibrates in CPU seconds and grades the estimate against the
run's CPU seconds: the model of the work, without the neighbours. `--threads 1` (the default) keeps
PyTorch to one thread, whose speed suffers far less from other processes than two threads that wait
on each other.

`--data FILE` runs on a real CSV instead (text,label; `--rows` of its rows, shuffled with seed 0), e.g. the
issue-19 check of every method at the defaults' shape on AG News and the IMDB subset, where the goal is
+-15%:
    python benchmarks/estimate_accuracy.py --models minilm --data ../shared/datasets/ag_news/ag_news_test.csv \
        --rows minilm=480 --batch-sizes 32 --max-lengths 128 --methods full,lora,adapters,dora,ia3,prefix,bitfit

Usage: python benchmarks/estimate_accuracy.py [--models tiny,minilm] [--methods full,lora,adapters,bitfit,prefix]
       [--batch-sizes 4,8] [--max-lengths 64,256] [--rows tiny=1200,minilm=320] [--threads 1]
       [--clock wall|cpu] [--data FILE] [--store DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, threading, time
import psutil, torch
torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
from peft_tui.config import RunConfig
from peft_tui.engine.estimate import peak_rss_mb
from peft_tui.engine.events import RunStarted, StepLogged
from peft_tui.engine.store import Store
from peft_tui.engine.trainer import execute
cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
store = Store(sys.argv[2])
seen = {"steps": []}
def sink(e):
    store(e)
    if isinstance(e, RunStarted):
        seen["before_mb"] = psutil.Process().memory_info().rss / 2**20
        seen["total_steps"] = e.total_steps
        seen["cpu0"] = time.process_time()
    if isinstance(e, StepLogged):
        seen["steps"].append((e.step, e.elapsed_s))
        if e.step == seen["total_steps"]:  # always logged, right after the last step (before evaluation)
            seen["train_cpu_s"] = time.process_time() - seen["cpu0"]
rid = store.create_run(cfg)
r = execute(store, rid, cfg, sink, threading.Event())
if r is None:
    raise SystemExit(store.get(rid)["error"])
print(json.dumps({"maxrss_mb": peak_rss_mb(),
                  "engine_peak_mb": r.peak_memory_mb, "train_time_s": r.train_time_s,
                  "trainable": r.trainable_params, "total": r.total_params, **seen}))
"""


def write_data(path: Path, rows: int, seed: int) -> None:
    """Rows of 1..24 synthetic sentences (about 20 tokens each), most of them short."""
    from peft_tui.engine.data import synthetic

    rng = random.Random(seed)
    sentences, labels = synthetic(rows * 24, seed)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        for r in range(rows):
            k = min(24, 1 + int(rng.expovariate(1 / 5)))
            label = r % 2
            pool = [s for s, y in zip(sentences[r * 24:(r + 1) * 24], labels[r * 24:(r + 1) * 24]) if y == label]
            out.writerow([" ".join((pool * 24)[:k]), label])


def copy_rows(src: Path, dest: Path, rows: int) -> None:
    """`rows` rows of a real CSV (shuffled with seed 0: a file sorted by class keeps every class)."""
    with src.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, got = reader.fieldnames, list(reader)
    random.Random(0).shuffle(got)
    with dest.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=fields)
        out.writeheader()
        out.writerows(got[:rows])


def run_child(config, store_dir: str, threads: int) -> dict:
    env = {**os.environ, "BENCH_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config.to_dict()), store_dir],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def after_calibration(est, measured: dict) -> float | None:
    """The total time the ETA predicts at the first logged step >= 20 (None if the run was shorter)."""
    from peft_tui.engine.estimate import ETA_SWITCH_STEPS, eta

    for step, elapsed in measured["steps"]:
        if step >= ETA_SWITCH_STEPS and step < measured["total_steps"]:
            return elapsed + eta(est, step, elapsed, measured["total_steps"]).remaining_s
    return None


def pct(est: float, real: float) -> float:
    return 100.0 * (est - real) / real


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,minilm")
    ap.add_argument("--methods", default="full,lora,adapters,bitfit,prefix")
    ap.add_argument("--batch-sizes", default="4,8")
    ap.add_argument("--max-lengths", default="64,256")
    ap.add_argument("--rows", default="tiny=1200,minilm=320")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="calibrate in wall seconds (the machine's cached calibration) or CPU seconds of this "
                         "process (on a shared machine: the estimate's model of the work without the other tenants)")
    ap.add_argument("--data", default="", help="a real CSV (text,label) instead of the synthetic rows")
    ap.add_argument("--store", default="", help="a folder for the runs and the calibration (default: a temp dir)")
    ap.add_argument("--json", default="", help="also write every row to this JSON-lines file")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    from peft_tui.config import DataConfig, RunConfig
    from peft_tui.engine.estimate import calibration, estimate, grade, inputs_for, measure

    root = Path(a.store or tempfile.mkdtemp(prefix="bench-est-"))
    root.mkdir(parents=True, exist_ok=True)
    if a.clock == "wall":
        cal = calibration(root / "calibration.json", "cpu")
    else:
        import time

        cal = measure("cpu", "cpu seconds", clock=time.process_time)
    print(f"calibration ({cal.key}): fp32 {cal.matmul_flops['fp32'] / 1e9:.0f} GFLOP/s, module call "
          f"{cal.module_s * 1e6:.0f} us, overhead {cal.overhead_mb:.0f} MB; load average {os.getloadavg()[0]:.1f}")
    rows_for = dict(kv.split("=") for kv in a.rows.split(","))
    head = (f"{'model':6} {'method':8} {'bs':>2} {'len':>3} {'width':>5} | {'est MB':>7} {'peak MB':>7} {'err%':>6} "
            f"{'engine':>6} | {'est s':>6} {'real s':>6} {'err%':>6} {'cpu s':>6} {'err%':>6} | {'after s':>7} "
            f"{'after%':>6} | load")
    print(head)
    results = []
    for model in a.models.split(","):
        data_file = root / f"data-{model}.csv"
        if a.data:
            copy_rows(Path(a.data), data_file, int(rows_for[model]))
        else:
            write_data(data_file, int(rows_for[model]), seed=7)
        for method in a.methods.split(","):
            for bs in map(int, a.batch_sizes.split(",")):
                for max_len in map(int, a.max_lengths.split(",")):
                    cfg = RunConfig(method=method, model=model, data=DataConfig(source=str(data_file)), epochs=1,
                                    batch_size=bs, max_length=max_len, device="cpu", precision="fp32")
                    mc, lengths = inputs_for(cfg)
                    est = estimate(cfg, mc, lengths, "cpu", cal)
                    load = os.getloadavg()[0]
                    m = run_child(cfg, str(root / "store"), a.threads)
                    if "error" in m:
                        print(f"{model:6} {method:8} {bs:2} {max_len:3} failed: {m['error']}")
                        continue
                    g = grade(est, {"peak_memory_mb": m["maxrss_mb"], "train_time_s": m["train_time_s"]})
                    after = after_calibration(est, m)
                    row = dict(model=model, method=method, batch_size=bs, max_length=max_len, width=est.width,
                               est_mb=est.peak_mb, parts=est.parts, peak_mb=m["maxrss_mb"],
                               engine_peak_mb=m["engine_peak_mb"], before_train_mb=m.get("before_mb"),
                               mem_err=g["peak_error_pct"], est_s=est.total_s, after_s=after,
                               real_s=m["train_time_s"], time_err=g["time_error_pct"], cpu_s=m["train_cpu_s"],
                               cpu_err=pct(est.total_s, m["train_cpu_s"]),
                               after_err=pct(after, m["train_time_s"]) if after else None, steps=est.steps,
                               trainable_ok=est.trainable_params == m["trainable"], load=load)
                    results.append(row)
                    after_s = f"{after:7.1f}" if after else "      -"
                    after_e = f"{row['after_err']:+6.1f}" if after else "     -"
                    print(f"{model:6} {method:8} {bs:2} {max_len:3} {est.width:5} | {est.peak_mb:7.0f} "
                          f"{m['maxrss_mb']:7.0f} {row['mem_err']:+6.1f} {m['engine_peak_mb']:6.0f} | "
                          f"{est.total_s:6.1f} {m['train_time_s']:6.1f} {row['time_err']:+6.1f} "
                          f"{m['train_cpu_s']:6.1f} {row['cpu_err']:+6.1f} | {after_s} {after_e} | {load:.1f}", flush=True)
                    if a.json:
                        with open(a.json, "a") as f:
                            f.write(json.dumps(row) + "\n")
    if not results:
        return 1
    within = lambda key, lim: sum(1 for r in results if r[key] is not None and abs(r[key]) <= lim)  # noqa: E731
    n_after = sum(1 for r in results if r["after_err"] is not None)
    before = "time_err" if a.clock == "wall" else "cpu_err"
    print(f"\nmemory within +-15%: {within('mem_err', 15)}/{len(results)}; within +-20%: {within('mem_err', 20)}/{len(results)}; time before within +-30% "
          f"({a.clock} seconds): {within(before, 30)}/{len(results)}; "
          f"after within +-10%: {within('after_err', 10)}/{n_after}; "
          f"trainable counts exact: {sum(r['trainable_ok'] for r in results)}/{len(results)}")
    for key in ("mem_err", "time_err", "cpu_err", "after_err"):
        errs = sorted(abs(r[key]) for r in results if r[key] is not None)
        if errs:
            print(f"  |{key}|: median {errs[len(errs) // 2]:.1f}%, max {errs[-1]:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

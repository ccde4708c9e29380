"""What each pruner would have saved on the same trials, and whether it would have kept the winner.

Either run a study without pruning (every trial trains to its end, its validation curve and the time of each
evaluation are in the store), or run it with a pruner and pass --complete: each pruned trial's stored config
is then run again to its end (same seed and split: on the CPU the same curve up to where it was pruned), so
the same trials exist unpruned, at the cost of the pruned trials only:

    peft-tui tune --methods full,lora,adapters --trials 8 --store S --study s1 ...      # pruner: behind
    python benchmarks/pruning.py --store S --study s1 --complete [--pruners behind,median,halving] [--json OUT]

The study's real cost (its trials' run seconds as they ran, pruned ones cut short) is printed against the same
trials unpruned. Each pruner is then replayed through Optuna on those trials in the order they ran (one at a time, as with
one worker): a trial reports its evaluations one by one, and where the pruner says stop, the trial costs the
seconds from its start to that evaluation instead of its whole run. Printed per method and pruner: trials
pruned, run seconds against the unpruned seconds (saved %), and whether the unpruned winner (best final
validation accuracy) survives, with the best validation accuracy the pruned study would have kept.

Limit, said plainly: in a real pruned study TPE learns from pruned trials as such, so its later trials can
differ; the replay keeps the trials fixed, which is what "the same trials without pruning" means.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_tui.engine import tune as studies  # noqa: E402
from peft_tui.engine.store import Store  # noqa: E402
from peft_tui.engine.tune import pruning  # noqa: E402


def rerun_name(method: str, trial: int) -> str:
    return f"{method}-t{trial}-unpruned"


def complete_pruned(store: Store, spec: studies.StudySpec) -> None:
    """Run each pruned trial's config again to its end (one `peft-tui run --config` each, skipped when done)."""
    done = {r["name"] for r in store.list() if r["status"] == "done"}
    exe = str(Path(sys.executable).with_name("peft-tui"))
    for row in studies.study_runs(store, spec.name):
        if row.get("trial") is None or row["status"] != "pruned":
            continue
        name = rerun_name(row["method"], row["trial"])
        if name in done:
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump({**row["config"], "name": name}, fh)
        print(f"running pruned trial {row['trial']} of {row['method']} to its end ...", flush=True)
        out = subprocess.run([exe, "run", "--config", fh.name, "--store", str(store.root), "--json", "--force"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-2000:])


def trial_runs(store: Store, spec: studies.StudySpec, method: str) -> list[dict]:
    """The method's trials in the order they ran, each to its end (a pruned one by its --complete rerun):
    curve [(step, val acc, seconds since start)]; `actual_s`: what the trial cost in the study itself."""
    out = []
    reruns = {r["name"]: r for r in store.list() if r["status"] == "done" and r.get("study") is None}
    for trial in studies.study_runs(store, spec.name):
        if trial["method"] != method or trial.get("trial") is None or trial["status"] not in ("done", "pruned"):
            continue
        row = trial if trial["status"] == "done" else reruns.get(rerun_name(method, trial["trial"]))
        if row is None:
            print(f"{method} trial {trial['trial']} was pruned and has not been run to its end: pass --complete")
            continue
        start = row.get("started_at") or row.get("claimed_at")
        curve = [(s, v, t - start) for s, v, t in store.points(row["id"], "val_accuracy")]
        clock = training_clock(store, row)
        out.append({"trial": trial["trial"], "seconds": studies.run_seconds(row), "total_steps": row["total_steps"],
                    "train_s": clock(row["total_steps"]), "clock": clock,
                    "actual_train_s": training_clock(store, trial)(trial["step"] or 0) if trial is not row else None,
                    "actual_s": studies.run_seconds(trial), "pruned_at": trial["step"] if trial is not row else None,
                    "final": (row["result"] or {}).get("val_accuracy"), "curve": curve,
                    "eval_every": row["config"].get("eval_every", 0)})
    return sorted(out, key=lambda r: r["trial"])


def training_clock(store: Store, row: dict):
    """step -> the run's training seconds at that step: its training clock (the optimizer steps and the LP-FT
    probe fit; evaluations, loading and saving excluded), read from its StepLogged events and interpolated
    between them; a finished run ends at its result's train_time_s."""
    from peft_tui.engine.events import StepLogged, read_events

    extra = (row.get("result") or {}).get("extra") or {}
    points = [(0, float(extra.get("head_init_s", 0.0)))]
    points += sorted((e.step, e.elapsed_s) for e in read_events(store.events_path(row["id"])) if isinstance(e, StepLogged))
    if row.get("result"):
        points.append((row["total_steps"], float(row["result"]["train_time_s"])))

    def at(step: int) -> float:
        before = max((p for p in points if p[0] <= step), default=points[0])
        after = min((p for p in points if p[0] >= step), default=before)
        if after[0] == before[0]:
            return before[1] if after is before else max(before[1], after[1])
        return before[1] + (after[1] - before[1]) * (step - before[0]) / (after[0] - before[0])

    return at


PRUNE_FROM_EVAL = pruning.PRUNE_FROM_EVAL
HALVING_FACTOR = pruning.HALVING_FACTOR


def replay(trials: list[dict], pruner_name: str, val_rows: int) -> dict:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    eval_every = trials[0]["eval_every"] if trials else 0
    base, _, arg = pruner_name.partition("@")  # behind@1: `behind` judging from the first evaluation on;
    # halving@2: successive halving keeping the best half (not third) at each rung
    pruning.PRUNE_FROM_EVAL = int(arg) if arg and base == "behind" else PRUNE_FROM_EVAL  # read by clearly_behind
    pruning.HALVING_FACTOR = int(arg) if arg and base == "halving" else HALVING_FACTOR  # read by _pruner
    study = optuna.create_study(direction="maximize", pruner=studies._pruner(base, eval_every, val_rows))
    seconds, steps, train_s, pruned, kept = 0.0, 0, 0.0, [], []
    for tr in trials:
        t = study.ask()
        if tr["trial"] == 0:  # the method's first trial is its defaults, as search.py tags it
            t.set_user_attr("defaults", True)
        stop = None
        for step, value, at in tr["curve"]:
            t.report(value, step)
            if step < tr["total_steps"] and t.should_prune():  # as the tuner: the last evaluation is the result
                stop = (step, at)
                break
        if stop is None:
            study.tell(t, tr["final"])
            seconds += tr["seconds"]
            steps += tr["total_steps"]
            train_s += tr["train_s"]
            kept.append(tr)
        else:
            study.tell(t, state=TrialState.PRUNED)
            seconds += stop[1]
            steps += stop[0]
            train_s += tr["clock"](stop[0])
            pruned.append({"trial": tr["trial"], "step": stop[0], "of": tr["total_steps"]})
    return {"seconds": seconds, "steps": steps, "train_s": train_s, "pruned": pruned, "kept": [k["trial"] for k in kept],
            "best_kept": max((k["final"] for k in kept), default=None), "outcome": outcome(kept, val_rows)}


def outcome(trials: list[dict], val_rows: int) -> int | None:
    """The trial whose configuration the study's final runs would use, as report.keep_defaults decides: the
    best finished trial where it beats the defaults trial (trial 0, the first asked) on validation by more
    than the noise, else the defaults. None: the defaults trial is not among `trials`."""
    defaults = next((t for t in trials if t["trial"] == 0), None)
    if defaults is None:
        return None
    best = max(trials, key=lambda t: (t["final"], -t["trial"]))
    return best["trial"] if best["final"] - defaults["final"] > pruning.noise(defaults["final"], val_rows) else 0


def pct(part: float, whole: float) -> str:
    """The share of `whole` saved, as ' 42%'."""
    return f"{100 * (1 - part / whole) if whole else 0:5.0f}%"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--pruners", default="ahead,halving,halving@2,behind,behind@1,median",
                    help="pruners to replay; behind@N: `behind` judging from the N-th evaluation on; halving@N: "
                    "successive halving keeping the best 1/N at each rung")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--complete", action="store_true", help="first run each pruned trial again to its end")
    args = ap.parse_args()
    store = Store(args.store)
    spec = studies.load_study(store, args.study)
    if args.complete:
        complete_pruned(store, spec)
    doc: dict = {"study": spec.name, "val_rows": spec.val_rows, "methods": {}}
    total = {"unpruned": 0.0}
    print(f"study {spec.name}: {spec.val_rows} validation rows; replaying {args.pruners} on its unpruned trials\n")
    print("saved: of the training steps (the load-independent cost), of the run seconds (wall, this machine: "
          "loading, evaluations and saving included) and of the training seconds (the runs' training clock)")
    print(f"{'method':9} {'pruner':8} {'pruned':>7} {'steps':>6} {'of':>6} {'saved':>6} {'seconds':>8} {'of':>8} "
          f"{'saved':>6} {'train s':>7} {'of':>7} {'saved':>6}  outcome  winner kept (best val %; a lost winner within noise: the kept best is within "
          f"{pruning.NOISE_Z:g} standard errors of it)")
    print("outcome: the trial whose configuration the final runs use (the best only where it beats the defaults, "
          "trial 0, beyond the noise), and whether the pruner kept it")
    for method in spec.methods:
        trials = trial_runs(store, spec, method)
        if not trials:
            continue
        unpruned = sum(t["seconds"] for t in trials)
        all_steps = sum(t["total_steps"] for t in trials)
        all_train = sum(t["train_s"] for t in trials)
        total["train"] = total.get("train", 0.0) + all_train
        actual_train = sum(t["train_s"] if t["pruned_at"] is None else t["actual_train_s"] for t in trials)
        total["as run train"] = total.get("as run train", 0.0) + actual_train
        total["steps"] = total.get("steps", 0) + all_steps
        winner = max(trials, key=lambda t: (t["final"], -t["trial"]))
        total["unpruned"] += unpruned
        actual = sum(t["actual_s"] for t in trials)
        total["as run"] = total.get("as run", 0.0) + actual
        cut = [t for t in trials if t["pruned_at"] is not None]
        ran = sum(t["pruned_at"] if t["pruned_at"] is not None else t["total_steps"] for t in trials)
        total["as run steps"] = total.get("as run steps", 0) + ran
        print(f"{method:9} {'as run':8} {len(cut):>3}/{len(trials):<3} {ran:6d} {all_steps:6d} "
              f"{pct(ran, all_steps)} {actual:8.0f} {unpruned:8.0f} {pct(actual, unpruned)} {actual_train:7.0f} "
              f"{all_train:7.0f} {pct(actual_train, all_train)}  {'':7}  "
              f"{'yes' if winner['pruned_at'] is None else 'NO'} (pruned: "
              + (", ".join(f"t{t['trial']} at {t['pruned_at']}/{t['total_steps']} (would end {100 * t['final']:.1f})"
                           for t in cut) or "none") + ")")
        chosen = outcome(trials, spec.val_rows)
        doc["methods"][method] = {"unpruned_s": unpruned, "winner": winner["trial"], "winner_val": winner["final"],
                                  "trials": len(trials), "outcome": chosen, "pruners": {}}
        for name in [p.strip() for p in args.pruners.split(",") if p.strip()]:
            r = replay(trials, name, spec.val_rows)
            total[name] = total.get(name, 0.0) + r["seconds"]
            total[f"{name} steps"] = total.get(f"{name} steps", 0) + r["steps"]
            total[f"{name} train"] = total.get(f"{name} train", 0.0) + r["train_s"]
            saved = 1 - r["seconds"] / unpruned if unpruned else 0.0
            doc["methods"][method]["pruners"][name] = {**r, "saved": saved}
            kept = "yes" if winner["trial"] in r["kept"] else "NO"
            if kept == "NO" and r["best_kept"] is not None:  # lost: by more than the validation set can tell?
                gap = winner["final"] - r["best_kept"]
                within = gap <= pruning.noise(winner["final"], spec.val_rows)
                kept = f"NO, {'within' if within else 'beyond'} noise"
                doc["methods"][method]["pruners"][name]["kept_within_noise"] = within
            best = f"{100 * r['best_kept']:.1f}" if r["best_kept"] is not None else "-"
            same = "same" if r["outcome"] == chosen else f"t{chosen}->{'-' if r['outcome'] is None else r['outcome']}"
            doc["methods"][method]["pruners"][name]["outcome_kept"] = r["outcome"] == chosen
            print(f"{method:9} {name:8} {len(r['pruned']):>3}/{len(trials):<3} {r['steps']:6d} {all_steps:6d} "
                  f"{pct(r['steps'], all_steps)} {r['seconds']:8.0f} {unpruned:8.0f} {pct(r['seconds'], unpruned)} "
                  f"{r['train_s']:7.0f} {all_train:7.0f} {pct(r['train_s'], all_train)}  "
                  f"{same:7}  {kept} ({best} vs {100 * winner['final']:.1f})")
    print()
    for name in ["as run", *[p.strip() for p in args.pruners.split(",") if p.strip()]]:
        if name in total and total["unpruned"]:
            print(f"all methods, {name}: {total[name + ' steps']} of {total['steps']} steps "
                  f"({pct(total[name + ' steps'], total['steps']).strip()} saved), {total[name]:.0f} of "
                  f"{total['unpruned']:.0f} run seconds ({pct(total[name], total['unpruned']).strip()} saved), "
                  f"{total[name + ' train']:.0f} of {total['train']:.0f} training seconds "
                  f"({pct(total[name + ' train'], total['train']).strip()} saved)")
    doc["total"] = total
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each pruner would have saved on the same trials, and whether it would have kept the winner.

Run a study without pruning first (every trial trains to its end, its validation curve and the time of each
evaluation are in the store):

    peft-tui tune --methods full,lora,adapters --trials 8 --pruner none --store S --study unpruned ...
    python benchmarks/pruning.py --store S --study unpruned [--pruners behind,median,halving] [--json OUT]

Each pruner is then replayed through Optuna on those trials in the order they ran (one at a time, as with
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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peft_tui.engine import tune as studies  # noqa: E402
from peft_tui.engine.store import Store  # noqa: E402


def trial_runs(store: Store, spec: studies.StudySpec, method: str) -> list[dict]:
    """The method's finished trials in the order they ran: curve [(step, val acc, seconds since start)]."""
    out = []
    for row in studies.study_runs(store, spec.name):
        if row["method"] != method or row.get("trial") is None or row["status"] != "done":
            continue
        start = row.get("started_at") or row.get("claimed_at")
        curve = [(s, v, t - start) for s, v, t in store.points(row["id"], "val_accuracy")]
        out.append({"trial": row["trial"], "seconds": studies.run_seconds(row), "total_steps": row["total_steps"],
                    "final": (row["result"] or {}).get("val_accuracy"), "curve": curve,
                    "eval_every": row["config"].get("eval_every", 0)})
    return sorted(out, key=lambda r: r["trial"])


def replay(trials: list[dict], pruner_name: str, val_rows: int) -> dict:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    eval_every = trials[0]["eval_every"] if trials else 0
    study = optuna.create_study(direction="maximize", pruner=studies._pruner(pruner_name, eval_every, val_rows))
    seconds, pruned, kept = 0.0, [], []
    for tr in trials:
        t = study.ask()
        stop = None
        for step, value, at in tr["curve"]:
            t.report(value, step)
            if step < tr["total_steps"] and t.should_prune():  # as the tuner: the last evaluation is the result
                stop = (step, at)
                break
        if stop is None:
            study.tell(t, tr["final"])
            seconds += tr["seconds"]
            kept.append(tr)
        else:
            study.tell(t, state=TrialState.PRUNED)
            seconds += stop[1]
            pruned.append({"trial": tr["trial"], "step": stop[0], "of": tr["total_steps"]})
    return {"seconds": seconds, "pruned": pruned, "kept": [k["trial"] for k in kept],
            "best_kept": max((k["final"] for k in kept), default=None)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--pruners", default="behind,median,halving")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    store = Store(args.store)
    spec = studies.load_study(store, args.study)
    doc: dict = {"study": spec.name, "val_rows": spec.val_rows, "methods": {}}
    total = {"unpruned": 0.0}
    print(f"study {spec.name}: {spec.val_rows} validation rows; replaying {args.pruners} on its unpruned trials\n")
    print(f"{'method':9} {'pruner':8} {'pruned':>7} {'seconds':>9} {'unpruned':>9} {'saved':>7}  winner kept (best val %)")
    for method in spec.methods:
        trials = trial_runs(store, spec, method)
        if not trials:
            continue
        unpruned = sum(t["seconds"] for t in trials)
        winner = max(trials, key=lambda t: (t["final"], -t["trial"]))
        total["unpruned"] += unpruned
        doc["methods"][method] = {"unpruned_s": unpruned, "winner": winner["trial"], "winner_val": winner["final"],
                                  "trials": len(trials), "pruners": {}}
        for name in [p.strip() for p in args.pruners.split(",") if p.strip()]:
            r = replay(trials, name, spec.val_rows)
            total[name] = total.get(name, 0.0) + r["seconds"]
            saved = 1 - r["seconds"] / unpruned if unpruned else 0.0
            doc["methods"][method]["pruners"][name] = {**r, "saved": saved}
            kept = "yes" if winner["trial"] in r["kept"] else "NO"
            best = f"{100 * r['best_kept']:.1f}" if r["best_kept"] is not None else "-"
            print(f"{method:9} {name:8} {len(r['pruned']):>3}/{len(trials):<3} {r['seconds']:9.0f} {unpruned:9.0f} "
                  f"{100 * saved:6.0f}%  {kept} ({best} vs {100 * winner['final']:.1f})")
    print()
    for name, secs in total.items():
        if name != "unpruned" and total["unpruned"]:
            print(f"all methods, {name}: {secs:.0f} s against {total['unpruned']:.0f} s unpruned: "
                  f"{100 * (1 - secs / total['unpruned']):.0f}% saved")
    doc["total"] = total
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

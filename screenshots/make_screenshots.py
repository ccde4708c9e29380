"""Write the dashboard's SVG screenshots into screenshots/. Two ways:

    .venv/bin/python screenshots/make_screenshots.py               # train the default comparison here
    .venv/bin/python screenshots/make_screenshots.py --store DIR   # a store holding a finished comparison

The first queues the default comparison in the dashboard (`c`: full, LoRA and adapters on the embedded
MiniLM and the default synthetic data, plus the TF-IDF baseline) in a throwaway store and trains it on
this machine's GPU or CPU (a few minutes on a laptop CPU); it also writes the main screen mid-run and
the Log tab. The second trains nothing: it opens DIR (say after `peft-tui compare --store DIR`), whose
newest runs' curves the dashboard draws on opening. Both write the main screen, the Results tab and the
new-run form at 160x48, and the main screen and the Results tab at 80x24.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from peft_tui.ui.app import create_app

HERE = Path(__file__).resolve().parent


async def wait_for(pilot, cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        await pilot.pause(0.5)
    if not cond():
        raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


MIN_VAL_ACCURACY = 0.65  # a binary task: clearly above chance (0.5)
LOSS_DROP = 0.8  # the latest quarter of a curve's training loss at most 80% of its first quarter's


def not_learned(app) -> str | None:
    """Why the runs on screen do not show learning (None when they do): an image of runs that did not learn
    would show the product failing. Every fine-tuning run that has logged a curve must have its training loss
    falling, and the best validation accuracy must be clearly above chance."""
    rows = [r for r in app.store.list() if r["method"] != "tfidf" and r["status"] in ("running", "done")]
    if not rows:
        return "no run has started"
    for r in rows:
        loss = [v for _, v in app.store.series(r["id"], "train_loss")]
        if len(loss) < 8:
            return f"run {r['id']} ({r['method']}) has logged only {len(loss)} training-loss points"
        q = len(loss) // 4
        first, last = sum(loss[:q]) / q, sum(loss[-q:]) / q
        if last > LOSS_DROP * first:
            return f"run {r['id']} ({r['method']}): training loss {first:.3f} -> {last:.3f} is not falling"
    best = max((r["val_accuracy"] or 0.0) for r in rows)
    if best < MIN_VAL_ACCURACY:
        return f"the best validation accuracy is {100 * best:.1f}% (< {100 * MIN_VAL_ACCURACY:.0f}%)"
    return None


async def save(app, pilot, out: Path, name: str) -> None:
    why = not_learned(app)
    if why is not None:
        raise SystemExit(f"refusing to write {name}: the runs have not learned ({why})")
    app.main.refresh_all()
    await pilot.pause(1.0)  # let the charts redraw at this size
    app.save_screenshot(str(out / name))
    print(f"wrote {name}")


async def common_shots(app, pilot, out: Path) -> None:
    """The screens of a store whose runs have ended: 160x48, then 80x24."""
    await save(app, pilot, out, "main-160x48.svg")
    await pilot.press("2")
    await save(app, pilot, out, "results-160x48.svg")
    await pilot.press("1", "n")
    await pilot.pause(0.5)
    app.save_screenshot(str(out / "new-run-form-160x48.svg"))
    print("wrote new-run-form-160x48.svg")
    await pilot.press("escape")
    await pilot.resize_terminal(80, 24)
    await save(app, pilot, out, "main-80x24.svg")
    await pilot.press("2")
    await save(app, pilot, out, "results-80x24.svg")
    await pilot.press("1")


async def live(out: Path, timeout: float) -> None:
    store = Path(tempfile.mkdtemp(prefix="peft-tui-shots-")) / "store"
    app = create_app(store=store)  # the engine's defaults: what `peft-tui launch` starts with
    async with app.run_test(size=(160, 48)) as pilot:
        state = app.state
        await pilot.press("c")
        await wait_for(pilot, lambda: any(r["method"] == "lora" and r["status"] == "running"
                                          and (r.get("step") or 0) >= 0.5 * (r.get("total_steps") or 1e9)
                                          for r in state.runs.values()) and not_learned(app) is None, timeout,
                       "LoRA to be half way, with every started run learning")
        await save(app, pilot, out, "main-mid-run-160x48.svg")
        await wait_for(pilot, lambda: state.counts()["done"] == 4 and not state.active(), timeout,
                       "the comparison to finish")
        await common_shots(app, pilot, out)
        await pilot.press("3")
        await save(app, pilot, out, "log-80x24.svg")
    print(f"the comparison's store: {store}")


async def from_store(out: Path, path: Path) -> None:
    if not (path / "runs.db").exists():
        raise SystemExit(f"{path} holds no store (no runs.db): pass the --store of a finished comparison")
    app = create_app(store=path)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: bool(app.state.runs), 30, "the store's runs")
        await pilot.pause(2.0)  # the first poll also reads the curves of the newest runs
        await common_shots(app, pilot, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="a store holding a finished comparison: train nothing")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the comparison")
    parser.add_argument("--out", type=Path, default=HERE, help="where the SVGs go (default: this folder)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    asyncio.run(from_store(args.out, args.store) if args.store else live(args.out, args.timeout))
    print(f"screenshots written to {args.out}")


if __name__ == "__main__":
    main()

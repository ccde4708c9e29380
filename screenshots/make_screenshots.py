"""Write the dashboard's SVG screenshots into screenshots/. Rerun any time:

    .venv/bin/python screenshots/make_screenshots.py

Uses the embedded MiniLM on a small synthetic set (CPU, a few minutes), in a throwaway store.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from peft_tui.config import DataConfig, RunConfig  # noqa: E402
from peft_tui.ui.app import create_app  # noqa: E402


async def wait_for(pilot, cond, timeout: float = 400.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        await pilot.pause(0.2)
    if not cond():
        raise SystemExit("timed out: the machine is too busy for the screenshot runs")


async def main() -> None:
    import torch

    torch.set_num_threads(1)
    store = Path(tempfile.mkdtemp(prefix="peft-tui-shots-")) / "store"
    # the embedded MiniLM on a small synthetic set: real learning curves in about a minute
    template = RunConfig(model="minilm", data=DataConfig(size=600), epochs=2, batch_size=16, eval_every=5)
    app = create_app(store=store, template=template, devices=["cpu"])
    async with app.run_test(size=(160, 48)) as pilot:
        state = app.state
        await pilot.press("c")
        # main screen mid-run: the first run done, the second about half way
        await wait_for(pilot, lambda: any(r["method"] == "lora" and r["status"] == "running"
                                          and (r.get("step") or 0) >= 0.5 * (r.get("total_steps") or 1e9)
                                          for r in state.runs.values()))
        await pilot.pause(1.5)
        app.save_screenshot(str(HERE / "main-mid-run-160x48.svg"))
        await wait_for(pilot, lambda: state.counts()["done"] == 4 and not state.active())
        await pilot.press("2")
        await pilot.pause(0.5)
        app.save_screenshot(str(HERE / "results-160x48.svg"))
        await pilot.press("1", "n")
        await pilot.pause(0.5)
        app.save_screenshot(str(HERE / "new-run-form-160x48.svg"))
        await pilot.press("escape")
        await pilot.pause(0.2)
        # 80x24: the same dashboard with a run in progress
        await pilot.resize_terminal(80, 24)
        await pilot.press("c")
        await wait_for(pilot, lambda: any(r["status"] == "running"
                                          and (r.get("step") or 0) >= 0.4 * (r.get("total_steps") or 1e9)
                                          for r in state.runs.values()))
        await pilot.pause(1.5)
        app.save_screenshot(str(HERE / "main-80x24.svg"))
        await pilot.press("3")
        await pilot.pause(0.3)
        app.save_screenshot(str(HERE / "log-80x24.svg"))
    print(f"screenshots written to {HERE}")


if __name__ == "__main__":
    asyncio.run(main())

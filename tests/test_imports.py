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
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("CLEAN"), out.stdout + out.stderr[-2000:]


def test_no_ui_import_statement_in_engine_source():
    pattern = re.compile(r"^\s*(import|from)\s+(textual|rich|textual_plotext|peft_tui\.ui)\b", re.M)
    offenders = [str(p) for p in ENGINE.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


def test_no_unsafe_loading_in_source():
    src = pathlib.Path(__file__).resolve().parent.parent / "peft_tui"
    for p in src.rglob("*.py"):
        text = p.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in m.group(1), f"{p}: {m.group(0)}"
        assert "trust_remote_code=True" not in text, p

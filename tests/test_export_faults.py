"""`peft-tui export` under hard faults (issue 11, class 8): a full disk at any write, a real file size limit,
SIGTERM mid-write, an --out the system will not let us write. Every case: one line on stderr, exit 1 (the
machine failed) or 2 (a bad --out), no traceback, and no half-written export folder left behind (an
existing empty --out folder stays, empty)."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peft_tui.cli import app

runner = CliRunner()
FAULTS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with a finished tiny LoRA run (exports an adapter, or a merged model with --merge)."""
    from conftest import trained_store

    return trained_store(tmp_path_factory.mktemp("faults") / "store", "lora")


def one_line_error(res, code: int) -> str:
    err = res.stderr.strip()
    assert res.exit_code == code, (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output and len(err.splitlines()) == 1 and err.startswith("error: "), res.output
    return err


class WritesFail:
    """The k-th write into `out` (a model or tokenizer save, a file or folder copy, a text file) first leaves
    a half-written file, then fails the way a full disk or a file size limit does."""

    def __init__(self, monkeypatch, out: Path, k: int, error: str):
        import transformers

        self.out, self.k, self.calls, self.error, self.failed_at = out, k, 0, error, None
        for owner, name, path_arg in ((transformers.PreTrainedModel, "save_pretrained", 1),
                                      (transformers.PreTrainedTokenizerBase, "save_pretrained", 1),
                                      (shutil, "copy2", 1), (shutil, "copytree", 1), (Path, "write_text", 0)):
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), path_arg))

    def _wrap(self, real, path_arg: int):
        def fake(*args, **kwargs):
            path = Path(args[path_arg])
            if self.out not in (path, *path.parents):  # the store's own writes
                return real(*args, **kwargs)
            self.calls += 1
            if self.calls != self.k:
                return real(*args, **kwargs)
            self.failed_at = path
            half = path / "model.safetensors" if path.is_dir() or not path.suffix else path
            half.parent.mkdir(parents=True, exist_ok=True)
            half.write_bytes(b"\x00" * 100)  # what a write cut short leaves
            if self.error == "safetensors":  # safetensors' own error type, a message only
                raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")
            code = {"enospc": errno.ENOSPC, "edquot": errno.EDQUOT, "efbig": errno.EFBIG}[self.error]
            raise OSError(code, os.strerror(code), str(path))

        return fake


@FAULTS
@given(k=st.integers(1, 9), merge=st.booleans(), existing=st.booleans(),
       error=st.sampled_from(["enospc", "edquot", "efbig", "safetensors"]))
@pytest.mark.slow
def test_a_write_failing_for_space_is_one_line_exit_1_and_leaves_nothing(trained, monkeypatch, k, merge, existing,
                                                                          error):
    st_, rid = trained
    out = Path(tempfile.mkdtemp()) / "export"
    if existing:
        out.mkdir()
    try:
        with monkeypatch.context() as m:
            fault = WritesFail(m, out, k, error)
            res = runner.invoke(app, ["export", str(rid), "--out", str(out), "--store", str(st_.root),
                                      *(["--merge"] if merge else [])])
        if fault.failed_at is None:  # fewer writes than k: the export finished
            assert res.exit_code == 0, res.output
            assert (out / "README.md").is_file()
            return
        err = one_line_error(res, 1)
        assert err.startswith("error: disk full at ") and "free some space" in err
        assert (not out.exists()) if not existing else list(out.iterdir()) == []
        assert not list(out.parent.glob(".peft-tui-probe-*"))
    finally:
        shutil.rmtree(out.parent)


@pytest.mark.slow
def test_a_real_file_size_limit_fails_the_export_in_one_line(trained, tmp_path):
    """RLIMIT_FSIZE in the export's own process: the merged model (8 MB) cannot be written past 1 MB, while
    config.json before it can: exit 1, one line, the half-written folder removed."""
    st_, rid = trained
    out = tmp_path / "merged"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "peft_tui.cli", "export", str(rid), "--merge", "--out", str(out),
                          "--store", str(st_.root)], capture_output=True, text=True, env=env, timeout=240,
                         preexec_fn=limit)
    err = res.stderr.strip()
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert len(err.splitlines()) == 1 and err.startswith(f"error: disk full at {out}"), err
    assert not out.exists()


def test_sigterm_mid_export_cleans_up_and_exits_143(trained, tmp_path):
    """SIGTERM while the export writes (sent as soon as its folder appears): the command's cleanup runs
    (SIGTERM raises KeyboardInterrupt, as Ctrl-C does), one line, exit 143, no folder left."""
    st_, rid = trained
    out = tmp_path / "export"
    got = []
    previous = signal.signal(signal.SIGTERM, lambda *a: got.append("pytest"))  # if the command installs none
    stop = threading.Event()

    def terminate_when_writing():
        while not stop.is_set():
            if out.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=terminate_when_writing, daemon=True)
    watcher.start()
    try:
        res = runner.invoke(app, ["export", str(rid), "--merge", "--out", str(out), "--store", str(st_.root)])
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGTERM, previous)
    assert got == [], "the export did not handle SIGTERM"
    assert res.exit_code == 143 and res.stderr.strip() == "interrupted (SIGTERM)", (res.exit_code, res.output)
    assert not out.exists()


@pytest.mark.parametrize("where", ["a file", "/proc", "/sys/kernel"])
def test_an_out_folder_that_cannot_be_made_is_exit_2_before_anything_is_written(trained, tmp_path, where):
    st_, rid = trained
    if where == "a file":
        (tmp_path / "f").write_text("x")
        out, needle = tmp_path / "f" / "sub", "is inside a file"
    else:
        out, needle = Path(where) / "peft-export", "cannot be written"
    res = runner.invoke(app, ["export", str(rid), "--out", str(out), "--store", str(st_.root)])
    assert needle in one_line_error(res, 2)
    assert not out.exists()


@settings(max_examples=30, deadline=None)
@given(name=st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=40)
       .filter(lambda s: s not in (".", "..")))
def test_hostile_out_names_are_used_literally_or_refused_in_one_line(name):
    """Newlines, escape sequences, markup and unicode in --out: the folder is used as named (or, when the
    file system refuses the name, one line), and nothing is written by the check."""
    from peft_tui.commands.artifacts import export_folder
    from peft_tui.errors import ConfigError

    base = Path(tempfile.mkdtemp())
    try:
        try:
            out = export_folder(str(base / name), base / "store")
        except ConfigError as e:
            assert "\n" not in str(e) and "cannot be written" in str(e)
        else:
            assert out == base / name
        assert [p.name for p in base.iterdir()] == []  # the writability probe is gone
    finally:
        shutil.rmtree(base)

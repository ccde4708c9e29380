"""More hostile input across the CLI (issue 11): the contract for every command, generated with hypothesis.

- `predict --file` reads through the engine's file readers (engine/data/files.py): BOMs, NULs, CRs,
  odd quoting, non-UTF-8 and binary bytes give texts or one line naming --file, never a traceback;
- a CSV row with more fields than its header is refused, never shifted into an index or truncated;
- hostile values in any option of the read-only commands: exit 0, or exit 2 with one clean line;
- the error path itself: a full disk anywhere in an exception's chain, an OSError or a broken database
  escaping a command, SIGTERM: one line, exit 1 / 1 / 1 / 143, control characters removed;
- `doctor` reports what a cut-short write left and `--fix` removes it, never touching an active run's files.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sqlite3
import unicodedata
from pathlib import Path

import pytest
import typer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.config import DataConfig, RunConfig
from peft_tui.engine.methods import validate as validate_run
from peft_tui.errors import ConfigError

runner = CliRunner()
SOME = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
HOSTILE_PIECES = ["[/x]", "[bold]", "[link=https://e.example]", "\x1b[2J", "\x1b]0;t\x07", "\x9b2J", "\x00", "\r",
                  "\n", "\r\n", "\t", "\ufeff", "\u2028", '"', '""', ",", ";", "\\", "é", "漢", "🙂", " ", "a", "-"]
hostile = st.lists(st.one_of(st.sampled_from(HOSTILE_PIECES), st.characters(codec="utf-8")), min_size=1,
                   max_size=8).map("".join)


def is_clean(text: str) -> bool:
    return not any(unicodedata.category(c) == "Cc" and c != "\n" for c in text)


def one_line_error(res, code: int = 2) -> str:
    err = res.stderr.strip()
    assert res.exit_code == code, (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output and len(err.splitlines()) == 1 and err.startswith("error: "), res.output
    assert is_clean(err), repr(err)
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import trained_store

    return trained_store(tmp_path_factory.mktemp("more") / "store", "head")


# ============================================================ predict --file through the engine's readers
def expected_lines(data: bytes) -> list[str] | None:
    """What a .txt file of texts holds, by an independent reading: UTF-8 (a BOM dropped), lines split at
    \\n, \\r\\n or \\r, stripped, blank ones left out; None when it is not NUL-free UTF-8 text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if ln.strip()]


@SOME
@given(data=st.one_of(
    st.binary(max_size=120),
    st.lists(hostile, max_size=6).map(lambda lines: "\n".join(lines).encode()),
    st.lists(hostile, max_size=6).map(lambda lines: ("\ufeff" + "\r\n".join(lines)).encode()),
))
def test_predict_txt_file_gives_its_lines_or_one_line_naming_the_file(tmp_path, data):
    from peft_tui.commands.artifacts import texts_from_file

    path = tmp_path / "in.txt"
    path.write_bytes(data)
    want = expected_lines(data)
    try:
        texts, pairs = texts_from_file(str(path), RunConfig())
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith("--file ") and is_clean(msg), msg
        assert want is None or want == [] or "UTF-16" in msg, (want, msg)
        if want is None and b"\x00" not in data:
            assert "re-save it as UTF-8" in msg
    else:
        assert pairs is None and texts == want  # a leading BOM is not part of the first text


@SOME
@given(rows=st.lists(st.tuples(hostile, st.sampled_from(["pos", "neg", ""])), min_size=1, max_size=8),
       fmt=st.sampled_from([".csv", ".tsv", ".jsonl"]), bom=st.booleans())
def test_predict_table_file_gives_its_non_empty_texts_or_one_line(tmp_path, rows, fmt, bom):
    """Quoted by a real writer (any quotes, separators, newlines inside texts): the texts come back as
    written, the empty ones left out with a warning; or one line naming --file (e.g. a NUL byte)."""
    from peft_tui.commands.artifacts import texts_from_file

    if fmt == ".jsonl":
        content = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
    else:
        buf = io.StringIO()
        csv.writer(buf, delimiter="\t" if fmt == ".tsv" else ",").writerows([("text", "label"), *rows])
        content = buf.getvalue()
    path = tmp_path / f"in{fmt}"
    path.write_bytes((("\ufeff" if bom else "") + content).encode())
    try:
        texts, _ = texts_from_file(str(path), RunConfig())
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith("--file ") and is_clean(str(e)), str(e)
        return
    assert fmt == ".jsonl" or all("\x00" not in t for t, _ in rows)
    # a CSV reader turns \r\n inside a quoted cell into what it holds; compare what is visible
    want = [t for t, _ in rows if t.strip()]
    assert [t.replace("\r", "") for t in texts] == [t.replace("\r", "") for t in want]


@SOME
@given(texts=st.lists(st.text(alphabet="ab ,", min_size=1, max_size=8).filter(str.strip), min_size=2, max_size=8),
       labels=st.lists(st.sampled_from(["pos", "neg"]), min_size=8, max_size=8))
def test_an_unquoted_comma_in_a_csv_text_is_refused_never_shifted(tmp_path, texts, labels):
    """Rows written without quoting: a text holding a comma makes a row longer than the header. It is
    refused with the line number; never read with the first column as an index or a field dropped."""
    from peft_tui.engine.data import load_splits

    texts = texts + ["x"] * (8 - len(texts))
    path = tmp_path / "raw.csv"
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in zip(texts, labels)))
    try:
        data = load_splits(DataConfig(source=str(path), val_fraction=0.0, test_fraction=0.5), 0)
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg
        if any("," in t for t in texts):
            assert "fields" in msg and "quote texts that hold a comma" in msg, msg
        return
    assert not any("," in t for t in texts)
    assert sorted(data.train.texts + data.test.texts) == sorted(texts)


# ====================================================== any option, any value: exit 0 or one clean line
READ_ONLY_COMMANDS = [
    ["runs", "--status", "{v}"],
    ["runs", "--store", "{dir}/{v}"],
    ["show", "{id}", "--store", "{dir}/{v}"],
    ["show", "{v}"],
    ["report", "--out", "{dir}/{v}"],
    ["data", "--model", "tiny", "--data", "{dir}/{v}"],
    ["data", "--model", "tiny", "--data", "{dir}/{v}.csv"],
    ["data", "--model", "tiny", "--set", "{v}"],
    ["data", "--model", "tiny", "--set", "data.size={v}"],
    ["predict", "{id}", "--file", "{dir}/{v}"],
    ["predict", "{id}", "--device", "{v}", "fine"],
    ["export", "{id}", "--out", "/proc/{v}"],
    ["export", "{v}", "--out", "{dir}/x"],
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.sampled_from(READ_ONLY_COMMANDS), value=hostile)
def test_hostile_values_in_any_option_exit_0_or_give_one_clean_line(trained, tmp_path_factory, argv, value):
    st_, rid = trained
    assume(not value.startswith("-") and "\x00" not in value)  # an option name; argv cannot hold a NUL
    folder = tmp_path_factory.mktemp("hostile")
    args = [a.replace("{v}", value).replace("{id}", str(rid)).replace("{dir}", str(folder)) for a in argv]
    if "--store" not in args:
        args += ["--store", str(st_.root)]
    before = set(Path.cwd().iterdir())
    res = runner.invoke(app, args)
    assert set(Path.cwd().iterdir()) == before  # nothing made outside the test's folders
    assert res.exit_code in (0, 2), (args, res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output
    if res.exit_code == 2 and res.stderr.startswith("error: "):
        one_line_error(res)
    elif res.exit_code == 0:
        assert is_clean(res.stdout), repr(res.stdout)


# ============================================================================ the error path itself
def command_raising(exc: BaseException):
    from peft_tui.commands.common import handles_errors

    @handles_errors
    def command() -> None:
        raise exc

    app_ = typer.Typer()
    app_.command()(command)
    return runner.invoke(app_, [])


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer from None  # noqa: B904 - the context is kept, as export_run raises it
    except BaseException as e:
        return e


@SOME
@given(path=hostile, code=st.sampled_from([errno.ENOSPC, errno.EDQUOT, errno.EFBIG]), wrapped=st.booleans())
def test_a_full_disk_anywhere_in_the_chain_is_one_clean_line_and_exit_1(path, code, wrapped):
    inner = OSError(code, os.strerror(code), path)
    exc = chained(ConfigError(f"disk full at {path}: free some space"), inner) if wrapped else inner
    err = one_line_error(command_raising(exc), 1)
    assert "disk full" in err


@SOME
@given(exc=st.one_of(
    st.builds(lambda p: PermissionError(errno.EACCES, "Permission denied", p), hostile),
    st.builds(lambda p: OSError(errno.EIO, "Input/output error", p), hostile),
    st.builds(lambda m: sqlite3.OperationalError(m), hostile),
    st.builds(lambda m: sqlite3.DatabaseError(m), hostile),
))
def test_a_machine_failure_escaping_a_command_is_one_clean_line_and_exit_1(exc):
    one_line_error(command_raising(exc), 1)


@SOME
@given(message=hostile)
def test_a_config_error_is_one_clean_line_and_exit_2(message):
    from peft_tui.safe import safe_text

    assume(safe_text(message).strip())  # a message is never only control characters
    err = one_line_error(command_raising(ConfigError(message)), 2)
    assert "\x1b" not in err and "\r" not in err


def test_sigterm_in_a_command_is_an_interrupt_exit_143():
    import signal

    from peft_tui.commands.common import handles_errors

    @handles_errors
    def command() -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next line
        raise AssertionError("SIGTERM did not interrupt the command")

    app_ = typer.Typer()
    app_.command()(command)
    got = []
    previous = signal.signal(signal.SIGTERM, lambda *a: got.append(1))
    try:
        res = runner.invoke(app_, [])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == [] and res.exit_code == 143 and res.stderr.strip() == "interrupted (SIGTERM)", res.output


def test_a_read_only_store_is_refused_before_anything_for_a_command_that_writes(tmp_path, monkeypatch):
    from peft_tui.commands.common import open_store
    from peft_tui.engine.store import Store

    Store(tmp_path / "s").close()
    monkeypatch.setattr(Store, "_probe_writable", lambda self: "Read-only file system")
    assert open_store(str(tmp_path / "s")).readonly  # reading is fine
    with pytest.raises(ConfigError, match="is not writable \\(Read-only file system\\): pass another folder"):
        open_store(str(tmp_path / "s"), writable=True)


# ==================================================================== doctor: leftovers of cut writes
def test_doctor_reports_and_fixes_temporary_files_but_never_an_active_runs(tmp_path):
    from conftest import tiny_config

    from peft_tui.engine.store import Store

    st_ = Store(tmp_path / "s")
    done, active = st_.create_run(tiny_config(name="done")), st_.create_run(tiny_config(name="active"))
    with sqlite3.connect(st_.db_path) as db:
        db.execute("UPDATE runs SET status='failed' WHERE id=?", (done,))
    left = [st_.run_dir(done) / "result.json.tmp", st_.run_dir(done) / "checkpoint.tmp-4242" / "weights.safetensors",
            st_.run_dir(done) / "adapter" / "adapter_model.safetensors.tmp"]
    mine = st_.run_dir(active) / "checkpoint.tmp-77"
    for p in [*left, mine]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half")
    res = runner.invoke(app, ["doctor", "--store", str(st_.root), "--json"])
    checks = {c["check"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks[f"run {done}"]["status"] == "warn" and "3 temporary file(s)" in checks[f"run {done}"]["detail"]
    assert "--fix" in checks[f"run {done}"]["detail"]
    res = runner.invoke(app, ["doctor", "--store", str(st_.root), "--json", "--fix"])
    assert not any(p.exists() for p in left) and not (st_.run_dir(done) / "checkpoint.tmp-4242").exists()
    assert mine.exists()  # the active run may be writing it
    res = runner.invoke(app, ["doctor", "--store", str(st_.root), "--json"])
    assert not any("temporary" in c["detail"] for c in json.loads(res.stdout)["checks"])


def test_doctor_says_when_the_store_opens_read_only(tmp_path, monkeypatch):
    from peft_tui.engine.store import Store

    Store(tmp_path / "s").close()
    monkeypatch.setattr(Store, "_probe_writable", lambda self: "Read-only file system")
    res = runner.invoke(app, ["doctor", "--store", str(tmp_path / "s"), "--json"])
    checks = {c["check"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["store writes"]["status"] == "warn" and "Read-only file system" in checks["store writes"]["detail"]


# ====================================================================== --config files, any encoding
@SOME
@given(name=st.text(alphabet="abcdefgh-_", min_size=1, max_size=10).filter(lambda s: s[0].isalpha()),
       epochs=st.integers(1, 5), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"]),
       suffix=st.sampled_from([".json", ".toml"]), dup=st.booleans())
def test_a_config_file_in_any_encoding_loads_or_says_resave_as_utf8(tmp_path, name, epochs, encoding, suffix, dup):
    from peft_tui.config import config_from_file

    if suffix == ".json":
        text = f'{{"method": "head", "name": "{name}", "epochs": {epochs}' + (', "epochs": 9' if dup else "") + "}"
    else:
        text = f'method = "head"\nname = "{name}"\nepochs = {epochs}\n' + ("epochs = 9\n" if dup else "")
    path = tmp_path / f"c{suffix}"
    path.write_bytes(text.encode(encoding))
    try:
        cfg = config_from_file(str(path))
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(f"config file {str(path)!r}"), msg
        if encoding.startswith(("utf-16", "utf-32")):
            assert "re-save it as UTF-8" in msg
        else:
            assert dup and ("set twice" in msg or "could not be parsed" in msg), msg
        return
    assert encoding in ("utf-8", "utf-8-sig") and not dup
    assert (cfg.method, cfg.name, cfg.epochs) == ("head", name, epochs)


# ================================================================ one line composed of several values
@settings(max_examples=300, deadline=None)
@given(values=st.lists(hostile | st.sampled_from(["\x90", "\x9d", "\x1b]", "\x1bP", "\x9c", "\x07", "\x1b\\"]),
                       min_size=2, max_size=5))
def test_an_escape_opened_in_one_value_never_swallows_the_next(values):
    """`runs` and `show` compose lines such as "run 3 <name> status=<status>": a string sequence opened in
    one value (OSC, DCS, 8-bit forms) and closed in a later one must not hide the text between them."""
    from peft_tui.safe import safe_text

    line = " | ".join(f"key{i}=" + v for i, v in enumerate(values))
    shown = safe_text(line)
    for i in range(len(values)):
        assert f"key{i}=" in shown, (line, shown)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(["params", "method", "data", "name", "epochs", "lr", "seed", "device"]),
       value=st.one_of(st.lists(st.integers(), max_size=2), st.integers(-1, 1), st.just(0.0), st.booleans(),
                       st.just(""), st.just({}), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_a_config_file_value_of_the_wrong_type_is_refused_even_when_falsy(tmp_path_factory, key, value):
    """`"data": []` or `0` was read as "no data settings" and a default run started; every wrong type,
    falsy or not, is one line when the file is read and validated."""
    from peft_tui.config import config_from_file

    default = RunConfig().to_dict()[key]
    assume(value is not None and not isinstance(value, type(default)) if default is not None else False)
    assume(not (isinstance(default, float) and type(value) is int))  # an int where a float goes is fine
    path = tmp_path_factory.mktemp("types") / "c.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError) as err:
        validate_run(config_from_file(str(path)))
    assert "\n" not in str(err.value)

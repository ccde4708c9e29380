"""Hostile input through the front ends (issue 11, front-end part), generated with hypothesis.

Class 1  text from users and files is shown literally (never as markup), without escape sequences or
         control characters: `safe_text`, `runs`, `show`, `predict`, `data`, the progress bar, the
         dashboard's tables, details and log.
Class 2  `export --out` never writes inside the run store, through a link, or over a file.
Class 6  only the --trust-remote-code flag trusts remote code; with --json, stdout stays one JSON document.
Class 10 one line and exit 2, no traceback: long paths, bad `predict --file` inputs, ids beyond SQLite,
         damaged store rows and metric pages, read-only stores.
Class 11 unknown `runs --status` / `predict --device`; the text column equal to the label column.
"""

from __future__ import annotations

import json
import os
import sqlite3
import string
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.safe import safe_lines, safe_text

runner = CliRunner()
# a fixture shared by the examples of one test is fine: each example only reads it (or rewrites one row)
SHARED = [HealthCheck.function_scoped_fixture]

# ------------------------------------------------------------------------------------------ strategies
HOSTILE_TOKENS = [
    "[/x]", "[bold]", "[/]", "[link=https://e.example]", "[/link]", "[red on blue]", "\\[", "\\",
    "\x1b[2J", "\x1b[31m", "\x1b]8;;https://e.example\x1b\\", "\x1b]0;title\x07", "\x1bP1$r\x1b\\", "\x1b",
    "\r", "\b", "\t", "\n", "\r\n", "\x00", "\x07", "\x7f", "\x85", "\x9b2J", "\x9d0;t\x9c", "\u2028",
    "é", "漢字", "🙂", "ﬁ", "'", '"', "%s", "{0}", "a",
]
CONTROL = st.characters(min_codepoint=0, max_codepoint=0x9F)
ANY_CHAR = st.characters(codec="utf-8")  # every code point but the surrogates


def hostile(max_tokens: int = 6) -> st.SearchStrategy[str]:
    """Markup, escape sequences, control characters and unicode, mixed."""
    piece = st.one_of(st.sampled_from(HOSTILE_TOKENS), CONTROL, ANY_CHAR)
    return st.lists(piece, min_size=1, max_size=max_tokens).map("".join)


def short_hostile(limit: int = 24) -> st.SearchStrategy[str]:
    """Hostile text that still fits one table cell once cleaned, with something visible in it."""
    return hostile().filter(lambda s: 0 < len(safe_text(s).strip()) <= limit)


def is_control(c: str) -> bool:
    """A control or an invisible format character (bidi controls, zero-width joiners: category Cf)."""
    return unicodedata.category(c) in ("Cc", "Cf")


def assert_clean(output: str) -> None:
    """No escape sequence or control character reached the terminal (newlines between lines are ours)."""
    bad = sorted({repr(c) for c in output if is_control(c) and c != "\n"})
    assert not bad, f"control characters in the output: {bad}"


def visible(text: str) -> str:
    return "".join(text.split())


def assert_shown(value: str, output: str) -> None:
    """`value` appears as written (markup and all), minus control characters; layout spaces aside."""
    assert visible(safe_text(value)) in visible(output), (value, output)


def one_line_error(res, code: int = 2) -> str:
    """The command failed with `code`, one `error:` line on stderr, no traceback."""
    err = res.stderr.strip()
    assert res.exit_code == code, (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output, res.output
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert_clean(err)
    return err


# -------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store with one finished tiny `head` run (a few seconds on a CPU)."""
    from conftest import tiny_config

    from peft_tui.engine import trainer
    from peft_tui.engine.store import Store

    st_ = Store(tmp_path_factory.mktemp("trained") / "store")
    cfg = tiny_config(method="head", name="trained")
    rid = st_.create_run(cfg)
    trainer.execute(st_, rid, cfg, st_)
    assert st_.get(rid)["status"] == "done"
    return st_, rid


def set_row(store, run_id: int, **values) -> None:
    """Write values straight into a run's row, as a damaged or hostile store would hold them."""
    with sqlite3.connect(store.db_path) as db:
        for key, value in values.items():
            db.execute(f"UPDATE runs SET {key}=? WHERE id=?", (value, run_id))


# ============================================================================ class 1: shown literally
@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(text=st.one_of(hostile(12), st.text()), limit=st.one_of(st.none(), st.integers(1, 40)))
def test_safe_text_leaves_no_control_characters_and_keeps_the_rest(text, limit):
    shown = safe_text(text, limit)
    assert not any(is_control(c) or 0xD800 <= ord(c) <= 0xDFFF or c in "\u2028\u2029" for c in shown)
    assert limit is None or len(shown) <= limit
    assert safe_text(shown) == shown  # cleaning twice changes nothing
    if limit is None and not any(is_control(c) or c in "\u2028\u2029" for c in text):
        assert shown == text  # markup, brackets and unicode are kept as written


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(codec="utf-8") | st.just("\udcff")))
def test_safe_text_takes_file_names_that_are_not_utf8(text):
    shown = safe_text(text)
    shown.encode("utf-8")  # printable by any UTF-8 terminal: a lone surrogate became U+FFFD


def test_safe_text_removes_whole_escape_sequences():
    assert safe_text("a\x1b[2Jb\x1b]8;;https://e\x1b\\link\x1b]8;;\x1b\\ c\x1b]0;t\x07d") == "ablink cd"
    assert safe_text("x\r\ny\tz\n") == "x y z "
    assert safe_text("[bold]not bold[/bold] [/x]") == "[bold]not bold[/bold] [/x]"
    assert safe_lines("one\x1b[2J\ntwo\r") == "one\ntwo "


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=SHARED)
@given(name=short_hostile(), model=short_hostile(), error=short_hostile(), status=short_hostile(12))
def test_runs_and_show_print_stored_values_literally(tmp_path, name, model, error, status):
    """A store holding markup and escape sequences in names, models, errors and statuses: `runs` and
    `show` print them as written, minus control characters, and never fail."""
    from conftest import tiny_config

    from peft_tui.engine.store import Store

    root = tmp_path / "s"
    store = Store(root)
    rid = store.create_run(tiny_config())
    config = {**tiny_config().to_dict(), "name": name, "model": model}
    set_row(store, rid, name=name, model=model, error=error, status=status, config=json.dumps(config))
    res = runner.invoke(app, ["runs", "--store", str(root)])
    assert res.exit_code == 0, res.output
    assert_clean(res.stdout)
    for value in (name, model, error):
        assert_shown(value, res.stdout)
    res = runner.invoke(app, ["show", str(rid), "--store", str(root)])
    assert res.exit_code == 0, res.output
    assert_clean(res.stdout)
    assert_shown(f"error: {error}", res.stdout)
    assert_shown(f"status={status}", res.stdout)
    doc = json.loads(runner.invoke(app, ["show", str(rid), "--store", str(root), "--json"]).stdout)
    assert (doc["name"], doc["error"], doc["config"]["model"]) == (name, error, model)  # JSON keeps them exactly
    store.close()


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=SHARED)
@given(texts=st.lists(short_hostile(30), min_size=1, max_size=3))
def test_predict_shows_texts_literally(trained, texts):
    st_, rid = trained
    res = runner.invoke(app, ["predict", str(rid), "--store", str(st_.root), "--", *texts])  # a text may start with -
    assert res.exit_code == 0, res.output
    assert_clean(res.stdout)
    for t in texts:
        assert_shown(t, res.stdout)
    res = runner.invoke(app, ["predict", str(rid), "--store", str(st_.root), "--json", "--", *texts])
    assert [d["text"] for d in json.loads(res.stdout)["predictions"]] == texts


def _jsonl(path: Path, labels: list[str], texts: list[str]) -> None:
    rows = [{"text": f"example {i} {texts[i % len(texts)]}", "label": labels[i % 2]} for i in range(24)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


label_strategy = short_hostile(20).map(lambda s: "L" + s)  # a letter first: never a number


@settings(max_examples=15, deadline=None, suppress_health_check=SHARED)
@given(labels=st.lists(label_strategy, min_size=2, max_size=2, unique_by=safe_text),
       texts=st.lists(hostile(), min_size=1, max_size=3))
@pytest.mark.slow
def test_data_summary_shows_labels_literally(tmp_path, labels, texts):
    path = tmp_path / "d.jsonl"
    _jsonl(path, labels, texts)
    res = runner.invoke(app, ["data", "--data", str(path), "--model", "tiny"])
    assert res.exit_code == 0, res.output
    assert_clean(res.stdout)
    for label in labels:
        assert_shown(label, res.stdout)


def test_the_summary_before_a_run_shows_labels_literally(tmp_path, capsys):
    """commands/common.py print_data_summary: the same summary as `data`, before each run."""
    from peft_tui.commands.common import print_data_summary
    from peft_tui.config import DataConfig, RunConfig
    from peft_tui.engine.data import load_splits

    path = tmp_path / "d.jsonl"
    _jsonl(path, ["Lpos\x1b[2J[/x]", "Lneg\x1b]8;;https://e\x1b\\"], ["hi"])
    cfg = RunConfig(model="tiny", data=DataConfig(source=str(path)))
    print_data_summary(cfg, load_splits(cfg.data, cfg.seed))
    out = capsys.readouterr().out
    assert_clean(out)
    assert "Lpos[/x]" in out


@settings(max_examples=100, deadline=None)
@given(name=hostile(), error=hostile(), text=hostile())
def test_progress_bar_shows_names_and_messages_literally(name, error, text):
    """The progress sink renders on a real (forced) terminal: a run name or log text with markup or
    escape sequences neither breaks it nor reaches the terminal, and a failure is not printed here
    (the command prints it once, after the runs)."""
    import io

    from rich.console import Console

    from peft_tui import console
    from peft_tui.engine.events import LogMessage, RunFailed, RunStarted, StepLogged

    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=100, color_system="standard")
    saved, console.err = console.err, term
    try:
        with console.ProgressSink(enabled=True) as sink:
            sink(RunStarted(1, name, "lora", 10, 1, 10, 100, "cpu", "fp32", 100, 2))
            sink(StepLogged(1, 1, 0.1, 0.5, 1e-4, 10.0, 0.1))
            sink(LogMessage(1, "warning", text))
            sink(RunFailed(1, f"REASON {error}"))
    finally:
        console.err = saved
    output = buf.getvalue()
    # the terminal codes rich writes itself: SGR colours, cursor show/hide, erase line, cursor up
    ours = __import__("re").sub(r"\x1b\[(\d+(;\d+)*)?[mAK]|\x1b\[\?25[lh]", "", output)
    assert_clean(ours.replace("\r", ""))
    assert visible(safe_text(name))[:10] in visible(ours)
    assert visible(safe_text(text)) in visible(ours)
    assert "REASON" not in output


# --------------------------------------------------------------------------------------- the dashboard
def _screen_text(widget) -> str:
    """What the widget draws: the text of every segment on its lines."""
    from textual.geometry import Region

    strips = widget.render_lines(Region(0, 0, widget.size.width, widget.size.height))
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=SHARED)
@given(values=st.lists(short_hostile(16), min_size=6, max_size=6))
@example(values=["[/x]"] * 5 + ["[/x]/"])  # a folder name with a trailing slash, which pathlib drops
def test_dashboard_tables_details_and_log_show_values_literally(tmp_path_factory, values):
    """Rows with hostile names, methods, errors and statuses in a store: the queue table, the results
    table, the details screen and the log draw them as written, with no control characters."""
    import asyncio

    from conftest import tiny_config

    from peft_tui.config import DataConfig, RunConfig
    from peft_tui.engine.events import RunFinished
    from peft_tui.engine.store import Store
    from peft_tui.ui.app import create_app
    from peft_tui.ui.screens.details import DetailsScreen
    from peft_tui.ui.widgets.tables import QueueTable, ResultsTable

    root = tmp_path_factory.mktemp("dash") / "store"
    store = Store(root)
    failed, done = store.create_run(tiny_config()), store.create_run(tiny_config(method="head"))
    store(RunFinished(done, {"accuracy": 0.5, "f1": 0.5, "trainable_params": 10, "train_time_s": 1.0}))
    set_row(store, failed, name=values[0], method=values[1], error=values[2], status="failed")
    set_row(store, done, name=values[3], model=values[4])
    store.close()

    async def check() -> None:
        lab = create_app(store=root, template=RunConfig(model="tiny", data=DataConfig(size=200)),
                         devices=["cpu"], poll_s=0.2)
        async with lab.run_test(size=(160, 40)) as pilot:
            for _ in range(50):
                await pilot.pause(0.1)
                if lab.main.query_one("#queue", QueueTable).row_count == 2:
                    break
            table = lab.main.query_one("#queue", QueueTable)
            queue = _screen_text(table)
            assert_clean(queue)
            cells = {k: str(table.get_cell(str(failed), k)) for k in ("name", "method", "note")}
            assert cells == {"name": safe_text(values[0]), "method": safe_text(values[1]),
                             "note": safe_text(values[2], 120)}
            assert str(table.get_cell(str(done), "name")) == safe_text(values[3])
            for v in (values[0], values[1], values[3]):
                start = visible(safe_text(v))[:3]
                if start.isascii():  # narrow characters: the column shows at least these
                    assert start in visible(queue)
            lab.main.action_show_tab("tab-results")
            await pilot.pause(0.2)
            results = _screen_text(lab.main.query_one("#results", ResultsTable))
            assert_clean(results)
            lab.main.show_log("12:00:00", f"run 1 said {values[5]}", "yellow")
            folder = str(root / values[5])  # pathlib drops a trailing or doubled slash
            details = DetailsScreen(lab.state.runs[failed], folder)
            await lab.push_screen(details)
            await pilot.pause(0.2)
            body = _screen_text(details.query_one("#details-body"))
            assert_clean(body)
            for v in (values[0], values[2], folder[len(str(root)):]):
                assert_shown(v, body)
            assert_clean(_screen_text(lab.main.query_one("#lastlog")))
            assert_shown(values[5], _screen_text(lab.main.query_one("#lastlog")))

    asyncio.run(check())


# ======================================================================== class 2: export stays outside
@settings(max_examples=300, deadline=None, suppress_health_check=SHARED)
@given(parts=st.lists(st.sampled_from(["runs", "0001-trained", "..", ".", "sub", "new", "store", "x"]),
                      min_size=0, max_size=6),
       inside=st.booleans())
def test_export_folder_is_refused_inside_the_store(tmp_path_factory, parts, inside):
    """Any --out that resolves into the store (the store itself, a run folder, below it) is refused
    before anything is written; anything outside is accepted and not created yet."""
    from peft_tui.commands.artifacts import export_folder
    from peft_tui.errors import ConfigError

    # six levels deep, so that six ".." never leave this test's folder (an escape once met a file /tmp/x)
    base = tmp_path_factory.getbasetemp() / "export-prop" / "a" / "b" / "c" / "d" / "e" / "f"
    root = base / "store"
    (root / "runs" / "0001-trained").mkdir(parents=True, exist_ok=True)
    out = Path(root if inside else base, *parts)
    target = Path(os.path.normpath(out))
    should_refuse = target == root or root in target.parents
    try:
        export_folder(str(out), root)
    except ConfigError as e:
        assert should_refuse or target.is_file(), (out, str(e))
        if should_refuse:
            assert "inside the run store" in str(e)
    else:
        assert not should_refuse


def test_export_into_its_own_run_folder_is_refused_before_writing(trained, tmp_path):
    st_, rid = trained
    run_folder = st_.run_dir(rid)
    before = sorted(p for p in st_.root.rglob("*"))
    for out in (run_folder / "copy", run_folder, st_.root, st_.root / "exports"):
        err = one_line_error(runner.invoke(app, ["export", str(rid), "--out", str(out), "--store", str(st_.root)]))
        assert "inside the run store" in err
    link = tmp_path / "link-into-store"
    link.symlink_to(run_folder)
    err = one_line_error(runner.invoke(app, ["export", str(rid), "--out", str(link / "x"), "--store", str(st_.root)]))
    assert "inside the run store" in err
    assert sorted(p for p in st_.root.rglob("*")) == before  # nothing written anywhere in the store


def test_export_to_a_link_or_a_file_is_refused(trained, tmp_path):
    st_, rid = trained
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "link").symlink_to(outside)
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing-here")
    (tmp_path / "a-file").write_text("keep me")
    for out, needle in (("link", "is a symbolic link"), ("dangling", "is a symbolic link"), ("a-file", "is a file")):
        err = one_line_error(runner.invoke(app, ["export", str(rid), "--out", str(tmp_path / out),
                                                 "--store", str(st_.root)]))
        assert needle in err
    assert not any(outside.iterdir()) and (tmp_path / "a-file").read_text() == "keep me"
    assert not (tmp_path / "nothing-here").exists()


# ============================================================================= class 6: remote code
@pytest.fixture(scope="module")
def remote_code_model(tmp_path_factory):
    """A local model folder whose config class is the folder's own Python code; that code prints to
    stdout when it runs (as a prompt or a chatty model would)."""
    from transformers import BertConfig, BertForSequenceClassification

    from peft_tui.engine.models import load_tokenizer

    folder = tmp_path_factory.mktemp("remote") / "custom"
    tok = load_tokenizer("tiny")
    tok.save_pretrained(folder)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    (folder / "configuration_custom.py").write_text(
        'print("custom code ran: trust it? [y/N]")\n'
        "from transformers import BertConfig\n\n\n"
        "class CustomConfig(BertConfig):\n    model_type = 'custom-bert'\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom-bert", auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_with_the_flag_json_stdout_stays_one_document(remote_code_model):
    """commands/common.py handles_errors: with --json, what the model's code prints goes to stderr."""
    res = runner.invoke(app, ["data", "--model", str(remote_code_model), "--trust-remote-code", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["labels"] == ["negative", "positive"]  # the code's print went elsewhere


@settings(max_examples=10, deadline=None)
@given(value=st.sampled_from(["true", "True", "1", "yes", "on", "false"]))
def test_trust_remote_code_from_set_is_refused_in_one_line(value, tokenizer_loads):
    """config.py with_overrides: only the flag trusts remote code; --set asking for it is bad input."""
    before = len(tokenizer_loads)
    err = one_line_error(runner.invoke(app, ["data", "--model", "tiny", "--set", f"trust_remote_code={value}"]))
    assert "--trust-remote-code" in err
    assert len(tokenizer_loads) == before  # refused before any model file was read


@pytest.fixture(scope="module")
def tokenizer_loads():
    """Records the trust_remote_code each tokenizer load is given."""
    from peft_tui.engine import models

    seen: list = []
    real = models.load_tokenizer
    models.load_tokenizer = lambda name, trust_remote_code=False: (seen.append(trust_remote_code),
                                                                    real(name, False))[1]
    yield seen
    models.load_tokenizer = real


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    """A local model folder with no code of its own (the embedded models count tokens without the loader:
    engine/estimate/lengths.py)."""
    from transformers import BertConfig, BertForSequenceClassification

    from peft_tui.engine.models import load_tokenizer

    folder = tmp_path_factory.mktemp("plain") / "m"
    tok = load_tokenizer("tiny")
    tok.save_pretrained(folder)
    BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    return folder


def test_the_flag_reaches_the_loader(tokenizer_loads, plain_model):
    seen = tokenizer_loads
    before = len(seen)
    assert runner.invoke(app, ["data", "--model", str(plain_model), "--trust-remote-code", "--json"]).exit_code == 0
    assert len(seen) > before and seen[-1] is True
    before = len(seen)
    assert runner.invoke(app, ["data", "--model", str(plain_model), "--json"]).exit_code == 0
    assert len(seen) > before and seen[-1] is False


def test_trust_remote_code_from_a_config_file_is_ignored(tmp_path):
    """commands/options.py run_config: a --config file (or a `show --json` document) never trusts code."""
    (tmp_path / "c.json").write_text(json.dumps({"config": {"model": "tiny", "trust_remote_code": True}}))
    res = runner.invoke(app, ["run", "--config", str(tmp_path / "c.json"), "--set", "data.size=60",
                              "--store", "/dev/null"])  # stops at the store, after the config is read
    warning = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and "--trust-remote-code" in warning[0]


# ================================================================== class 10: one line, never a traceback
LONG_NAME = st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=256, max_size=4000)
PATH_OPTIONS_MINE = [
    ["predict", "1", "--file", "{p}"],
    ["export", "1", "--out", "{p}"],
    ["report", "--out", "{p}"],
]
PATH_OPTIONS_SHARED = [  # the store option and data loading: commands/common.py, engine
    ["runs", "--store", "{p}"],
    ["show", "1", "--store", "{p}"],
    ["data", "--model", "tiny", "--data", "{p}"],
    ["data", "--model", "{p}"],
    ["run", "--model", "tiny", "--config", "{p}", "--store", "unused-store"],
]


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=SHARED)
@given(args=st.sampled_from(PATH_OPTIONS_MINE), name=LONG_NAME, nested=st.booleans())
def test_a_very_long_path_is_one_line(trained, tmp_path, args, name, nested):
    st_, rid = trained
    path = f"{tmp_path}/{name}/x.txt" if nested else name
    argv = [{"{p}": path, "1": str(rid)}.get(a, a) for a in args]
    res = runner.invoke(app, [*argv, "--store", str(st_.root)])
    err = one_line_error(res)
    assert args[0] == "report" or len(err) < 400  # the path is cut (report's: commands/common.py write_output)


@settings(max_examples=20, deadline=None)
@given(args=st.sampled_from(PATH_OPTIONS_SHARED), name=LONG_NAME)
def test_a_very_long_store_or_data_path_is_one_line(args, name):
    err = one_line_error(runner.invoke(app, [name if a == "{p}" else a for a in args]))
    assert len(err) < 400  # the path is cut in the message
    assert not Path("unused-store").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=SHARED)
@given(data=st.binary(min_size=1, max_size=200))
def test_predict_file_that_is_not_utf8_text_is_one_line(tmp_path, data):
    """Bytes that are not UTF-8 text (or are UTF-16, or hold NULs): one line saying what to do."""
    from peft_tui.commands.artifacts import texts_from_file
    from peft_tui.config import RunConfig
    from peft_tui.errors import ConfigError

    path = tmp_path / "in.txt"
    path.write_bytes(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    try:
        texts, pairs = texts_from_file(str(path), RunConfig())
    except ConfigError as e:
        msg = str(e)
        assert len(msg.splitlines()) == 1 and "--file" in msg
        assert_clean(msg)
        assert text is None or "\x00" in text or not text.strip() or "UTF-16" in msg
        if text is None:
            assert "re-save it as UTF-8" in msg
    else:
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # only these break a line
        assert text is not None and texts == [ln.strip() for ln in lines if ln.strip()] and pairs is None


@settings(max_examples=60, deadline=None, suppress_health_check=SHARED)
@given(text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=2, max_size=80),
       encoding=st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"]))
def test_predict_file_in_utf16_says_resave_as_utf8(tmp_path, text, encoding):
    from peft_tui.commands.artifacts import texts_from_file
    from peft_tui.config import RunConfig
    from peft_tui.errors import ConfigError

    assume(encoding == "utf-16" or sum(c < "\x80" for c in text) >= 0.95 * len(text))  # no BOM: ASCII-ish text
    path = tmp_path / "in.txt"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(ConfigError, match="is UTF-16 text: re-save it as UTF-8"):
        texts_from_file(str(path), RunConfig())


@settings(max_examples=40, deadline=None, suppress_health_check=SHARED)
@given(blank=st.text(alphabet=" \t\r\n\u3000\x0b\x0c", max_size=30))
def test_predict_file_without_texts_is_one_line(tmp_path, blank):
    from peft_tui.commands.artifacts import texts_from_file
    from peft_tui.config import RunConfig
    from peft_tui.errors import ConfigError

    (tmp_path / "in.txt").write_text(blank)
    (tmp_path / "in.csv").write_text("text,label\n" + "".join(f'"{blank}",1\n' for _ in range(3)))
    with pytest.raises(ConfigError, match="has no texts"):
        texts_from_file(str(tmp_path / "in.txt"), RunConfig())
    with pytest.raises(ConfigError, match="has no texts|has a header but no rows"):
        texts_from_file(str(tmp_path / "in.csv"), RunConfig())


def test_predict_file_that_is_a_folder_a_fifo_or_missing_is_one_line_before_loading(trained, tmp_path, monkeypatch):
    from peft_tui.engine import artifacts

    st_, rid = trained
    monkeypatch.setattr(artifacts, "load_run", lambda *a, **k: pytest.fail("the model loaded first"))
    (tmp_path / "folder.txt").mkdir()
    os.mkfifo(tmp_path / "fifo.txt")
    for name, needle in (("folder.txt", "is a folder"), ("fifo.txt", "is not a regular file"),
                         ("missing.txt", "does not exist")):
        res = runner.invoke(app, ["predict", str(rid), "--file", str(tmp_path / name), "--store", str(st_.root)])
        assert needle in one_line_error(res)


def test_predict_file_with_lists_or_empty_cells(trained, tmp_path):
    st_, rid = trained
    (tmp_path / "lists.jsonl").write_text('{"text": ["a", "b"]}\n{"text": "c"}\n')
    res = runner.invoke(app, ["predict", str(rid), "--file", str(tmp_path / "lists.jsonl"), "--store", str(st_.root)])
    assert "holds lists or objects" in one_line_error(res)
    (tmp_path / "gaps.csv").write_text("text\nfine\n\"  \"\nalso fine\n")
    res = runner.invoke(app, ["predict", str(rid), "--file", str(tmp_path / "gaps.csv"), "--store", str(st_.root),
                              "--json"])
    assert res.exit_code == 0, res.output
    assert [d["text"] for d in json.loads(res.stdout)["predictions"]] == ["fine", "also fine"]
    assert "1 row(s)" in res.stderr and "left out" in res.stderr


@settings(max_examples=30, deadline=None, suppress_health_check=SHARED)
@given(run_id=st.one_of(st.integers(min_value=2**63), st.integers(min_value=2**31, max_value=2**63 - 1)),
       command=st.sampled_from([["show"], ["predict", "x"], ["export", "--out", "unused-folder"]]))
def test_an_id_beyond_the_store_is_one_line(trained, run_id, command):
    st_, _ = trained
    res = runner.invoke(app, [command[0], str(run_id), *command[1:], "--store", str(st_.root)])
    assert "does not exist" in one_line_error(res)


@settings(max_examples=25, deadline=None, suppress_health_check=SHARED)
@given(config=st.one_of(st.binary(max_size=60).map(lambda b: b.decode("latin-1")), hostile(), st.just("")),
       result=st.one_of(st.binary(max_size=60).map(lambda b: b.decode("latin-1")), st.just("[1, 2"),
                        st.sampled_from(["1", "[1, 2]", '"text"', "null", "true", "-1e999"])))
@pytest.mark.slow
def test_a_damaged_row_does_not_break_runs_or_show(tmp_path, config, result):
    """One row whose config / result is not JSON: `runs` still lists every row, `show` says what it
    cannot read and shows the rest."""
    from conftest import tiny_config

    from peft_tui.engine.store import Store

    root = tmp_path / "s"
    store = Store(root)
    _good, bad = store.create_run(tiny_config(name="good")), store.create_run(tiny_config(name="bad"))
    set_row(store, bad, config=config, result=result)
    res = runner.invoke(app, ["runs", "--store", str(root)])
    assert res.exit_code == 0, res.output
    assert "good" in res.stdout and "bad" in res.stdout
    res = runner.invoke(app, ["show", str(bad), "--store", str(root)])
    assert res.exit_code == 0, res.output
    assert_clean(res.stdout)
    doc = json.loads(runner.invoke(app, ["show", str(bad), "--store", str(root), "--json"]).stdout)
    assert doc["name"] == "bad" and isinstance(doc["problems"], list)
    store.close()


def _damage_metric_pages(db_path: Path) -> None:
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        roots = [r[0] for r in db.execute("SELECT rootpage FROM sqlite_master WHERE tbl_name='metrics'")]
    with open(db_path, "r+b") as fh:
        for page in roots:
            fh.seek((page - 1) * page_size)
            fh.write(b"\xde\xad" * (page_size // 2))


def test_show_on_damaged_metric_pages_says_so_and_shows_the_rest(trained, tmp_path):
    import shutil

    st_, rid = trained
    root = tmp_path / "copy"
    shutil.copytree(st_.root, root)
    _damage_metric_pages(root / "runs.db")
    res = runner.invoke(app, ["show", str(rid), "--store", str(root)])
    assert res.exit_code == 0, res.output
    assert "cannot read its metrics" in res.stdout and "malformed" in res.stdout
    assert "status=done" in res.stdout and "config:" in res.stdout
    assert runner.invoke(app, ["runs", "--store", str(root)]).exit_code == 0


@pytest.fixture()
def read_only_copy(trained, tmp_path, monkeypatch):
    """The trained store, copied and made read-only (as root, which writes anyway, the store is also
    told the folder is not writable)."""
    import shutil
    import stat

    from peft_tui.engine.store import Store

    st_, rid = trained
    root = tmp_path / "ro"
    shutil.copytree(st_.root, root)
    with sqlite3.connect(root / "runs.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    if os.geteuid() == 0:
        monkeypatch.setattr(Store, "_probe_writable", lambda self: "Permission denied")
    yield root, rid
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_read_only_commands_work_on_a_store_that_cannot_be_written(read_only_copy):
    root, rid = read_only_copy
    files = sorted(root.rglob("*"))
    for args in (["runs"], ["runs", "--json"], ["show", str(rid)], ["show", str(rid), "--json"], ["report"]):
        res = runner.invoke(app, [*args, "--store", str(root)])
        assert res.exit_code == 0, (args, res.output)
        assert "trained" in res.stdout
    assert sorted(root.rglob("*")) == files


@pytest.mark.parametrize("command", [["run"], ["compare", "--methods", "head"]])
def test_an_unusable_store_is_reported_before_the_data_summary(tmp_path, command):
    res = runner.invoke(app, [*command, "--model", "tiny", "--set", "data.size=60", "--store", "/dev/null"])
    assert "is a file" in one_line_error(res)
    assert "data:" not in res.output


# ============================================================= class 11: one line instead of silence
@settings(max_examples=50, deadline=None, suppress_health_check=SHARED)
@given(status=hostile(4))
def test_unknown_status_for_runs_is_one_line(trained, status):
    from peft_tui.commands.runs import STATUSES

    assume(status not in STATUSES and not status.startswith("-"))
    st_, _ = trained
    err = one_line_error(runner.invoke(app, ["runs", "--status", status, "--store", str(st_.root)]))
    assert "unknown status" in err and "queued, running, done" in err


@settings(max_examples=50, deadline=None, suppress_health_check=SHARED)
@given(device=hostile(4))
def test_unknown_device_for_predict_is_one_line(trained, device):
    import re

    assume(not re.fullmatch(r"auto|cpu|cuda|cuda:\d+", device) and not device.startswith("-"))
    st_, rid = trained
    err = one_line_error(runner.invoke(app, ["predict", str(rid), "hi", "--device", device, "--store", str(st_.root)]))
    assert "unknown device" in err and "use auto, cpu, cuda or cuda:N" in err


def test_failures_are_not_printed_by_the_progress_bar():
    """The reason a run failed is printed once, by the command, after the runs (commands/common.py)."""
    import io

    from rich.console import Console

    from peft_tui import console
    from peft_tui.engine.events import RunFailed, RunStarted

    buf = io.StringIO()
    saved, console.err = console.err, Console(file=buf, width=60)
    try:
        with console.ProgressSink(enabled=False) as sink:
            sink(RunStarted(1, "r", "lora", 10, 1, 10, 100, "cpu", "fp32", 100, 2))
            sink(RunFailed(1, "a reason " * 20))
    finally:
        console.err = saved
    assert "a reason" not in buf.getvalue()


@settings(max_examples=20, deadline=None)
@given(col=st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12))
def test_text_column_equal_to_the_label_column_is_one_line(col):
    """config.py DataConfig.validate: the label would leak into the text."""
    err = one_line_error(runner.invoke(app, ["data", "--model", "tiny", "--text-col", col, "--label-col", col]))
    assert "--text-col" in err and "--label-col" in err


@settings(max_examples=20, deadline=None, suppress_health_check=SHARED)
@given(seed=st.one_of(st.integers(min_value=2**63), st.integers(max_value=-(2**63) - 1)),
       key=st.sampled_from(["seed", "epochs", "batch_size", "eval_every", "patience"]))
def test_ints_beyond_64_bits_are_refused_before_training(tmp_path, seed, key):
    """config.py RunConfig.validate: a seed or count SQLite or torch cannot hold is caught up front."""
    res = runner.invoke(app, ["run", "--model", "tiny", "--set", f"{key}={seed}", "--store", str(tmp_path / "s")])
    one_line_error(res)
    assert not (tmp_path / "s").exists()


@settings(max_examples=20, deadline=None)
@given(depth=st.integers(2_000, 200_000), opener=st.sampled_from(['{"a": ', "[", '{"params": {"a": ']))
def test_a_config_nested_very_deeply_is_one_line(tmp_path_factory, depth, opener):
    """config.py config_from_file: RecursionError becomes one line."""
    closer = {"{": "}", "[": "]"}
    path = tmp_path_factory.mktemp("deep") / "c.json"
    tail = "".join(closer[c] for c in opener if c in closer)
    path.write_text(opener * depth + "1" + tail[::-1] * depth)
    one_line_error(runner.invoke(app, ["run", "--config", str(path), "--store", str(path.parent / "s")]))


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(["params", "method", "data", "name", "epochs"]),
       value=st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.floats(allow_nan=False), st.booleans(),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_a_config_value_of_the_wrong_type_is_one_line(tmp_path_factory, key, value):
    """config.py RunConfig.from_dict: every field's type checked when the file is read."""
    from peft_tui.config import RunConfig

    default = RunConfig().to_dict()[key]
    assume(type(value) is not type(default) and value is not None)
    path = tmp_path_factory.mktemp("types") / "c.json"
    path.write_text(json.dumps({key: value}))
    one_line_error(runner.invoke(app, ["run", "--config", str(path), "--store", str(path.parent / "s")]))


def test_compare_csv_into_a_folder_or_a_missing_folder_is_refused_before_training(tmp_path):
    """commands/train.py compare: --csv checked before any run is queued."""
    for csv in (tmp_path, tmp_path / "missing" / "t.csv"):
        res = runner.invoke(app, ["compare", "--methods", "head", "--model", "tiny", "--set", "data.size=60",
                                  "--csv", str(csv), "--store", str(tmp_path / "s")])
        one_line_error(res)
        assert not (tmp_path / "s").exists()

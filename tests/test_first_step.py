"""The command's fixed costs before a run's first step (issue 19, item 3): queue first, describe after, and a
command on a store that has seen the model, method and data before checks and estimates without torch
(the model check, the token counts and the model's shape are kept in the store's cache)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from peft_tui.cli import app
from peft_tui.engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "tiny", "--set", "data.size=120", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]


def test_the_run_is_queued_before_the_summary_is_printed(tmp_path, monkeypatch):
    from peft_tui.commands import train

    store = tmp_path / "s"
    seen: list[list[str]] = []
    real = train.print_data_summary

    def summary(*args, **kwargs):
        seen.append([r["status"] for r in Store(store).list()])  # what the store holds as it prints
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "print_data_summary", summary)
    res = CliRunner().invoke(app, ["run", "--method", "lora", *TINY, "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert len(seen) == 1 and len(seen[0]) == 1  # the one run was in the store when the summary printed
    assert seen[0][0] in ("queued", "running", "done")
    out = res.stdout
    assert out.index("data: synthetic(size=120)") < out.index("stored in")  # then the table
    assert "tokens: p50" in out


def test_compare_and_sweep_queue_every_run_before_the_summary(tmp_path, monkeypatch):
    from peft_tui.commands import train

    store = tmp_path / "s"
    seen: list[int] = []
    real = train.print_data_summary

    def summary(*args, **kwargs):
        seen.append(len(Store(store).list()))
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "print_data_summary", summary)
    res = CliRunner().invoke(app, ["compare", "--methods", "lora,bitfit", *TINY, "--store", str(store)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["sweep", "--method", "lora", "--grid", "r=1,2", *TINY, "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert seen == [3, 5]  # lora, bitfit and the baseline; then the sweep's two runs on top
    assert res.stdout.index("data: synthetic") < res.stdout.index("sweep: 2 run(s)")


def _prepare_check_summary(store: Path, cfg):
    from peft_tui.commands.common import data_summary
    from peft_tui.engine.submit import check, prepare

    splits = prepare([cfg], cache_dir=store / "cache")
    st = Store(store)
    [planned] = check(st, [cfg], data=splits)
    return planned, data_summary(cfg, splits, st.cache_dir)


def test_a_warm_store_checks_estimates_and_summarises_from_its_cache(tmp_path, monkeypatch):
    """The second time, neither the model check, nor the tokenizer of transformers, nor the skeleton on
    the meta device is used, and the estimate and the summary are the same."""
    from peft_tui.engine import models, trainer
    from peft_tui.engine.estimate import shape

    store = tmp_path / "s"
    cfg = tiny_config(method="lora")
    first, doc = _prepare_check_summary(store, cfg)
    calls: list[str] = []
    for mod, name in [(trainer, "preflight"), (shape, "model_shape"), (models, "load_tokenizer"),
                      (models, "check_model_files")]:
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1])
    again, doc2 = _prepare_check_summary(store, cfg)
    assert calls == []
    assert again.estimate == first.estimate and doc2 == doc
    assert first.estimate["peak_mb"] > 0 and doc["tokens"]["max"] > 0
    # a method not estimated before builds its shape once, then it is kept too
    bitfit = tiny_config(method="bitfit")
    _prepare_check_summary(store, bitfit)
    assert calls.count("model_shape") == 1 and calls.count("preflight") == 1
    calls.clear()
    _prepare_check_summary(store, bitfit)
    assert calls == []


def test_the_cached_estimate_equals_the_one_built_from_the_model_config(tmp_path):
    from peft_tui.engine.data import load_splits
    from peft_tui.engine.estimate import estimate, inputs_for

    cfg = tiny_config(method="lora")
    data = load_splits(cfg.data, cfg.seed)
    real_cfg, lengths = inputs_for(cfg, data)
    facts, lengths2 = inputs_for(cfg, data, cache_dir=tmp_path / "cache")
    assert lengths2 == lengths and type(facts).__name__ == "ModelFacts"
    built = estimate(cfg, real_cfg, lengths, "cpu").to_dict()
    assert estimate(cfg, facts, lengths, "cpu").to_dict() == built  # builds and keeps the shape
    assert estimate(cfg, facts, lengths, "cpu").to_dict() == built  # reads it back
    assert len(list((tmp_path / "cache").glob("shape-*.json"))) == 1


def test_counting_without_transformers_matches_the_tokenizer():
    from peft_tui.engine.data.summary import _token_lengths
    from peft_tui.engine.estimate.lengths import RawCounter, counting_tokenizer
    from peft_tui.engine.models import load_tokenizer

    texts = ["Wall St. Bears Claw Back Into the Black (Reuters)", "", "naïve café — 東京 😀 " * 40,
             "a\tb\nc", "UPPER lower MiXeD 123,456.78"]
    pairs = ["second sentence", "x", "", "y y y", "Ölçü"]
    raw = counting_tokenizer("minilm")
    assert isinstance(raw, RawCounter)
    hf = load_tokenizer("minilm")
    assert _token_lengths(raw, texts, None) == _token_lengths(hf, texts, None)
    assert _token_lengths(raw, texts, pairs) == _token_lengths(hf, texts, pairs)


def test_a_warm_store_refuses_a_run_over_its_time_limit_before_queueing(tmp_path):
    store = tmp_path / "s"
    res = CliRunner().invoke(app, ["run", "--method", "lora", *TINY, "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert list((store / "cache").glob("shape-*.json")) and list((store / "cache").glob("checked-*"))
    res = CliRunner().invoke(app, ["run", "--method", "lora", *TINY, "--max-time", "0.001", "--store", str(store)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "above its 0 s limit" in lines[0]
    assert len(Store(store).list()) == 1  # only the first run: nothing queued


@pytest.mark.parametrize("change", ["config", "weights"])
def test_a_changed_model_folder_is_checked_again(tmp_path, change):
    """The model check kept in the cache names the files' sizes and times: a folder changed since is
    checked again, and a broken one refused before queueing."""
    import shutil

    from peft_tui.engine.models import minilm_path
    from peft_tui.engine.submit import prepare
    from peft_tui.errors import ConfigError

    folder = tmp_path / "m"
    shutil.copytree(minilm_path(), folder)
    store = tmp_path / "s"
    cfg = tiny_config(model=str(folder), method="lora")
    _prepare_check_summary(store, cfg)
    assert len(list((store / "cache").glob("checked-*"))) == 1
    if change == "config":
        doc = json.loads((folder / "config.json").read_text())
        doc["hidden_size"] = 768  # 12 heads still divide it: the skeleton builds, its shapes differ
        (folder / "config.json").write_text(json.dumps(doc))
    else:
        (folder / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ConfigError):
        prepare([cfg], cache_dir=store / "cache")


def test_a_warm_command_imports_no_torch_before_it_queues(tmp_path):
    """In a fresh process: on a store that has seen this model, method and data, `prepare`, the estimate
    and the summary import neither torch nor transformers."""
    store = tmp_path / "s"
    cfg = tiny_config(method="lora")
    _prepare_check_summary(store, cfg)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from peft_tui.config import DataConfig, RunConfig\n"
        "from peft_tui.commands.common import data_summary\n"
        "from peft_tui.engine.store import Store\n"
        "from peft_tui.engine.submit import check, prepare\n"
        "cfg = RunConfig(model='tiny', method='lora', epochs=1, batch_size=16, device='cpu', data=DataConfig(size=120))\n"
        f"root = Path({str(store)!r})\n"
        "splits = prepare([cfg], cache_dir=root / 'cache')\n"
        "[p] = check(Store(root), [cfg], data=splits)\n"
        "doc = data_summary(cfg, splits, root / 'cache')\n"
        "print(p.estimate['peak_mb'] > 0, doc['tokens']['max'] > 0, "
        "sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True True []"

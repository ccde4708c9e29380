"""The fixed costs a command and a run pay before the first step: the data summary's token lengths are
the estimate's (tokenised once per command), a worker keeps the model architecture it loaded for its
next runs, and a run logs what its start-up cost."""

from __future__ import annotations

import sys

import pytest
from conftest import tiny_config

from peft_tui.config import DataConfig
from peft_tui.engine.data import summary


def test_summary_and_estimate_tokenise_once(tiny_tokenizer, monkeypatch):
    from peft_tui.engine import estimate
    from peft_tui.engine.data import load_splits

    calls = []
    inner = summary._token_lengths
    monkeypatch.setattr(summary, "_token_lengths", lambda tok, texts, pairs: calls.append(len(texts)) or
                        inner(tok, texts, pairs))
    monkeypatch.setattr(summary, "_LENGTHS", {})
    cfg = tiny_config(data=DataConfig(size=90))
    data = load_splits(cfg.data, cfg.seed)
    doc = summary.summarize(data, tiny_tokenizer, cfg.max_length)
    assert calls == [len(data.train), len(data.val), len(data.test)]
    _, lengths = estimate.inputs_for(cfg, data)  # another tokenizer object, same tokenizer: no tokenising
    assert calls == [len(data.train), len(data.val), len(data.test)]
    assert lengths == inner(tiny_tokenizer, data.train.texts, None) and doc["tokens"]["max"] >= max(lengths)
    changed = [t + " more words" for t in data.train.texts]
    assert summary.token_lengths(tiny_tokenizer, changed) == inner(tiny_tokenizer, changed, None)
    assert len(calls) == 4
    got = summary.token_lengths(tiny_tokenizer, changed)
    got.append(-1)  # a caller's change never reaches the remembered list
    assert summary.token_lengths(tiny_tokenizer, changed) == inner(tiny_tokenizer, changed, None)


@pytest.mark.slow  # a fresh interpreter importing transformers
def test_warm_imports_the_architecture_and_never_raises():
    import subprocess

    code = ("import sys\nfrom peft_tui.engine.models import warm\nwarm('minilm')\n"
            "print('transformers.models.bert.modeling_bert' in sys.modules)\nwarm('/no/such/model')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["True"], out.stderr[-500:]


@pytest.mark.slow
def test_a_run_logs_its_start_up(store):
    import re

    from peft_tui.engine.trainer import execute

    cfg = tiny_config(head_init="random", data=DataConfig(size=40))
    rid = store.create_run(cfg)
    events: list = []
    assert execute(store, rid, cfg, lambda e: events.append(e) or store(e)) is not None
    (line,) = [e.text for e in events if type(e).__name__ == "LogMessage" and e.text.startswith("ready in")]
    parts = [float(x) for x in re.findall(r"([\d.]+)s\b", line)]
    assert len(parts) == 5 and abs(parts[0] - sum(parts[1:])) < 0.02

"""Probe feature cache: the methods whose wrapped model starts as the base model share one encoding of the
probe's texts (a compare encodes them once), results are the same as without the cache, damaged files are
rebuilt, concurrent writers never leave a half file, and the key follows the weights and the ids."""

from __future__ import annotations

import threading

import pytest
from conftest import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_tui.config import DataConfig
from peft_tui.engine import probe
from peft_tui.engine.data import featcache


@pytest.fixture()
def counted(monkeypatch):
    """Texts run through the encoder, by call."""
    calls: list[int] = []
    encode = probe.encode

    def counting(model, layer, ids, *args, **kw):
        calls.append(len(ids))
        return encode(model, layer, ids, *args, **kw)

    monkeypatch.setattr(probe, "encode", counting)
    return calls


def _run(store, **kw):
    from peft_tui.engine.trainer import execute

    cfg = tiny_config(data=DataConfig(size=120), head_init="probe", pooling="mean", **kw)
    events: list = []

    def sink(e):
        events.append(e)
        store(e)

    result = execute(store, store.create_run(cfg), cfg, sink)
    assert result is not None
    return result, [e.text for e in events if type(e).__name__ == "LogMessage"]


@pytest.mark.slow  # seven tiny runs through execute
def test_a_comparison_encodes_the_probe_texts_once(store, counted):
    first, _ = _run(store, method="lora")
    n = first.sizes["train"]  # LP-FT encodes the training texts alone (weight decay by cross-validation)
    assert sum(counted) == n and first.extra["head_init_texts_encoded"] == n
    assert len(list(store.cache_dir.glob("feat-*.safetensors"))) == 1  # train

    again, logs = _run(store, method="lora")  # the same run again: features from the cache, same result
    assert sum(counted) == n and again.extra["head_init_texts_cached"] == n
    assert again.extra["head_init_texts_encoded"] == 0
    assert any(f"features of {n} texts read from the cache" in t for t in logs)
    for key in ("accuracy", "test_loss", "val_accuracy", "f1"):
        assert getattr(again, key) == getattr(first, key)
    assert again.extra["head_init_weight_decay"] == first.extra["head_init_weight_decay"]

    for method in ("full", "dora", "ia3", "adapters", "bitfit"):  # start as the base model: no encoding
        r, _ = _run(store, method=method)
        assert r.extra["head_init_texts_cached"] == n, method
    assert sum(counted) == n

    head, _ = _run(store, method="head")  # the probe itself: train cached, val and test encoded
    assert head.extra["texts_cached"] == n and head.extra["texts_encoded"] == head.sizes["val"] + head.sizes["test"]
    assert sum(counted) == n + head.sizes["val"] + head.sizes["test"]

    prompt, _ = _run(store, method="prompt")  # virtual tokens change the features: its own encoding
    assert prompt.extra["head_init_texts_encoded"] == n and prompt.extra["head_init_texts_cached"] == 0


@pytest.mark.slow
def test_another_seed_or_max_length_is_another_key(store, counted):
    first, _ = _run(store, method="lora")
    n = first.extra["head_init_texts_encoded"]
    _run(store, method="lora", seed=7)  # the tiny model is random: another seed, other weights
    _run(store, method="lora", max_length=16)  # other ids
    assert sum(counted) == 3 * n


def test_features_are_read_back_for_another_sharing_method(tmp_path, counted):
    """The fast path of the above: probe.features through the cache, without a run."""
    import torch

    from peft_tui.engine.methods import get_method
    from peft_tui.engine.models import build_model, load_tokenizer

    tok = load_tokenizer("tiny")
    ids = {"train": tok([f"text {i} " + "w " * (i % 5) for i in range(30)])["input_ids"],
           "val": tok(["short", "a longer one here"])["input_ids"]}

    def feats(name):
        cfg = tiny_config(method=name, pooling="mean")
        method = get_method(name)
        model = build_model(cfg, method, method.resolve({}), 2, "cpu", fingerprint=True)
        return probe.features(model, probe.final_linear(model), ids, 0, "cpu", "fp32", threading.Event(),
                              cache_dir=tmp_path, shared=name in probe.SHARES_BASE_FEATURES)

    first, s1 = feats("lora")
    second, s2 = feats("ia3")
    assert (s1.encoded, s1.cached, s2.encoded, s2.cached) == (32, 0, 0, 32) and counted == [30, 2]
    assert all(torch.equal(first[k], second[k]) for k in ids)
    _, s3 = feats("bitfit")
    assert (s3.encoded, s3.cached) == (0, 32) and counted == [30, 2]


@pytest.mark.slow
def test_shared_methods_give_the_base_features_exactly():
    """What makes sharing sound: at the start each wrapped model gives bit-identical features, and the
    weights fingerprint is the same."""
    import torch

    from peft_tui.engine.methods import get_method
    from peft_tui.engine.models import FINGERPRINT_ATTR, build_model, load_tokenizer

    ids = load_tokenizer("tiny")([f"text {i} " + "word " * (i % 9) for i in range(40)])["input_ids"]
    feats, prints = {}, {}
    for name in sorted(probe.SHARES_BASE_FEATURES):
        cfg = tiny_config(method=name, pooling="mean")
        method = get_method(name)
        model = build_model(cfg, method, method.resolve({}), 3, "cpu", fingerprint=True)
        prints[name] = getattr(model, FINGERPRINT_ATTR)
        feats[name] = probe.encode(model, probe.final_linear(model), ids, 0, probe.encode_limits("cpu")[0], "cpu",
                                   __import__("contextlib").nullcontext, threading.Event())
    assert len(set(prints.values())) == 1
    for name, x in feats.items():
        assert torch.equal(x, feats["full"]), name


def test_fingerprint_ignores_the_fitted_layer_and_sees_the_rest():
    import torch

    from peft_tui.engine.models import load_model

    model = load_model("tiny", 2, 0)
    fp = featcache.weights_fingerprint(model)
    with torch.no_grad():
        model.classifier.weight.normal_()  # the layer the probe fits: not an input of the features
        assert featcache.weights_fingerprint(model) == fp
        model.bert.encoder.layer[1].output.dense.weight[3, 5] += 1e-3  # one weight of the body
        assert featcache.weights_fingerprint(model) != fp


@pytest.mark.slow
def test_damaged_file_is_rebuilt_with_the_same_result(store, counted):
    first, _ = _run(store, method="lora")
    n = sum(counted)
    for path in store.cache_dir.glob("feat-*.safetensors"):
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # truncated
    again, _ = _run(store, method="lora")
    assert sum(counted) == 2 * n and again.extra["head_init_texts_encoded"] == n
    assert again.accuracy == first.accuracy and again.test_loss == first.test_loss
    third, _ = _run(store, method="lora")  # rewritten whole: read back
    assert third.extra["head_init_texts_cached"] == n and sum(counted) == 2 * n


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=400), keep=st.integers(0, 400))
def test_any_damaged_bytes_are_a_miss_never_an_error(tmp_path, junk, keep):
    import torch

    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    path = tmp_path / "feat-x.safetensors"
    featcache.save(path, "k", x)
    good = path.read_bytes()
    path.write_bytes(good[:keep] + junk)
    got = featcache.load(path, "k", 4)
    assert got is None or torch.equal(got, x)
    assert featcache.load(path, "other key", 4) is None and featcache.load(path, "k", 5) is None


def test_a_change_to_any_byte_of_a_features_file_is_a_miss_or_the_same_features(tmp_path):
    """Every byte changed in turn (the failing case hypothesis found: the last float's bytes zeroed, the
    header intact, read back as features before the payload carried a checksum)."""
    import torch

    x = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    path = tmp_path / "feat-x.safetensors"
    featcache.save(path, "k", x)
    good = path.read_bytes()
    misses = 0
    for i in range(len(good)):
        path.write_bytes(good[:i] + bytes([good[i] ^ 0x04]) + good[i + 1:])
        got = featcache.load(path, "k", 4)
        assert got is None or torch.equal(got, x), i
        misses += got is None
    payload = x.numel() * 4
    assert misses >= payload  # at least every change to the features themselves
    path.write_bytes(good)
    assert torch.equal(featcache.load(path, "k", 4), x)


def test_concurrent_writers_leave_a_whole_file(tmp_path):
    """Several writers of the same key and readers at once: a reader gets the tensor or a miss, never a
    half file, and no temp file is left."""
    import torch

    x = torch.randn(300, 64)
    path = featcache.path_for(tmp_path, "k" * 64)
    seen, errors = [], []

    def write():
        for _ in range(15):
            featcache.save(path, "k" * 64, x)

    def read():
        for _ in range(60):
            got = featcache.load(path, "k" * 64, 300)
            if got is not None:
                seen.append(torch.equal(got, x))

    threads = [threading.Thread(target=write) for _ in range(3)] + [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and all(seen) and featcache.load(path, "k" * 64, 300) is not None
    assert not list(tmp_path.glob("*.tmp"))


def test_read_only_cache_runs_without_it(tmp_path):
    import torch

    x = torch.ones(2, 2)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    calls = []
    got, hit = featcache.cached_features(blocked / "cache", "fp", "ctx", [[1, 2], [3]], lambda: calls.append(1) or x)
    assert torch.equal(got, x) and not hit and calls == [1]

"""Tokenisation cache: same ids as tokenising, one file per (tokenizer, max_length, content), damaged
files ignored, and a run in a store fills <store>/cache."""

from __future__ import annotations

import threading

import pytest
from conftest import tiny_config


def test_cache_returns_the_same_ids_and_keys_on_content(tmp_path, tiny_tokenizer):
    from peft_tui.engine.batching import tokenize
    from peft_tui.engine.data.tokcache import cached_tokenize, tokenizer_fingerprint

    fp = tokenizer_fingerprint(tiny_tokenizer)
    texts = ["the screen is great", "terrible keyboard", "a much longer sentence " * 20]
    calls = []

    def counting(*a):
        calls.append(1)
        return tokenize(*a)

    first = cached_tokenize(tmp_path, fp, counting, tiny_tokenizer, texts, 16)
    again = cached_tokenize(tmp_path, fp, counting, tiny_tokenizer, texts, 16)
    assert first == again == tokenize(tiny_tokenizer, texts, 16)
    assert len(calls) == 1  # the second call read the cache
    cached_tokenize(tmp_path, fp, counting, tiny_tokenizer, texts, 32)  # another max_length
    cached_tokenize(tmp_path, fp, counting, tiny_tokenizer, texts[:2] + ["changed"], 16)  # other content
    pairs = cached_tokenize(tmp_path, fp, counting, tiny_tokenizer, texts, 16, ["x", "y", "z"])
    assert len(calls) == 4 and pairs == tokenize(tiny_tokenizer, texts, 16, ["x", "y", "z"])
    assert len(list(tmp_path.glob("tok-*.safetensors"))) == 4
    assert not list(tmp_path.glob("*.tmp"))


def test_damaged_cache_file_is_a_miss(tmp_path, tiny_tokenizer):
    from peft_tui.engine.batching import tokenize
    from peft_tui.engine.data.tokcache import cached_tokenize, tokenizer_fingerprint

    fp = tokenizer_fingerprint(tiny_tokenizer)
    texts = ["one", "two three"]
    cached_tokenize(tmp_path, fp, tokenize, tiny_tokenizer, texts, 8)
    (path,) = tmp_path.glob("tok-*.safetensors")
    path.write_bytes(b"garbage")
    assert cached_tokenize(tmp_path, fp, tokenize, tiny_tokenizer, texts, 8) == tokenize(tiny_tokenizer, texts, 8)


def test_a_change_to_any_byte_of_a_cache_file_is_a_miss_never_other_ids(tmp_path, tiny_tokenizer):
    """Every byte of the file, header and payload, changed in turn: the cache returns the right ids (a miss,
    tokenised again) every time, never ids read from a damaged payload."""
    from peft_tui.engine.batching import tokenize
    from peft_tui.engine.data.tokcache import cached_tokenize, tokenizer_fingerprint

    fp = tokenizer_fingerprint(tiny_tokenizer)
    texts = ["one", "two three", "four five six seven"]
    want = tokenize(tiny_tokenizer, texts, 8)
    cached_tokenize(tmp_path, fp, tokenize, tiny_tokenizer, texts, 8)
    (path,) = tmp_path.glob("tok-*.safetensors")
    good = path.read_bytes()
    calls = []

    def counting(*a):
        calls.append(1)
        return tokenize(*a)

    for i in range(len(good)):
        for flip in (0x01, 0x80):
            path.write_bytes(good[:i] + bytes([good[i] ^ flip]) + good[i + 1:])
            assert cached_tokenize(tmp_path, fp, counting, tiny_tokenizer, texts, 8) == want, (i, flip)
    path.write_bytes(good)
    n = len(calls)
    assert cached_tokenize(tmp_path, fp, counting, tiny_tokenizer, texts, 8) == want and len(calls) == n  # a hit
    assert n > len(good)  # most changed files were misses (a flip inside JSON padding may still read whole)


@pytest.mark.slow
def test_run_fills_the_store_cache(store):
    from peft_tui.engine.trainer import execute

    cfg = tiny_config()
    r1 = execute(store, store.create_run(cfg), cfg, store, threading.Event())
    files = sorted((store.root / "cache").glob("tok-*.safetensors"))
    assert len(files) == 3  # train, val, test
    r2 = execute(store, store.create_run(cfg), cfg, store, threading.Event())
    assert sorted((store.root / "cache").glob("tok-*.safetensors")) == files
    assert r1.accuracy == r2.accuracy and r1.steps == r2.steps

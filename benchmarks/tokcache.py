"""Tokenisation cache: tokenising a data set (AG News from ../shared/datasets when present, else 7,600
synthetic rows) at max_length 128 against reading the same ids back from the store's cache
(`<store>/cache/tok-*.safetensors`, what every run after the first on the same data does).
Prints both times (best of 3) and the ratio.

Usage: python benchmarks/tokcache.py
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
AG = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "ag_news" / "ag_news_test.csv"


def main() -> None:
    from peft_tui.engine import models
    from peft_tui.engine.batching import tokenize
    from peft_tui.engine.data import synthetic
    from peft_tui.engine.data.tokcache import cached_tokenize, tokenizer_fingerprint

    if AG.exists():
        with open(AG, newline="") as f:
            texts, name = [r["text"] for r in csv.DictReader(f)], "AG News test"
    else:
        texts, name = synthetic(7600, 0)[0], "synthetic"
    tok = models.load_tokenizer("minilm")
    cache = Path(tempfile.mkdtemp(prefix="bench-tok-"))
    print(f"load average {os.getloadavg()[0]:.2f}; {name}: {len(texts):,} texts, max_length 128")
    cold, warm = [], []
    for _i in range(3):
        t = time.perf_counter()
        ids = tokenize(tok, texts, 128)
        cold.append(time.perf_counter() - t)
    t = time.perf_counter()
    fp = tokenizer_fingerprint(tok)
    first = cached_tokenize(cache / "c", fp, tokenize, tok, texts, 128)  # fills the cache
    fill = time.perf_counter() - t
    for _i in range(3):
        t = time.perf_counter()
        again = cached_tokenize(cache / "c", tokenizer_fingerprint(tok), tokenize, tok, texts, 128)
        warm.append(time.perf_counter() - t)
    assert again == first == ids
    print(f"tokenise: {min(cold):.3f} s; first cached run (tokenise + hash + write): {fill:.3f} s; "
          f"cache hit (fingerprint + hash + read): {min(warm):.3f} s; speed-up {min(cold) / min(warm):.1f}x")


if __name__ == "__main__":
    main()

"""Data: the seeded synthetic sentiment set; CSV / JSONL / Parquet files; HF datasets (a folder written
by `save_to_disk`, or `hf:name[:config][:split]` from the hub), validated.

    load_splits(data_config, seed)          -> DataSplits (train / val / test, labels 0..K-1, label names)
    summarize(data, tokenizer, max_length)  -> the pre-training summary (a dict); format_summary -> text

With `text_pair_col` set, each Split also carries the second sentence of each pair (`pairs`), which the
trainer tokenises as a pair (paraphrase / NLI-style tasks). Modules: splits (the types, stratified
sampling), synthetic, files (tables), hf (HF datasets), summary, tokcache (the tokenisation cache).
"""

from __future__ import annotations

from peft_tui.config import DataConfig
from peft_tui.engine.data.files import load_file_splits, read_table
from peft_tui.engine.data.hf import parse_hf_spec
from peft_tui.engine.data.splits import DataSplits, Split, check_split, stratified_sample, stratified_split
from peft_tui.engine.data.summary import format_summary, summarize, token_lengths
from peft_tui.engine.data.synthetic import synthetic

__all__ = [
    "DataSplits", "Split", "format_summary", "load_file_splits", "load_splits", "parse_hf_spec", "read_table",
    "stratified_sample", "stratified_split", "summarize", "synthetic", "token_lengths",
]

SYNTHETIC_SEED = 1234


def load_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Resolve a DataConfig into train/val/test. Raises ConfigError with a one-line message."""
    if cfg.source == "synthetic":
        # the synthetic set is fixed by its own seed, not the run seed, so every method in a comparison
        # and every repeat of a run sees the same examples
        texts, labels = synthetic(cfg.size, seed=SYNTHETIC_SEED, label_noise=cfg.label_noise)
        tr, va, te = stratified_split(labels, [cfg.val_fraction, cfg.test_fraction], seed=SYNTHETIC_SEED)
        full = Split(texts, labels)
        val, test = full.pick(va), full.pick(te)
        check_split("val", val, labels, cfg.val_fraction, False)
        check_split("test", test, labels, cfg.test_fraction, False)
        return DataSplits(full.pick(tr), val, test, ["negative", "positive"], f"synthetic(size={cfg.size})")
    return load_file_splits(cfg, seed)

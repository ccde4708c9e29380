"""Token counts for the estimate and the data summary, without importing torch where it can be helped.

    tok = counting_tokenizer("minilm")                       # the tokenizers library alone for the embedded
                                                             # tokenizer; transformers' AutoTokenizer otherwise
    lengths = cached_lengths(cache_dir, "minilm", False, texts, pairs)   # read from / kept in the store

`from transformers import AutoTokenizer` imports torch (2.3 s on this 2-core box, while a worker imports the
same next to it). The embedded MiniLM tokenizer (also the `tiny` model's) is read from its tokenizer.json by
the `tokenizers` library instead (20 ms; the same untruncated counts as transformers' on AG News, checked
in tests/test_first_step.py). Counts are kept in the store's cache (`len-<sha256>.bin`, int32) per
tokenizer files and texts, so the next command on the same data reads them (milliseconds) instead of
tokenising again. A hub id has no files here to name its tokenizer by: counted each time.
"""

from __future__ import annotations

import array
import hashlib
import os
from pathlib import Path

FORMAT = "peft-tui-lengths-v1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")


def _embedded(model: str) -> bool:
    return model in ("minilm", "tiny")  # "tiny" uses the embedded MiniLM tokenizer


def tokenizer_folder(model: str) -> Path | None:
    """The folder holding the tokenizer files of `model` (the embedded one, a local folder), else None."""
    from peft_tui.engine import models

    if _embedded(model):
        return models.minilm_path()
    return models._model_folder(model)


class RawCounter:
    """The embedded tokenizer through the `tokenizers` library: called as transformers' tokenizer is by
    `data.summary.token_lengths` (`tok(texts, pairs, truncation=False)["input_ids"]`), special tokens
    included, no truncation, no padding."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_truncation()
        self.tok.no_padding()
        self.name_or_path = str(path.parent)

    def __len__(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: list[str], pairs: list[str] | None = None, truncation: bool = False) -> dict:
        enc = self.tok.encode_batch(list(zip(texts, pairs)) if pairs is not None else texts)
        return {"input_ids": [e.ids for e in enc]}


def counting_tokenizer(model: str, trust_remote_code: bool = False):
    """A tokenizer that counts tokens as `model`'s does: the embedded one without transformers, any
    other through models.load_tokenizer."""
    if _embedded(model):
        from peft_tui.engine import models

        path = models.minilm_path() / "tokenizer.json"
        if path.is_file():
            return RawCounter(path)
    from peft_tui.engine.models import load_tokenizer

    return load_tokenizer(model, trust_remote_code)


def tokenizer_identity(model: str) -> str | None:
    """A digest of the files that make `model`'s tokenizer (None for a hub id: nothing here names it)."""
    folder = tokenizer_folder(model)
    if folder is None:
        return None
    h = hashlib.sha256(f"{FORMAT}\0{'raw' if _embedded(model) else 'hf'}\0".encode())
    for name in TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def lengths_key(identity: str, texts: list[str], pairs: list[str] | None) -> str:
    h = hashlib.sha256(f"{FORMAT}\0{identity}\0{len(texts)}\0{pairs is not None}\0".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    for t in pairs or []:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def _read(path: Path, n: int) -> list[int] | None:
    try:
        a = array.array("i")
        with open(path, "rb") as fh:
            a.frombytes(fh.read())
        return a.tolist() if len(a) == n else None
    except OSError:
        return None


def _write(path: Path, lengths: list[int]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(array.array("i", lengths).tobytes())
        os.replace(tmp, path)  # atomic: a reader never sees half a file
    except (OSError, OverflowError):  # read-only or full store: count again next time
        tmp.unlink(missing_ok=True)


def cached_lengths(cache_dir: Path | None, model: str, trust_remote_code: bool, texts: list[str],
                   pairs: list[str] | None = None, tokenizer=None) -> list[int]:
    """Untruncated token counts of `texts` (special tokens included), from `cache_dir` when kept there,
    else counted (by `tokenizer`, or `counting_tokenizer(model)`) and kept for next time."""
    from peft_tui.engine.data import token_lengths

    identity = tokenizer_identity(model) if cache_dir is not None and texts else None
    path = None
    if identity is not None:
        path = Path(cache_dir) / f"len-{lengths_key(identity, texts, pairs)[:40]}.bin"  # type: ignore[arg-type]
        if path.exists():
            got = _read(path, len(texts))
            if got is not None:
                return got
    out = token_lengths(tokenizer or counting_tokenizer(model, trust_remote_code), texts, pairs)
    if path is not None:
        _write(path, out)
    return out

"""The input limits, in one place, at the bottom of the house: config, data and methods all read them. Input beyond them is refused with one line before memory grows
(file sizes are checked from the file system, line lengths by a chunked scan in constant memory), or,
for texts, cut early: the tokenizer truncates every text to `max_length` tokens anyway.

Measured on this 2-core machine: a CSV with one 200 MB line is refused after a 0.1 s scan at ~40 MB
of memory (pandas alone grew to 22 GB on it); the synthetic set takes ~1.7 s and ~25 MB at its cap.
"""

from __future__ import annotations

MiB = 1 << 20

MAX_TABLE_BYTES = 512 * MiB  # a CSV / TSV / JSONL / Parquet file (for Parquet also its uncompressed size),
#                              a text file for `predict --file`, one split of an HF dataset
MAX_JSON_BYTES = 64 * MiB  # a whole-document .json file is parsed in one piece: use .jsonl above this
MAX_LINE_BYTES = 1 * MiB  # one line of a CSV / TSV / JSONL / text file
MAX_TEXT_CHARS = 200_000  # one text: longer ones are cut (max_length <= 32768 tokens keeps ~6 chars a token)
MAX_LABEL_CHARS = 200  # one class label: a name, not a text
MAX_SYNTHETIC_SIZE = 100_000  # data.size of the synthetic set
MAX_INT = 2**63 - 1  # the largest integer a config may hold: a signed 64-bit value (SQLite, torch seeds)
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few settings: larger ones are refused unread
MAX_PREDICT_ROWS = 1_000_000  # texts one `predict` classifies (its --file streams them, a chunk at a time)

__all__ = ["MAX_CONFIG_BYTES", "MAX_INT", "MAX_JSON_BYTES", "MAX_LABEL_CHARS", "MAX_LINE_BYTES", "MAX_PREDICT_ROWS",
           "MAX_SYNTHETIC_SIZE", "MAX_TABLE_BYTES", "MAX_TEXT_CHARS", "MiB"]


def size_text(n: int) -> str:
    """A byte count for messages: 512 MiB, 1 MiB, 300 KiB, 12 bytes."""
    for unit, div in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.0f} {unit}" if n % div == 0 else f"{n / div:.1f} {unit}"
    return f"{n} bytes"

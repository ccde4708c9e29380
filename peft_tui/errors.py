"""The one-line error idiom, shared by every layer.

`ConfigError` is a bad value supplied by the user: its message is one line saying what is wrong and
how to fix it. `StoreError` is a store that cannot be read or written (busy, damaged, read-only, a full
disk): not the user's input, but told the same way. Both are `OneLineError`s, which front ends show as
they are. `first_line(exc)` turns any exception into that one line for a user or a run record.
`disk_full_at(exc)` tells a full disk (anywhere in an exception's chain) from other failures.
"""

from __future__ import annotations

import errno


class OneLineError(Exception):
    """An error whose message is already one line for the user: what is wrong and the fix."""


class ConfigError(OneLineError, ValueError):
    """A bad value supplied by the user. The message is one line: what is wrong and the fix."""


class StoreError(OneLineError):
    """The store cannot be read or written: one line saying where and why, and what to do."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, prefixed by its type unless it is a
    OneLineError (whose message is already written for the user). Never empty, at most `limit` chars."""
    text = ""
    for line in str(exc).splitlines():
        if line.strip():
            text = line.strip()
            break
    if not isinstance(exc, OneLineError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text or type(exc).__name__


def disk_full_at(exc: BaseException | None) -> str | None:
    """The path of a disk-full failure (an OSError with ENOSPC, EDQUOT or EFBIG, a file size limit, such as
    `weights.DiskFull`; "" when it names no file), looking through the exceptions it was raised from or
    during, else None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return str(exc.filename or "")
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None

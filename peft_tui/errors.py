"""The one-line error idiom, shared by every layer.

`ConfigError` is a bad value supplied by the user: its message is one line saying what is wrong and
how to fix it. `first_line(exc)` turns any exception into that one line for a user or a run record.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad value supplied by the user. The message is one line: what is wrong and the fix."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, prefixed by its type unless it is a
    ConfigError (whose message is already written for the user). Never empty, at most `limit` chars."""
    text = ""
    for line in str(exc).splitlines():
        if line.strip():
            text = line.strip()
            break
    if not isinstance(exc, ConfigError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text or type(exc).__name__

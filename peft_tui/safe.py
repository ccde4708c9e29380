"""Text from users and files made safe for a terminal: `safe_text` (one value) and `safe_lines` (a block of
lines we composed around such values). Every front end shows names, paths, labels, texts, errors and
config values through these; rich output then wraps the result in a Text object, never in markup.

What is removed: terminal escape sequences whole (ESC [ ... colours, cursor moves, clear screen;
ESC ] ... titles and hyperlinks; their 8-bit forms), then every other C0/C1 control character and DEL.
Tabs, newlines, carriage returns and the other line breaks become one space each, so a value stays on
its line. A lone surrogate (a file name that is not UTF-8) becomes U+FFFD, which every terminal can print.
Invisible format characters (Unicode category Cf: the bidirectional controls U+202A-U+202E, U+2066-U+2069,
U+200E/U+200F, zero-width spaces and joiners, U+FEFF, tag characters, ...) are shown as a visible escape
such as `<U+202E>`: they could make a terminal show text in another order than the stored one, or make
two different values look the same.
Pure Python, no rich: the engine may use it too.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# A string sequence's payload (a title, a link target) is removed with it only when it is one short word:
# a value that opens a string and a later value that closes it must not swallow the text between them
# (`runs` composes lines of several values). An unmatched opener is removed alone, the rest shown.
_PAYLOAD = r"[^\x07\x1b\x9c\s]{0,512}"
_ESCAPES = re.compile(
    rf"""
      \x1b\[ [0-?]* [ -/]* [@-~]?                     # CSI: ESC [ parameters, final byte
    | \x1b\] {_PAYLOAD} (?:\x07|\x1b\\|\x9c)          # OSC: ESC ] ... BEL or ST (titles, hyperlinks)
    | \x1b [PX^_] {_PAYLOAD} (?:\x1b\\|\x9c)           # DCS, SOS, PM, APC strings
    | \x1b [ -/]* [0-~]?                                # any other escape (and an unterminated string's start)
    | \x9b [0-?]* [ -/]* [@-~]?                         # 8-bit CSI
    | [\x90\x98\x9d\x9e\x9f] {_PAYLOAD} (?:\x07|\x9c)   # 8-bit DCS, SOS, OSC, PM, APC
    """,
    re.VERBOSE,
)
_BREAKS = re.compile("\r\n|[\t\n\r\v\f\x85\u2028\u2029]")
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_NON_ASCII = re.compile("[^\x00-\x7f]")  # format characters are all outside ASCII: category checked for these


def _visible(match: re.Match) -> str:
    ch = match.group()
    return f"<U+{ord(ch):04X}>" if unicodedata.category(ch) == "Cf" else ch


def safe_text(value: Any, limit: int | None = None) -> str:
    """`value` as one line of plain text, safe to print: no escape sequences or control characters,
    line breaks and tabs as spaces, at most `limit` characters (cut with '…')."""
    text = _ESCAPES.sub("", str(value))
    text = _CONTROLS.sub("", _BREAKS.sub(" ", text))
    text = _NON_ASCII.sub(_visible, _SURROGATES.sub("\ufffd", text))
    if limit is not None and len(text) > limit:
        text = text[: max(0, limit - 1)] + "…"
    return text


def safe_lines(text: str) -> str:
    """A block of lines (a summary or a report we composed) with every line through `safe_text`."""
    return "\n".join(safe_text(line) for line in str(text).split("\n"))

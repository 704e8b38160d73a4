"""One rule for every name that enters relayd, and one way to show text to people.

A peer id, room name, UDP name or relay id is accepted on every path (TCP
JSON lines and the seed dialect, UDP, federation, configuration) only when:

* it is a string of 1 to ``limit`` characters (``MAX_NAME`` by default),
  each a Unicode scalar value: a lone surrogate (a JSON ``"\\ud800"``
  escape) is refused;
* every character is printable: no control (C0, DEL, C1), format (bidi
  overrides, zero-width characters, BOM), private-use, unassigned, line or
  paragraph separator, and no space other than U+0020 -- exactly what
  ``str.isprintable`` refuses;
* it does not begin or end with a space;
* it is in Unicode Normalization Form C.  Names are compared as sent, so a
  name in another form is refused rather than rewritten: "é" typed as
  ``e`` + U+0301 must be sent as U+00E9 (``unicodedata.normalize("NFC", s)``).

``shown`` is the escaping helper for anything a person reads (log lines,
the admin console): a valid name shows as itself, anything else has its
unprintable characters escaped and is cut to a bounded length.
"""
import unicodedata

MAX_NAME = 128          # characters
SHOWN_LIMIT = 200       # characters of untrusted text in one log line or console cell


def problem(value, what="a name", limit=MAX_NAME):
    """None when ``value`` follows the name rule, else the reason (for an error reply)."""
    if not isinstance(value, str) or not value:
        return f"{what} must be a non-empty string"
    if len(value) > limit:
        return f"{what} is at most {limit} characters"
    if not value.isprintable():
        return f"{what} has a control, format, surrogate or separator character"
    if value[0] == " " or value[-1] == " ":
        return f"{what} must not begin or end with a space"
    if not value.isascii() and not unicodedata.is_normalized("NFC", value):
        return f"{what} is not in Unicode normalization form NFC"
    return None


def valid(value, limit=MAX_NAME):
    return problem(value, limit=limit) is None


def shown(value, limit=SHOWN_LIMIT):
    """``value`` (any object; str() of it) safe for a log line or a terminal:
    unprintable characters escaped as ``\\xNN``/``\\uNNNN``, cut to ``limit``."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in text)
    return text + "..." if cut else text

"""Fast JSON for hot paths (msgspec), failing as the standard module's callers expect.

``loads`` takes bytes (or str) and raises ValueError for anything that is
not strict JSON: bad syntax, invalid UTF-8, NaN/Infinity, numbers out of
float range, lone surrogate escapes (which ``json.loads`` would accept and
no UTF-8 encoder could write back), nesting too deep.  ``dumps_compact``
writes UTF-8 bytes with ``,``/``:`` separators and non-ASCII characters
unescaped; NaN and infinities become ``null``.

Not for message ids: PROTOCOL.md defines those over ``json.dumps(entry,
sort_keys=True)`` with the default separators and ASCII escaping, which
neither function reproduces.
"""
import json

import msgspec

_decode = msgspec.json.decode
_encode = msgspec.json.encode


def loads(data):
    try:
        return _decode(data)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def loads_own(data):
    """``loads`` for JSON relayd wrote itself with ``json.dumps`` (journal,
    checkpoints): what msgspec refuses of it, a lone surrogate escape in a
    stored body, is read by the standard module."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, RecursionError):
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


def dumps_compact(obj):
    try:
        return _encode(obj)
    except (msgspec.EncodeError, UnicodeEncodeError, TypeError) as e:
        raise ValueError(str(e)) from None

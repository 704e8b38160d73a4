"""Fast JSON for hot paths (msgspec), failing as the standard module's callers expect.

``loads`` takes bytes (or str) and raises ValueError for anything that is
not strict JSON: bad syntax, invalid UTF-8, NaN/Infinity, numbers out of
float range, lone surrogate escapes (which ``json.loads`` would accept and
no UTF-8 encoder could write back), nesting too deep.  ``dumps_compact``
writes UTF-8 bytes with ``,``/``:`` separators and non-ASCII characters
unescaped; NaN and infinities become ``null``.

``loads_own`` and ``dumps_own`` are their lenient twins for JSON that
``json.dumps`` may have written (the journal, checkpoints, federation
frames): a string holding a lone surrogate, which the TCP parse accepts
as a ``\\ud800`` escape, goes through the standard module both ways.

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
    """``loads``, and for what msgspec refuses the standard module's parse
    of the UTF-8 text (a lone surrogate escape reads as in ``json.loads``).
    ValueError (UnicodeDecodeError for bytes that are not UTF-8) otherwise."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, RecursionError):
        try:
            return json.loads(data.decode("utf-8") if isinstance(data, (bytes, bytearray))
                              else data)
        except RecursionError:
            raise ValueError("JSON nested too deep") from None


def dumps_compact(obj):
    try:
        return _encode(obj)
    except (msgspec.EncodeError, UnicodeEncodeError, TypeError) as e:
        raise ValueError(str(e)) from None


def dumps_own(obj):
    """``dumps_compact``; what msgspec refuses (a lone surrogate in a string)
    the standard module writes, compact and ASCII-escaped."""
    try:
        return _encode(obj)
    except (msgspec.EncodeError, UnicodeEncodeError):
        return json.dumps(obj, separators=(",", ":")).encode()

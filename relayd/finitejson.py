"""JSON decoding for untrusted input: only finite numbers.

``json.loads`` reads ``NaN``, ``Infinity`` and ``1e400`` (as inf) into floats
that then break arithmetic (``int(inf)`` raises OverflowError) or go out
again as text that is not JSON.  Here they are a ValueError, like any other
malformed JSON; integers keep Python's bound on their digits (4300).
"""
import json
import math


def _constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range for a number")
    return value


decode = json.JSONDecoder(parse_constant=_constant, parse_float=_finite).decode


def loads(data):
    """``json.loads`` of str or UTF-8 bytes, refusing non-finite numbers."""
    return decode(data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data)

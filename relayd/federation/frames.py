"""Item frames on a link: validation of what a peer sends, encoding of what we send."""
import json
import math

HEX = frozenset("0123456789abcdef")
MAX_SEEN_BY = 255             # as max_hops


class BadItem(ValueError):
    """A frame from a peer does not hold a valid item."""


def is_time(value):
    """A finite number (json.loads also reads NaN and Infinity, which must not travel on)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_entry(entry):
    """Raise BadItem unless ``entry`` looks like a relayed message entry."""
    if not isinstance(entry, dict):
        raise BadItem("entry must be an object")
    msg_id = entry.get("msg_id")
    if not isinstance(msg_id, str) or len(msg_id) != 64 or not HEX.issuperset(msg_id):
        raise BadItem("msg_id must be 64 hex digits")
    for key in ("from", "to", "body"):
        if not isinstance(entry.get(key), str):
            raise BadItem(f"{key} must be a string")
    seen_by = entry.get("seen_by")
    if not isinstance(seen_by, list) or not 0 < len(seen_by) <= MAX_SEEN_BY \
            or not all(isinstance(r, str) for r in seen_by):
        raise BadItem(f"seen_by must list 1 to {MAX_SEEN_BY} relay ids")
    if not is_time(entry.get("timestamp", 0)):
        raise BadItem("timestamp must be a finite number")
    if "room" in entry and not isinstance(entry["room"], str):
        raise BadItem("room must be a string")


def item_key(frame):
    origin, seq = frame.get("origin"), frame.get("seq")
    if not isinstance(origin, str) or not origin or type(seq) is not int or seq < 1:
        raise BadItem("origin must be a relay id and seq a positive whole number")
    return origin, seq


def msg_frame(origin, seq, line):
    head = json.dumps({"type": "msg", "origin": origin, "seq": seq})[:-1].encode()
    return head + b', "entry": ' + line + b"}\n"


def receipt_frame(origin, seq, msg_id, peer, timestamp):
    return json.dumps({"type": "receipt", "origin": origin, "seq": seq, "msg_id": msg_id,
                       "to": peer, "timestamp": timestamp}).encode() + b"\n"

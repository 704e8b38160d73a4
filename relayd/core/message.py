"""Message entries, their canonical ids and their encodings.

An entry keeps seed 000's key order (``from, to, body, timestamp, seen_by,
msg_id``) and its id: the SHA-256 of ``json.dumps(entry, sort_keys=True)``
taken before ``msg_id`` is added.  With a client nonce the hashed object is
``from, to, body, nonce`` (plus ``room``) so that a retry gets the same id.
"""
import hashlib
import json

BROADCAST = "*"
MAX_ID = 128
MAX_NONCE = 128


def canonical_id(obj):
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def room_target(room):
    return "#" + room


def new_entry(sender, to, body, timestamp, relay_id, room=None, nonce=None):
    """A fresh entry with its msg_id; ``to`` is a peer id, ``*`` or ``#room``."""
    entry = {"from": sender, "to": to, "body": body}
    if room is not None:
        entry["room"] = room
    if nonce is None:
        entry["timestamp"] = timestamp
        entry["seen_by"] = [relay_id]
        entry["msg_id"] = canonical_id(entry)
    else:
        hashed = dict(entry, nonce=nonce)
        entry["timestamp"] = timestamp
        entry["seen_by"] = [relay_id]
        entry["msg_id"] = canonical_id(hashed)
    return entry


def journal_line(entry):
    """The entry as one relay_log.jsonl line (no newline), seed format."""
    return json.dumps(entry).encode()


def delivery_line(journal_bytes):
    """The line every recipient gets: the journal line with a type tag."""
    return b'{"type": "message", ' + journal_bytes[1:] + b"\n"


def receipt_line(msg_id, peer, timestamp):
    """A journal record saying a stored message reached its peer."""
    return json.dumps({"receipt": msg_id, "to": peer, "timestamp": timestamp}).encode()


def is_message(record):
    return isinstance(record.get("msg_id"), str) and "from" in record and "to" in record


def valid_peer_id(value):
    """None when ``value`` may be a peer id, else the reason."""
    if not isinstance(value, str) or not value:
        return "an id must be a non-empty string"
    if len(value) > MAX_ID:
        return f"an id is at most {MAX_ID} characters"
    if "||" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "an id must not contain control characters or '||'"
    if value == BROADCAST or value.startswith("#"):
        return "an id must not be '*' or start with '#'"
    return None


def valid_room(value):
    """None when ``value`` may be a room name (without '#'), else the reason."""
    if not isinstance(value, str) or not value:
        return "a room must be a non-empty string"
    if len(value) > MAX_ID:
        return f"a room name is at most {MAX_ID} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "a room name must not contain control characters"
    return None

"""Message entries, their canonical ids and their encodings.

An entry keeps seed 000's key order (``from, to, body, timestamp, seen_by,
msg_id``) and its id: the SHA-256 of ``json.dumps(entry, sort_keys=True)``
taken before ``msg_id`` is added.  With a client nonce the hashed object is
``from, to, body, nonce`` (plus ``room``) so that a retry gets the same id.
"""
import functools
import hashlib
import json

from relayd import names

BROADCAST = "*"
MAX_ID = names.MAX_NAME
MAX_NONCE = 128

_text = json.encoder.encode_basestring_ascii      # a str as json.dumps writes it
_INF = float("inf")


def json_text(value):
    """``json.dumps(value)``, quicker for the str and float fields of an entry."""
    kind = type(value)
    if kind is str:
        return _text(value)
    if kind is float and -_INF < value < _INF:
        return float.__repr__(value)
    return json.dumps(value)


@functools.lru_cache(maxsize=1024)
def relay_json(relay_id):
    """``json_text(relay_id)`` as bytes, remembered: records and frames name
    the same few relays again and again."""
    return _text(relay_id).encode()


def room_target(room):
    return "#" + room


def new_message(sender, to, body, timestamp, relay_id, room=None, nonce=None):
    """A fresh entry with its msg_id, and its ``journal_line``.

    ``to`` is a peer id, ``*`` or ``#room``.  Both JSON texts (the hashed
    one with sorted keys, and the journal line in entry order) are put
    together from each field's encoding, byte for byte what ``json.dumps``
    gives, so that a message costs no more than one encoding of its fields.
    """
    f, t, b = json_text(sender), json_text(to), json_text(body)
    r = "" if room is None else f', "room": {json_text(room)}'
    stamp, seen = json_text(timestamp), f"[{json_text(relay_id)}]"
    # f-strings: each text is put together in one allocation
    if nonce is None:
        hashed = f'{{"body": {b}, "from": {f}{r}, "seen_by": {seen}, "timestamp": {stamp}, "to": {t}}}'
    else:
        hashed = f'{{"body": {b}, "from": {f}, "nonce": {json_text(nonce)}{r}, "to": {t}}}'
    msg_id = hashlib.sha256(hashed.encode()).hexdigest()
    entry = {"from": sender, "to": to, "body": body}
    if room is not None:
        entry["room"] = room
    entry["timestamp"] = timestamp
    entry["seen_by"] = [relay_id]
    entry["msg_id"] = msg_id
    line = (f'{{"from": {f}, "to": {t}, "body": {b}{r}, "timestamp": {stamp}, '
            f'"seen_by": {seen}, "msg_id": "{msg_id}"}}')
    return entry, line.encode()


def new_entry(sender, to, body, timestamp, relay_id, room=None, nonce=None):
    """A fresh entry with its msg_id (see ``new_message``)."""
    return new_message(sender, to, body, timestamp, relay_id, room, nonce)[0]


def journal_line(entry):
    """The entry as one relay_log.jsonl line (no newline), seed format."""
    return json.dumps(entry).encode()


def delivery_line(journal_bytes):
    """The line every recipient gets: the journal line with a type tag."""
    return b'{"type": "message", ' + journal_bytes[1:] + b"\n"


def receipt_record(msg_id, peer, timestamp, key=None):
    """A journal record saying a stored message reached its peer; ``key``, the
    receipt's federation ``(origin, seq)``, goes in the same record."""
    record = {"receipt": msg_id, "to": peer, "timestamp": timestamp}
    if key is not None:
        record["fed"], record["seq"] = key
    return record


def receipt_line(msg_id, peer, timestamp, key=None):
    return json.dumps(receipt_record(msg_id, peer, timestamp, key)).encode()


RECORD_KEYS = ("fed", "seq", "held_for")     # in a message's journal record, not its entry


def held_line(journal_bytes, peers):
    """A room message's journal line naming the persistent members it was
    stored for (``held_for``), so that a replay stores it for them again."""
    return b"%s, \"held_for\": %s}" % (journal_bytes[:-1], json.dumps(sorted(peers)).encode())


def sequenced_line(journal_bytes, key):
    """A message's journal line carrying its federation ``(origin, seq)``."""
    origin, seq = key
    return b"%s, \"fed\": %s, \"seq\": %d}" % (journal_bytes[:-1], relay_json(origin), seq)


def entry_of(record):
    """The message entry of a journal record, without its federation
    ``(origin, seq)`` and ``held_for``."""
    if "fed" not in record and "held_for" not in record:
        return record
    return {k: v for k, v in record.items() if k not in RECORD_KEYS}


def is_message(record):
    return isinstance(record.get("msg_id"), str) and "from" in record and "to" in record


def valid_peer_id(value):
    """None when ``value`` may be a peer id, else the reason (the rule: ``relayd.names``)."""
    reason = names.problem(value, "an id", MAX_ID)
    if reason is not None:
        return reason
    if "||" in value:
        return "an id must not contain '||'"
    if value == BROADCAST or value.startswith("#"):
        return "an id must not be '*' or start with '#'"
    return None


def valid_room(value):
    """None when ``value`` may be a room name (without '#'), else the reason."""
    return names.problem(value, "a room name", MAX_ID)


def valid_target(value):
    """None when ``value`` may be an entry's ``to``: '*', '#room' or a peer id."""
    if value == BROADCAST:
        return None
    if isinstance(value, str) and value.startswith("#"):
        return valid_room(value[1:])
    return valid_peer_id(value)

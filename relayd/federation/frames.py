"""Item frames on a link: validation of what a peer sends, encoding of what we send."""
import functools
import math
import re

from relayd import names
from relayd.jsonfast import dumps_own
from relayd.core import message

_MSG_ID = re.compile("[0-9a-f]{64}").fullmatch
_KEPT_LENGTH = 2 * names.MAX_NAME   # strings longer than any name are not remembered
MAX_SEEN_BY = 255             # as max_hops
MAX_SYNC_ORIGINS = 4096       # origins one sync may list
MAX_SYNC_ABOVE = 65536        # seqs above a cursor's low one sync may list
MAX_SEQ = 2 ** 63 - 1         # seqs are journal counters: anything larger is not one


class BadItem(ValueError):
    """A frame from a peer does not hold a valid item."""

    code = "bad_item"


class BadFrame(BadItem):
    """A frame from a peer that is not an item is malformed (a sync with bad cursors)."""

    code = "bad_frame"


def is_seq(value, low=1):
    """A whole JSON number from ``low`` to MAX_SEQ (not a float, bool or huge int)."""
    return type(value) is int and low <= value <= MAX_SEQ


def is_time(value):
    """A finite number (json.loads also reads NaN and Infinity, which must not travel on)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def _remembered(rule):
    """``rule`` (None for a valid name, else the reason), its answers for the
    last 4096 strings kept: items repeat the same few relay ids, senders and
    targets, and a rule's answer depends on the string alone.  Only strings
    a name could be are kept (longer ones fail the length check at once),
    so a peer's frames cannot fill the cache with large strings."""
    cached = functools.lru_cache(maxsize=4096)(rule)

    def check(value):
        if type(value) is str and len(value) <= _KEPT_LENGTH:
            return cached(value)
        return rule(value)
    check.cache_info = cached.cache_info
    return check


_relay_id_problem = _remembered(names.problem)
_peer_id_problem = _remembered(message.valid_peer_id)
_target_problem = _remembered(message.valid_target)


def check_entry(entry):
    """Raise BadItem unless ``entry`` looks like a relayed message entry."""
    if not isinstance(entry, dict):
        raise BadItem("entry must be an object")
    msg_id = entry.get("msg_id")
    if not isinstance(msg_id, str) or _MSG_ID(msg_id) is None:
        raise BadItem("msg_id must be 64 hex digits")
    if not isinstance(entry.get("body"), str):
        raise BadItem("body must be a string")
    reason = _peer_id_problem(entry.get("from")) or _target_problem(entry.get("to"))
    if reason is not None:
        raise BadItem(f"from/to: {reason}")
    seen_by = entry.get("seen_by")
    if not isinstance(seen_by, list) or not 0 < len(seen_by) <= MAX_SEEN_BY \
            or not all(_relay_id_problem(r) is None for r in seen_by):
        raise BadItem(f"seen_by must list 1 to {MAX_SEEN_BY} relay ids")
    if not is_time(entry.get("timestamp", 0)):
        raise BadItem("timestamp must be a finite number")
    if "room" in entry and message.valid_room(entry["room"]) is not None:
        raise BadItem(f"room: {message.valid_room(entry['room'])}")


def item_key(frame):
    origin, seq = frame.get("origin"), frame.get("seq")
    if _relay_id_problem(origin) is not None or not is_seq(seq):
        raise BadItem("origin must be a relay id and seq a positive whole number")
    return origin, seq


def check_receipt(frame):
    """Raise BadItem unless a receipt frame's msg_id, to and timestamp are usable."""
    if not isinstance(frame.get("msg_id"), str) or message.valid_peer_id(frame.get("to")) \
            or not is_time(frame.get("timestamp")):
        raise BadItem("a receipt needs msg_id, to (a peer id) and timestamp")


def check_sync(frame):
    """Raise BadFrame unless ``have`` is ``{origin: [low, [seqs above low]]}``
    (with the ``have-ranges`` feature, a third element ``[[first, last], ...]``)
    with relay ids and whole seqs a journal can hold (not ``1e400``, NaN or ``"5"``)."""
    have = frame.get("have")
    if not isinstance(have, dict) or len(have) > MAX_SYNC_ORIGINS:
        raise BadFrame(f"sync needs have: {{origin: [low, [seqs above]]}}, "
                       f"at most {MAX_SYNC_ORIGINS} origins")
    for origin, cursor in have.items():
        if not names.valid(origin):
            raise BadFrame("sync: an origin is not a relay id")
        if not (isinstance(cursor, list) and len(cursor) in (2, 3) and is_seq(cursor[0], 0)
                and isinstance(cursor[1], list) and len(cursor[1]) <= MAX_SYNC_ABOVE
                and all(is_seq(s) for s in cursor[1])
                and (len(cursor) == 2 or _seq_ranges(cursor[2]))):
            raise BadFrame(f"sync: the cursor for origin {names.shown(origin, 64)} must be "
                           f"[low, [seqs above], [[first, last], ...]] (ranges optional) "
                           f"with whole numbers from 0 to {MAX_SEQ}")


def _seq_ranges(ranges):
    return (isinstance(ranges, list) and len(ranges) <= MAX_SYNC_ABOVE
            and all(isinstance(r, list) and len(r) == 2 and is_seq(r[0]) and is_seq(r[1])
                    and r[0] <= r[1] for r in ranges))


# A string as json.dumps writes it (ASCII, its escapes, lowercase \u escapes only
# for what it escapes that way): decoding it and writing it again gives it back.
# Possessive (``++``, ``*+``): nothing to backtrack into, twice as fast.
_STR = (rb'"(?:[ !#-\[\]-~]++|\\["\\bfnrt]'
        rb'|\\u(?:00(?:0[0-7bef]|1[0-9a-f]|7f|[89a-f][0-9a-f])|0[1-9a-f][0-9a-f]{2}|[1-9a-f][0-9a-f]{3}))*+"')
# A msg frame as ``msg_frame`` writes it: its own keys (compact), then the
# entry as the journal line relayd writes it (json.dumps(entry), the seed's key order)
_FRAME = re.compile(rb'\{"type":"msg","origin":"(?:[^"\\]++|\\.)*+","seq":[0-9]++,"entry":('
                    rb'\{"from": ' + _STR + rb', "to": ' + _STR + rb', "body": ' + _STR
                    + rb'(?:, "room": ' + _STR + rb')?+, "timestamp": (-?[0-9][0-9.e+-]*+)'
                    + rb', "seen_by": \[' + _STR + rb'(?:, ' + _STR + rb')*+\], "msg_id": "[0-9a-f]{64}"\})\}')
_ID_TAIL = len(b'], "msg_id": "') + 64 + len(b'"}')


def relayed_line(line, entry, appended):
    """The journal line of the ``entry`` parsed from the msg frame ``line``
    (``appended``: the id this relay appended to its ``seen_by``, or None)
    cut from the frame instead of encoded again; None unless those bytes
    are exactly what ``message.journal_line`` writes for the entry as
    parsed: the frame's own keys as ``msg_frame`` writes them and no other,
    then the entry in the journal's form, its keys in order and no other,
    each string as ``json.dumps`` escapes it, the timestamp as it writes
    that number.  The caller encodes anything else again, so a peer's bytes
    never say more than the parse saw (no repeated or extra key, no
    other escape of the same text)."""
    match = _FRAME.fullmatch(line)
    if match is None or match[2] != message.json_text(entry["timestamp"]).encode():
        return None
    raw = match[1]
    if appended is None:
        return raw
    cut = len(raw) - _ID_TAIL
    return b"%s, %s%s" % (raw[:cut], message.relay_json(appended), raw[cut:])


def msg_frame(origin, seq, line):
    """The msg frame of the entry whose journal line (its JSON, as journaled) is
    ``line``: its own keys as ``dumps_own`` writes them, then the line."""
    return b'{"type":"msg","origin":%s,"seq":%d,"entry":%s}\n' % (dumps_own(origin), seq, line)


def receipt_frame(origin, seq, msg_id, peer, timestamp):
    return dumps_own({"type": "receipt", "origin": origin, "seq": seq, "msg_id": msg_id,
                      "to": peer, "timestamp": timestamp}) + b"\n"

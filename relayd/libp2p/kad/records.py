"""PUT_VALUE/GET_VALUE records, each namespace with its validator.

A key is ``/<namespace>/<rest>``; a record whose namespace has no validator
is refused, as are records over the size limit.  Validators:

- ``pk``: ``/pk/<peer id bytes>`` holds that peer's ``PublicKey`` protobuf.
- ``ipns``: ``/ipns/<peer id bytes>`` holds an IPNS record signed by that
  peer (see ``relayd.libp2p.kad.ipns``); the higher sequence number wins.
- ``descord``: seed 002's relay advertisements (``/descord/relays``,
  ``/descord/relay/advertisements``): a JSON object whose ``peer_id`` is the
  peer that stores it, with ``addresses`` and an integer ``timestamp``; the
  newest timestamp wins.
"""
import base64
import json

from relayd.libp2p.kad import ipns
from relayd.libp2p.kad.providers import b64 as _b64
from relayd.libp2p.peerid import PeerId


class Invalid(ValueError):
    pass


def namespace(key):
    parts = key.split(b"/", 2)
    if len(parts) < 3 or parts[0] != b"" or not parts[1]:
        raise Invalid("a record key is /<namespace>/<name>")
    return parts[1].decode("ascii", "replace")


def validate_pk(key, value, sender, now):
    try:
        peer_id = PeerId(key[len(b"/pk/"):])
    except ValueError:
        raise Invalid("/pk/ key without a peer id") from None
    if PeerId.from_public_key(value) != peer_id:
        raise Invalid("public key does not match the peer id")
    return 0


def validate_descord(key, value, sender, now):
    try:
        ad = json.loads(value)
        peer_id = PeerId.from_string(ad["peer_id"])
        if not (isinstance(ad["addresses"], list) and all(isinstance(a, str) for a in ad["addresses"])
                and isinstance(ad["timestamp"], int)):
            raise ValueError("addresses must be strings, timestamp an integer")
    except (ValueError, KeyError, TypeError) as e:
        raise Invalid(f"not a relay advertisement: {e}") from None
    if sender is not None and peer_id != sender:
        raise Invalid("a relay advertisement names the peer that stores it")
    return ad["timestamp"]


def validate_ipns(key, value, sender, now):
    try:
        return ipns.validate(key, value, now)
    except ValueError as e:
        raise Invalid(f"not a valid IPNS record: {e}") from None


VALIDATORS = {"pk": validate_pk, "ipns": validate_ipns, "descord": validate_descord}


class RecordStore:
    """Validated records with an age limit; ``rank`` decides between two
    valid records for one key (the higher wins, a tie keeps the stored one)."""

    def __init__(self, clock, max_age, max_size=10 * 1024, max_records=100000,
                 validators=VALIDATORS):
        self.clock = clock
        self.max_age = max_age
        self.max_size = max_size
        self.max_records = max_records
        self.validators = validators
        self.records = {}       # key -> (value, rank, received)
        self.refused = 0

    def put(self, key, value, sender):
        """Store after validation (``sender``: the PeerId storing it, or None for
        relayd's own records, which replace what is stored); raises Invalid."""
        try:
            if len(key) + len(value) > self.max_size:
                raise Invalid(f"record larger than {self.max_size} bytes")
            validator = self.validators.get(namespace(key))
            if validator is None:
                raise Invalid("no validator for this namespace")
            rank = validator(key, value, sender, self.clock.seconds())
            old = self.get(key)
            if sender is not None and old is not None and old[1] >= rank and old[0] != value:
                raise Invalid("a better record is stored")
            if old is None and len(self.records) >= self.max_records:
                raise Invalid("record store full")
        except Invalid:
            self.refused += 1
            raise
        self.records[key] = (value, rank, self.clock.seconds())

    def get(self, key):
        """``(value, rank, received)`` or None when absent or too old."""
        found = self.records.get(key)
        if found is not None and self.clock.seconds() - found[2] >= self.max_age:
            del self.records[key]
            return None
        return found

    def expire(self):
        now = self.clock.seconds()
        for key in [k for k, r in self.records.items() if now - r[2] >= self.max_age]:
            del self.records[key]

    def snapshot(self):
        return [[_b64(k), _b64(v), rank, received] for k, (v, rank, received) in self.records.items()]

    def restore(self, rows):
        now = self.clock.seconds()
        for key, value, rank, received in rows:
            if now - received < self.max_age:
                self.records[base64.b64decode(key)] = (base64.b64decode(value), rank, received)


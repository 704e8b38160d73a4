"""relay-chat's end-to-end state, one JSON file (mode 0600) beside the key file.

It holds the X25519 prekeys' private halves (a one-time prekey is deleted
once a message sealed to it has been opened), the identity keys pinned for
each peer on first use, the ids of messages already opened (replay
protection) and the private rooms' keys.  Writes are atomic (a temporary
file, fsync, rename) and merge with what another relay-chat process of the
same id wrote meanwhile (under an flock of ``<file>.lock``): a ``listen``
running for hours does not undo the prekeys a ``keys`` published or the
pins a ``send`` made.  The file is small and read and written by the CLI,
whose reactor serves one person; it is not a daemon's file.
"""
import fcntl
import json
import os
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from relayd.e2ee import wire
from relayd.filepool import write_atomically

SEEN_LIMIT = 20000              # message ids remembered against replays
SPK_ROTATE = 7 * 86400.0        # a signed prekey is replaced after a week
SPK_KEEP = 2 * SPK_ROTATE       # and its private half kept this long, for mail in flight


class StoreError(Exception):
    """The store file cannot be read or written."""


def _private(text):
    return X25519PrivateKey.from_private_bytes(wire.unb64(text, 32, "private key"))


def _encode(key):
    return wire.b64(key.private_bytes_raw())


class Store:
    def __init__(self, path, data=None, clock=time.time):
        self.path = path
        self.clock = clock
        data = data or {}
        self.spks = data.get("spks", [])            # [{"private", "created"}], newest last
        self.opks = data.get("opks", {})            # key id hex -> private b64
        self.pins = data.get("pins", {})            # peer id -> identity key b64
        self.seen = data.get("seen", [])            # message ids opened, oldest first
        self.rooms = data.get("rooms", {})          # room -> {"owner", "epoch", "keys", "members"}
        self._seen = set(self.seen)
        self._used = set()          # one-time prekeys this process consumed
        self._pinned = set()        # peers this process pinned
        self._left = set()          # rooms this process forgot

    @classmethod
    def open(cls, path, clock=time.time):
        return cls(path, _read(path), clock)

    def save(self):
        """Merge with the file as it is now, then write it."""
        try:
            lock = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._merge(_read(self.path) or {})
                self._write()
            finally:
                os.close(lock)
        except OSError as e:
            raise StoreError(f"cannot write the end-to-end store {self.path}: "
                             f"{e.strerror}") from None

    def _write(self):
        data = json.dumps({"version": 1, "spks": self.spks, "opks": self.opks, "pins": self.pins,
                           "seen": self.seen, "rooms": self.rooms}, indent=1).encode()
        write_atomically(self.path, data, 0o600)

    def _merge(self, disk):
        ours = {s["private"] for s in self.spks}
        theirs = [s for s in disk.get("spks", []) if s["private"] not in ours]
        self.spks = sorted(self.spks + theirs, key=lambda s: s["created"])
        self.opks = {k: v for k, v in dict(disk.get("opks", {}), **self.opks).items()
                     if k not in self._used}
        self.pins = dict(disk.get("pins", {}), **{p: self.pins[p] for p in self._pinned})
        self.seen = [m for m in disk.get("seen", []) if m not in self._seen] + self.seen
        del self.seen[:-SEEN_LIMIT]
        self._seen = set(self.seen)
        for room, state in disk.get("rooms", {}).items():
            mine = self.rooms.get(room)
            if room in self._left:
                continue
            if mine is None or state["epoch"] > mine["epoch"]:
                self.rooms[room] = dict(state, keys=dict(mine["keys"] if mine else {},
                                                         **state["keys"]))
            else:
                mine["keys"] = dict(state["keys"], **mine["keys"])

    # -- prekeys ----------------------------------------------------------

    def signed_prekey(self):
        """The current signed prekey (private), made or rotated as needed."""
        now = self.clock()
        if not self.spks or now - self.spks[-1]["created"] >= SPK_ROTATE:
            self.spks.append({"private": _encode(X25519PrivateKey.generate()), "created": now})
        self.spks = [s for s in self.spks[:-1] if now - s["created"] < SPK_KEEP] + self.spks[-1:]
        return _private(self.spks[-1]["private"])

    def new_one_time(self, count):
        """``count`` fresh one-time prekeys (private), kept until used."""
        keys = [X25519PrivateKey.generate() for _ in range(count)]
        for key in keys:
            self.opks[wire.key_id(key.public_key().public_bytes_raw()).hex()] = _encode(key)
        return keys

    def signed_prekey_for(self, kid):
        for s in self.spks:
            key = _private(s["private"])
            if wire.key_id(key.public_key().public_bytes_raw()) == kid:
                return key
        return None

    def one_time_for(self, kid):
        text = self.opks.get(kid.hex())
        return None if text is None else _private(text)

    def forget_one_time(self, kid):
        self._used.add(kid.hex())
        self.opks.pop(kid.hex(), None)

    # -- pins and replays -------------------------------------------------

    def pinned(self, peer):
        text = self.pins.get(peer)
        return None if text is None else wire.unb64(text, 32, "pin")

    def pin(self, peer, key):
        self._pinned.add(peer)
        self.pins[peer] = wire.b64(key)

    def forget_room(self, room):
        self._left.add(room)
        return self.rooms.pop(room, None)

    def first_time(self, mid):
        """Record ``mid``; False if it was opened before (a replay)."""
        if mid in self._seen:
            return False
        self._seen.add(mid)
        self.seen.append(mid)
        if len(self.seen) > SEEN_LIMIT:
            self._seen.discard(self.seen.pop(0))
        return True


def _read(path):
    """The store file's object, or None if there is none."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StoreError(f"cannot read the end-to-end store {path}: {e}") from None
    if not isinstance(data, dict):
        raise StoreError(f"{path} is not an end-to-end store")
    return data

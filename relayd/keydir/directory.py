"""The prekeys each owned id published, kept in the data directory.

A record is the id's signed prekey and its one-time prekeys, each signed
by the id's owned Ed25519 key (``core.ownership``), which the relay checks
before storing.  A fetch hands a one-time prekey out once and removes it.
A record names the key that signed it (``ik``): once another key owns the
id (a cluster's engine settled a conflicting claim, or the operator freed
the id and it was claimed again), the record is dropped, never handed out
under the new key.
The table is read once at start-up and rewritten atomically on the file
pool after changes (``core.tablefile``).
"""
import json

from relayd.core.tablefile import TableFile
from relayd.e2ee import wire

FILE_NAME = "prekeys.json"


class NotOwned(Exception):
    """The id is not owned by a key: it has nothing to sign prekeys with."""


class DamagedDirectory(Exception):
    """prekeys.json cannot be read."""


class KeyDirectory(TableFile):
    def __init__(self, path, file_pool, ownership, relay_id, max_prekeys=100):
        super().__init__(path, file_pool)
        self.ownership = ownership
        self.relay_id = relay_id
        self.max_prekeys = max_prekeys
        self._table = {}    # peer id -> {"ik", "spk": {"key", "sig"}, "opks": [{"key", "sig"}]}
        self.handed_out = 0         # one-time prekeys given away since start

    def load(self):
        """Read the table (start-up only); a damaged one stops the start."""
        try:
            with open(self.path, "rb") as f:
                table = json.loads(f.read())
            if not isinstance(table, dict) or not all(
                    isinstance(r, dict) and isinstance(r.get("opks"), list)
                    for r in table.values()):
                raise ValueError("not a table of prekey records")
            self._table = table
        except FileNotFoundError:
            pass
        except (ValueError, RecursionError) as e:
            raise DamagedDirectory(f"the prekey directory {self.path} is damaged ({e}); restore "
                                   f"it from a backup, or delete it (clients publish again when "
                                   f"they next connect)") from None
        self.loaded = True

    # -- queries ------------------------------------------------------------

    def _record(self, peer_id):
        """``(record, owner key)`` of the id when its owner's key signed the
        record, else ``(None, owner key)``; a record of a key that no longer
        owns the id is dropped.  A record from before ``ik`` was kept is
        checked once against the owner's key."""
        record = self._table.get(peer_id)
        owner = self.ownership.owner(peer_id)
        if record is None or owner is None:
            return None, owner
        ik = wire.b64(owner)
        if record.get("ik") != ik:
            if "ik" in record or not self._signed_by(record, peer_id, owner):
                del self._table[peer_id]
                self.save()
                return None, owner
            record["ik"] = ik
        return record, owner

    @staticmethod
    def _signed_by(record, peer_id, owner):
        try:
            wire.check_prekey(record["spk"], wire.SPK_LABEL, peer_id, owner)
        except wire.BadEnvelope:
            return False
        return True

    def keyed(self, peer_id):
        """Whether ``peer_id`` published keys here (and still owns its key)."""
        return self._record(peer_id)[0] is not None

    def status(self, peer_id):
        record, _ = self._record(peer_id)
        if record is None:
            return {"spk": None, "opks": 0}
        return {"spk": record["spk"]["key"], "opks": len(record["opks"])}

    def fetch(self, peer_id, take_opk=True):
        """The id's bundle (identity key, signed prekey, a one-time prekey or
        None), or None when it has published nothing here."""
        record, owner = self._record(peer_id)
        if record is None:
            return None
        opk = None
        if take_opk and record["opks"]:
            opk = record["opks"].pop(0)
            self.handed_out += 1
            self.save()
        return {"id": peer_id, "ik": wire.b64(owner), "spk": record["spk"], "opk": opk,
                "opks_left": len(record["opks"]), "relay": self.relay_id}

    # -- publishing -----------------------------------------------------------

    def publish(self, peer_id, spk, opks):
        """Check and store a signed prekey and one-time prekeys; returns how
        many one-time prekeys the id now has here.  BadEnvelope if a
        signature does not verify (nothing is stored then)."""
        owner = self.ownership.owner(peer_id)
        if owner is None:
            raise NotOwned(peer_id)
        if not isinstance(opks, list):
            raise wire.BadEnvelope("opks must be a list")
        if len(opks) > self.max_prekeys:
            raise wire.BadEnvelope(f"at most {self.max_prekeys} one-time prekeys at a time")
        wire.check_prekey(spk, wire.SPK_LABEL, peer_id, owner)
        for opk in opks:
            wire.check_prekey(opk, wire.OPK_LABEL, peer_id, owner)
        record, _ = self._record(peer_id)
        if record is None:
            record = self._table[peer_id] = {"ik": wire.b64(owner), "spk": None, "opks": []}
        record["spk"] = {"key": spk["key"], "sig": spk["sig"]}
        known = {o["key"] for o in record["opks"]}
        for opk in opks:
            if opk["key"] not in known:
                known.add(opk["key"])
                record["opks"].append({"key": opk["key"], "sig": opk["sig"]})
        del record["opks"][:-self.max_prekeys]
        self.save()
        return len(record["opks"])

    def snapshot(self):
        return {p: dict(r, opks=list(r["opks"])) for p, r in self._table.items()}

    @staticmethod
    def encode(table):
        return json.dumps(table, indent=0).encode()

    def stats(self):
        return {"ids": len(self._table),
                "prekeys": sum(len(r["opks"]) for r in self._table.values()),
                "handed_out": self.handed_out}

    def __len__(self):
        return len(self._table)

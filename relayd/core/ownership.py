"""Which Ed25519 key owns which peer id, kept in the data directory.

The first key that proves an id owns it; the table is rewritten atomically
on the file pool whenever it changes (claims made during a write go into the
next one) and read once at start-up.
"""
import base64
import json

from twisted.application.service import Service
from twisted.logger import Logger

from relayd.filepool import write_atomically

FILE_NAME = "peer_keys.json"


def _save(path, owners):
    """Write ``owners`` (peer id -> raw key) as the JSON table; on the file thread."""
    data = json.dumps({p: base64.b64encode(k).decode() for p, k in owners.items()}, indent=0)
    write_atomically(path, data.encode())


class DamagedTable(Exception):
    """peer_keys.json cannot be read; the message says what to do."""


class Ownership(Service):
    """Loaded when the daemon starts, before anything listens."""

    log = Logger()

    def __init__(self, path, file_pool):
        self.path = path
        self.file_pool = file_pool
        self._owners = {}          # peer id -> raw 32-byte public key
        self._loaded = False
        self._saving = False       # a write is on the file pool
        self._changed = False      # claims since that write's copy of the table

    def privilegedStartService(self):
        self.load()
        super().privilegedStartService()

    def startService(self):
        if not self._loaded:
            self.load()
        super().startService()

    def load(self):
        """Read the table (start-up only).

        A damaged table stops the daemon: running without it would let
        anyone take over every owned id, and the next claim would overwrite
        it.  The operator restores it from a backup or deletes it knowingly.
        """
        try:
            with open(self.path, "rb") as f:
                table = json.loads(f.read())
            self._owners = {peer: base64.b64decode(key, validate=True)
                            for peer, key in table.items()}
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError, TypeError, RecursionError) as e:
            raise DamagedTable(f"the key ownership table {self.path} is damaged ({e}); restore "
                               f"it from a backup, or delete it to let every id be claimed "
                               f"again") from None
        self._loaded = True

    def owner(self, peer_id):
        return self._owners.get(peer_id)

    def claim(self, peer_id, public_key):
        """Bind ``peer_id`` to ``public_key`` unless another key owns it."""
        current = self._owners.get(peer_id)
        if current is not None:
            return current == public_key
        self._owners[peer_id] = public_key
        self._save()
        return True

    def _save(self):
        """Write a copy of the table (encoded on the file thread), one write
        at a time, so that a run of claims costs a few writes, not one each."""
        if self._saving:
            self._changed = True
            return
        self._saving, self._changed = True, False
        d = self.file_pool.run(_save, self.path, dict(self._owners))
        d.addErrback(lambda f: self.log.failure("could not save {path}", f, path=self.path))
        d.addCallback(self._saved)

    def _saved(self, _):
        self._saving = False
        if self._changed:
            self._save()

    def __len__(self):
        return len(self._owners)

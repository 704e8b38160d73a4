"""Which Ed25519 key owns which peer id, kept in the data directory.

The first key that proves an id owns it; the table is rewritten atomically
on the file pool whenever it changes (claims made during a write go into the
next one) and read once at start-up.
"""
import base64
import json

from relayd.core.tablefile import TableFile


FILE_NAME = "peer_keys.json"


class DamagedTable(Exception):
    """peer_keys.json cannot be read; the message says what to do."""


class Ownership(TableFile):
    """Loaded when the daemon starts, before anything listens."""

    def __init__(self, path, file_pool):
        super().__init__(path, file_pool)
        self._owners = {}          # peer id -> raw 32-byte public key

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
        self.loaded = True

    def owner(self, peer_id):
        return self._owners.get(peer_id)

    def claim(self, peer_id, public_key):
        """Bind ``peer_id`` to ``public_key`` unless another key owns it."""
        current = self._owners.get(peer_id)
        if current is not None:
            return current == public_key
        self._owners[peer_id] = public_key
        self.save()
        return True

    def replace(self, peer_id, public_key):
        """Bind ``peer_id`` to ``public_key`` whichever key owned it (a
        cluster's engine decided between two claims); the key it had, or None."""
        current = self._owners.get(peer_id)
        if current != public_key:
            self._owners[peer_id] = public_key
            self.save()
        return current

    def snapshot(self):
        return dict(self._owners)

    @staticmethod
    def encode(owners):
        """The JSON table of ``owners`` (peer id -> raw key); on the file thread."""
        return json.dumps({p: base64.b64encode(k).decode() for p, k in owners.items()},
                          indent=0).encode()

    def __len__(self):
        return len(self._owners)

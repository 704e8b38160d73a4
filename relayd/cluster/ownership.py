"""Key ownership shared by the nodes of a cluster.

An id claimed with a key on one node is owned on every node: the node's own
table (``core.ownership``, which the protocol and the key directory read)
stays the one they ask, and each new claim is also written to the engine's
owners bucket (create-only: the first claim of an id wins); every node loads
the bucket when it links to the engine and takes each claim stored since
from the bucket's stream, live.

The bucket decides: a node that claimed an id with another key (at the same
moment, or while it was cut off from the engine) gives the id up to the
bucket's key, and ``lost`` callbacks disconnect the sessions that proved the
other key there.
"""
import base64
import json

from twisted.logger import Logger


class SharedOwnership:
    log = Logger()

    def __init__(self, local):
        self.local = local
        self.share = None               # set by the cluster node: share(peer_id, key)
        self.lost = []                  # lost(peer_id): this node's claim lost to the bucket's

    def owner(self, peer_id):
        return self.local.owner(peer_id)

    def claim(self, peer_id, public_key):
        new = self.local.owner(peer_id) is None
        claimed = self.local.claim(peer_id, public_key)
        if claimed and new and self.share is not None:
            self.share(peer_id, public_key)
        return claimed

    def learn(self, value):
        """A claim from the engine (the bucket's JSON value): take it here."""
        if not value:
            return                      # a delete marker: claims are kept for good
        try:
            record = json.loads(value)
            peer_id, key = record["peer"], base64.b64decode(record["key"], validate=True)
        except (ValueError, KeyError, TypeError):
            self.log.warn("ignored a malformed ownership record from the cluster engine")
            return
        previous = self.local.replace(peer_id, key)
        if previous is not None and previous != key:
            self.log.warn("ownership conflict for {peer}: another node's claim with another "
                          "key came first; this node gives the id up to it",
                          peer=peer_id[:64])
            for lost in self.lost:
                lost(peer_id)

    @staticmethod
    def record(peer_id, public_key):
        return json.dumps({"peer": peer_id,
                           "key": base64.b64encode(public_key).decode()}).encode()

    def snapshot(self):
        return self.local.snapshot()

    def __len__(self):
        return len(self.local)

"""The mail a cluster node's own journal restores, and the one time it is
handed to the engine.

In a cluster the engine is every peer's mailbox: a message is in the
engine before the node journals it, and it leaves the engine when its peer
settles it, on whichever node.  A node's own journal never hears of a
settlement made on another node, so the mail its replay restores is not
the cluster's: kept, it would be offered again (as a repeat, possibly days
old) to a peer that had it elsewhere.  The node empties the mailboxes its
replay filled, before anything is served.

Except once: the journal of a relay that was not a cluster node before may
hold mail that is in no engine.  The first time a node starts in cluster
mode (no ``cluster_handover.json`` in its data directory) the mail its
replay restored is stored in the engine as mail for offline peers, and the
file is written once the engine holds all of it.  From then on, replayed
mail is left to the engine.
"""
import json
import os

from twisted.internet import defer

from relayd.core.tablefile import TableFile

FILE_NAME = "cluster_handover.json"
WINDOW = 256            # messages being stored in the engine at once


class Handover(TableFile):
    """``take`` at start-up, ``hand_over`` whenever the engine is ready."""

    def __init__(self, path, file_pool, clock):
        super().__init__(path, file_pool)
        self.clock = clock
        self.record = None          # the file's content: when the mail was handed over
        self.waiting = None         # {peer: [entry]} restored, to store in the engine
        self._storing = False

    def load(self):
        """Start-up only: whether the journal's mail was handed over before."""
        self.record = {"found": True} if os.path.exists(self.path) else None
        self.loaded = True

    def take(self, mailboxes):
        """Empty ``mailboxes``, as the replay left them (start-up, before
        anything is served); keep their mail to hand over if it never was."""
        restored = mailboxes.drain()
        count = sum(map(len, restored.values()))
        if self.record is not None:
            if count:
                self.log.info("cluster: {count} stored messages for {peers} peers replayed "
                              "from this node's own journal are left to the engine, which "
                              "holds the cluster's mail", count=count, peers=len(restored))
            return
        self.waiting = {peer: [entry for entry, _ in stored] for peer, stored in restored.items()}
        if not count:
            self._handed_over(None, 0, [])

    def hand_over(self, store):
        """The engine is ready: store each waiting message with ``store(peer,
        entry)`` (a Deferred), then write the file.  Fires the peers whose
        mail was stored, or None if there was nothing to do (or it failed:
        it is tried again at the next call)."""
        if self.waiting is None or self._storing:
            return defer.succeed(None)
        self._storing = True
        waiting = self.waiting
        items = [(peer, entry) for peer, entries in waiting.items() for entry in entries]
        d = self._store_all(store, items)
        d.addCallbacks(self._handed_over, self._failed, callbackArgs=(len(items), list(waiting)))
        return d

    @defer.inlineCallbacks
    def _store_all(self, store, items):
        """``WINDOW`` at a time: a journal of a million stored messages must
        not put a million requests on the engine link at once."""
        for start in range(0, len(items), WINDOW):
            yield defer.gatherResults([store(peer, entry)
                                       for peer, entry in items[start:start + WINDOW]],
                                      consumeErrors=True)

    def _handed_over(self, _, count, peers):
        self._storing = False
        self.waiting = None
        self.record = {"at": self.clock.seconds(), "messages": count}
        if count:
            self.log.info("cluster: {count} stored messages for {peers} peers, from this "
                          "node's journal before it joined the cluster, are now in the "
                          "engine", count=count, peers=len(peers))
        self.save()
        return peers

    def _failed(self, failure):
        self._storing = False
        self.log.warn("cluster: could not hand the stored mail of this node's journal to "
                      "the engine (tried again when it is next ready): {error}",
                      error=failure.value.subFailure.getErrorMessage()[:200])
        return None

    def snapshot(self):
        return dict(self.record)

    @staticmethod
    def encode(record):
        return json.dumps(record).encode()

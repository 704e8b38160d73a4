"""Federation from a cluster: the cluster is one relay to its peers.

Every node has the relay's id and federation key.  Each message and
delivery receipt the relay originates is stored, before its ack, in the
engine's federation stream (``ClusterNode.federate``); its sequence number
there is its federation seq, the same whichever node sends it.  One node at
a time, the *leader*, holds the federation links: it follows the stream
and floods each item as ``(relay id, stream seq)``, answers a peer's
catch-up for our items from the stream, and takes the peers' items into
the cluster through its router (and so the engine).  The leader is elected
through a KV key that lives ``[cluster] liveness`` seconds: the leader
rewrites it (compare-and-set on its revision) every third of that, the
others try to create it, which only succeeds once it has expired (or if
it names them: a leader back from an engine outage takes it back).  A new
leader loses nothing: peers catch up on what they lack of our items at
link-up, from the stream, and it starts from the old leader's cursors of
the peers' items (written to the engine as it goes).

In the engine, besides the stream: KV ``RELAYD_t(R)_FEDLEADER`` (the
leader's entry) and ``RELAYD_t(R)_FEDSTATE`` (``cursors``, and ``key``: the
fingerprint of the relay key of the first leader; a node with another key
never leads).
"""
import json

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from relayd.cluster.link import CONNECTED
from relayd.core import message
from relayd.federation.frames import receipt_frame
from relayd.federation.hub import Hub
from relayd.federation.index import Cursor, Index

LEADER_KEY = "leader"
CURSORS_KEY = "cursors"
RELAY_KEY = "key"


class ClusterIndex(Index):
    """A cluster node's index: own items have no seq in the node's journal
    (the stream gives them one), so they are not leftovers to sequence."""

    def restore(self, record):
        if "fed" in record or "fed_lost" in record or "fed_cursors" in record:
            super().restore(record)


class ClusterHub(Hub):
    """The hub of a cluster node.  Own items get their seq from the
    federation stream and reach peers through ``own_item``; the router's
    records carry only the keys of the peers' items this node took in."""

    settle = None       # settle(peer, msg_id): a peer's receipt, for the engine's copy

    def message_key(self, entry):
        return self._pending.get(entry["msg_id"])

    def receipt_key(self):
        return None

    def durable(self, event):
        if event.seq is not None:       # a peer's item, taken in while this node leads
            super().durable(event)

    def delivered(self, entry, peer, timestamp, seq):
        """Own receipts reach peers through the federation stream."""

    def delivered_elsewhere(self, peer, msg_id):
        super().delivered_elsewhere(peer, msg_id)
        if self.settle is not None:
            self.settle(peer, msg_id)

    def _held(self, link, origin, seq, kind):
        if origin == self.relay_id:
            self.own_held(seq)              # an echo: every own item is in the stream
        return super()._held(link, origin, seq, kind)

    def own_held(self, seq):
        """The stream holds every own item up to ``seq`` (its seqs have no holes)."""
        self.index.cursors.setdefault(self.relay_id, Cursor()).raise_low(seq)

    def own_item(self, seq, data):
        """Item ``seq`` of the federation stream (``data``, as stored): flood it."""
        self.own_held(seq)
        record = json.loads(data)
        if "receipt" in record:
            self._send("receipts", (), (), receipt_frame, self.relay_id, seq, record["receipt"],
                       record["to"], record["timestamp"])
        else:
            self._flood(self.relay_id, seq, record, data)


def own_record(seq, data):
    """``(seq, kind, record)``, a catch-up item without its origin, of a stream message."""
    record = json.loads(data)
    if "receipt" in record:
        return seq, "r", record
    return seq, "m", message.entry_of(record)


class Election:
    """Who leads: ``lead()`` when this node takes the key, ``stand_by()`` when
    it loses it (or the engine).  ``tick`` runs every ``ttl / 3``; ``can_run()``
    says whether the node may lead (linked, set up)."""

    log = Logger()

    def __init__(self, link, bucket, node, clock, ttl, replicas, lead, stand_by, can_run):
        self.link = link
        self.bucket = bucket
        self.node = node
        self.ttl = ttl
        self.replicas = replicas
        self.lead = lead
        self.stand_by = stand_by
        self.can_run = can_run
        self.leading = False
        self.revision = None            # of our entry, while leading
        self._bucket_ready = False
        self._asking = False
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = clock

    def start(self):
        self._loop.start(self.ttl / 3.0, now=True)

    def stop(self):
        """Stop trying; a leader stands down and frees the key for the others."""
        if self._loop.running:
            self._loop.stop()
        if not self.leading:
            return None
        revision = self.revision
        self._set(None)
        d = self.link.kv_delete(self.bucket, LEADER_KEY, revision)    # unless another took it
        d.addErrback(lambda f: None)    # it expires anyway
        return d

    def engine_lost(self):
        self._set(None)

    def tick(self):
        if self._asking or not self.can_run():
            return
        self._asking = True
        d = defer.succeed(None) if self._bucket_ready else self.link.ensure_kv(
            self.bucket, self.replicas, ttl=self.ttl)
        d.addCallback(self._claim)
        d.addCallbacks(self._set, self._failed)
        d.addBoth(self._asked)

    def _claim(self, _):
        self._bucket_ready = True
        return self.link.kv_claim(self.bucket, LEADER_KEY, self.node.encode(), self.revision)

    def _asked(self, _):
        self._asking = False

    def _failed(self, failure):
        if self.leading:
            self.log.warn("federation leadership not renewed: {error}",
                          error=failure.getErrorMessage()[:200])
        self._set(None)

    def _set(self, revision):
        self.revision = revision
        leading = revision is not None and self._loop.running
        if leading != self.leading:
            self.leading = leading
            (self.lead if leading else self.stand_by)()


class FederationLeader(service.Service):
    """Runs the node's federation while the node leads (see the module)."""

    log = Logger()

    def __init__(self, node, hub, federation, link, clock, settings):
        self.node = node
        self.hub = hub
        self.federation = federation    # the FederationService, in standby mode
        self.link = link
        self.state_kv = node.stream + "_FEDSTATE"
        self.election = Election(link, node.stream + "_FEDLEADER", node.node, clock,
                                 settings.liveness, settings.replicas, self._lead,
                                 self._stand_by, lambda: node.ready)
        self._term = 0                  # bumped at each change of leadership
        self._following = None          # the stream subscription, while leading
        self._shared = None             # the cursors last written to the engine
        self._share = task.LoopingCall(self.share_cursors)
        self._share.clock = clock
        self._share_every = settings.liveness / 3.0
        hub.catchup.own = self.own_items
        hub.settle = node.settled_elsewhere
        node.federation = self
        link.watch(self._engine_state)

    @property
    def leading(self):
        return self.election.leading

    def startService(self):
        super().startService()
        self.election.start()

    def stopService(self):
        super().stopService()
        return self.election.stop()

    def _engine_state(self, state):
        if state != CONNECTED:
            self.election.engine_lost()

    def _lead(self):
        """Follow the stream, take the old leader's cursors, then link up."""
        self._term += 1
        term = self._term
        self.log.info("cluster node {node} leads the federation", node=self.node.node)
        d = self.link.follow(self.node.fed_stream, self.node.fed_subject, self._own_item)
        d.addCallback(self._followed, term)
        d.addCallback(self.hub.own_held)
        d.addCallback(lambda _: self.link.ensure_kv(self.state_kv, self.election.replicas))
        d.addCallback(self._check_key)
        d.addCallback(lambda _: self.link.kv_get(self.state_kv, CURSORS_KEY))
        d.addCallback(self._take_cursors)
        d.addCallback(lambda _: self._linked(term))
        d.addErrback(self._lead_failed, term)

    def _followed(self, subscription, term):
        if term != self._term:          # stood down meanwhile
            self._unfollow(subscription)
            raise defer.CancelledError()
        self._following = subscription
        return self.link.last_seq(self.node.fed_stream)

    def _unfollow(self, subscription):
        d = self.link.unsubscribe(subscription)
        d.addErrback(lambda f: None)    # it ends with the connection anyway

    @defer.inlineCallbacks
    def _check_key(self, _):
        """Go on only if this node has the cluster's relay key."""
        own = self.hub.identity.fingerprint
        if not (yield self.link.kv_create(self.state_kv, RELAY_KEY, own.encode())):
            cluster = (yield self.link.kv_get(self.state_kv, RELAY_KEY)).decode()
            if cluster != own:
                self.federation.standby_problem = (
                    "this node's relay key %s is not the cluster's %s: give it the cluster's "
                    "identity.key; it will not lead the federation" % (own, cluster))
                self.log.error("federation: {problem}",
                               problem=self.federation.standby_problem)
                self.election.stop()
                raise defer.CancelledError()

    def _take_cursors(self, value):
        """What the previous leader held of each peer's items, durably."""
        if value:
            for origin, low in json.loads(value).items():
                if origin != self.hub.relay_id and isinstance(low, int):
                    self.hub.index.cursors.setdefault(origin, Cursor()).raise_low(low)

    def _linked(self, term):
        if term == self._term and self.leading:
            self.federation.lead()
            self._share.start(self._share_every, now=False)

    def _lead_failed(self, failure, term):
        if term == self._term and not failure.check(defer.CancelledError):
            self.log.warn("could not take up the federation: {error}",
                          error=failure.getErrorMessage()[:200])
            self.election.engine_lost()

    def _stand_by(self):
        self._term += 1
        self.log.info("cluster node {node} no longer leads the federation", node=self.node.node)
        if self._share.running:
            self._share.stop()
        following, self._following = self._following, None
        if following is not None:
            self._unfollow(following)
        return self.federation.stand_by()

    def _own_item(self, seq, data):
        if self.leading:
            self.hub.own_item(seq, data)

    def share_cursors(self):
        """Write the durable watermark of each peer's items to the engine,
        for the next leader."""
        snapshot = self.hub.durable_snapshot()["cursors"]
        cursors = {origin: low for origin, (low, _) in snapshot.items()
                   if origin != self.hub.relay_id}
        if cursors == self._shared or not self.leading:
            return
        d = self.link.kv_put(self.state_kv, CURSORS_KEY, json.dumps(cursors).encode())
        d.addCallback(lambda _: setattr(self, "_shared", cursors))
        d.addErrback(lambda f: self.log.warn("could not share the federation cursors: {error}",
                                             error=f.getErrorMessage()[:200]))

    @defer.inlineCallbacks
    def own_items(self, held, limit):
        """Catch-up: ``(items, more)``, the first ``limit`` of our items from
        the stream that a peer holding ``held`` (a ``catchup.Held``) lacks."""
        items, start = [], 1 if held is None else held.low + 1
        while True:
            batch = yield self.link.messages(self.node.fed_stream, self.node.fed_subject,
                                             limit, start)
            for seq, data in batch:
                if held is None or not held.covers(seq, seq):
                    items.append((self.hub.relay_id,) + own_record(seq, data))
                    if len(items) == limit:
                        return items, True
            if len(batch) < limit:
                return items, False
            start = batch[-1][0] + 1


def build_leader(daemon, node):
    """Make the cluster node ``node`` one relay to the daemon's federation peers."""
    node.federate()
    leader = FederationLeader(node, daemon.federation.hub, daemon.federation, node.link,
                              daemon.reactor, daemon.settings.cluster)
    leader.setServiceParent(daemon)
    return leader

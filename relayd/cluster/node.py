"""One relayd node of a cluster: its router's journal, mailboxes and routing
go through the engine (NATS JetStream), see docs/OPERATIONS.md §Cluster.

In the engine, for the relay id ``R`` (``t(x)`` is a fixed-length hash of
``x``, so that any peer id or room name makes a valid subject and key):

- stream ``RELAYD_t(R)`` (replicated, ``[cluster] replicas``):
  ``relayd.t(R).mail.<node>.t(peer).-`` a directed message until its peer
  settles it, when it is deleted; ``<node>`` is the node that held the peer
  when it was sent, or ``_`` (this one; for a peer offline in the whole
  cluster the subject ends ``.t(msg_id)``, not ``.-``, so that a federation
  peer's receipt can delete it by subject); ``relayd.t(R).log.room.t(room)`` and ``.log.all`` room and broadcast
  messages (kept ``[mailbox] ttl``, like the mail);
- KV ``RELAYD_t(R)_SESSIONS``: ``t(peer)`` -> the node that holds it;
- KV ``RELAYD_t(R)_OWNERS``: ``t(peer)`` -> its owning key (see ``ownership``);
- KV ``RELAYD_t(R)_BANS``: ``t(ip)`` -> ``{"ip", "until"}``, each ban made on
  any node (``until`` 0: lifted);
- KV ``RELAYD_t(R)_MEMBERS``: ``t(peer).t(room)`` -> the latest persistent
  membership record of ``peer`` in ``room`` (joined or left), so that every
  node knows every persistent member; a room message stored for offline
  persistent members is stored in the engine for each of them, under
  ``relayd.t(R).mail._.t(peer).t(msg_id)``, read when the peer attaches on
  any node;
- KV ``RELAYD_t(R)_NODES`` (entries live ``[cluster] liveness``): the nodes
  alive, each refreshing its own entry; a session entry naming a node that is
  not alive counts as no entry, so a node's sessions are gone when it dies;
- with ``[federation]``, stream ``RELAYD_t(R)_FED`` (``relayd.t(R).fed``):
  each message and delivery receipt the relay originates, whose stream
  sequence is its federation seq (see ``relayd.cluster.federation``).

The node is its router's journal (``append``, ``add``): a message is in the engine,
held by a quorum, before the sender's ack; then a directed one goes on to the
node holding its peer through that node's durable consumer, and room and
broadcast messages to the nodes subscribed (core NATS, ``relayd.t(R).room.
t(room)`` for the nodes holding members of the room, ``relayd.t(R).all``).
The node's own data_dir journal still gets every record (history,
memberships, dedup across a restart); a message only once the engine holds it.
"""
import hashlib
import json
from collections import deque

from prometheus_client import Counter, Gauge
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relayd.cluster.link import CONNECTED
from relayd.core import message
from relayd.core.interfaces import IDurableEventSubscriber, IJournal, IPresenceObserver
from relayd.core.membership import is_member_record

MAILBOX_FETCH = 10000           # stored messages read from the engine for one attaching peer
# seconds before what the engine failed (set-up, a follow, a key claim, a
# table change) is tried again
RETRY = 1.0
REFUSAL = ("cluster_unavailable",
           "this node lost the cluster engine and cannot store messages; retry, or connect "
           "to another node")


class EngineUnavailable(Exception):
    """The node is not linked to the engine: nothing can be made durable."""


def t(text):
    """A subject- and key-safe name for ``text`` (any peer id, room or relay id)."""
    return hashlib.blake2s(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class ClusterMetrics:
    def __init__(self, registry):
        kw = {"registry": registry}
        self.engine_up = Gauge("relayd_cluster_engine_up",
                               "1 while this node is linked to the cluster engine", **kw)
        self.nodes = Gauge("relayd_cluster_nodes", "Cluster nodes alive, this one included", **kw)
        self.stored = Counter("relayd_cluster_engine_writes_total",
                              "Messages written to the engine's stream (acked by its quorum)",
                              ["kind"], **kw)
        self.forwarded = Counter("relayd_cluster_messages_in_total",
                                 "Messages received from other nodes through the engine",
                                 ["kind"], **kw)
        self.refused = Counter("relayd_cluster_refused_total",
                               "Messages refused because the engine was unreachable", **kw)
        self.deleted = Counter("relayd_cluster_mail_settled_total",
                               "Stored messages deleted from the engine once settled", **kw)


@implementer(IJournal, IDurableEventSubscriber, IPresenceObserver)
class ClusterNode(service.Service):
    name = "cluster"
    log = Logger()

    def __init__(self, settings, relay_id, router, link, journal, clock, registry=None,
                 mailbox_ttl=7 * 86400.0, handover=None):
        self.settings = settings
        self.node = settings.node
        self.router = router
        self.link = link
        self.journal = journal          # the node's own journal (IJournal)
        self.handover = handover        # Handover: the mail that journal's replay restored
        self.clock = clock
        self.mailbox_ttl = mailbox_ttl
        self.prefix = "relayd." + t(relay_id)
        self.stream = "RELAYD_" + t(relay_id)
        self.sessions_kv = self.stream + "_SESSIONS"
        self.nodes_kv = self.stream + "_NODES"
        self.owners_kv = self.stream + "_OWNERS"
        self.bans_kv = self.stream + "_BANS"
        self.members_kv = self.stream + "_MEMBERS"
        self.ownership = None           # SharedOwnership, when the node shares key claims
        self._unshared = {}             # peer id -> key claimed here, not yet in the engine
        self.guard = None               # AbuseGuard, when the node shares bans
        self._applying = None           # the ip whose ban from the engine is being applied
        self._unsent = {}               # (bucket, key) -> value changed here, not yet in the engine
        self._putting = {}              # (bucket, key) -> the latest value being put
        self._retry = None              # DelayedCall: share what the engine failed, again
        self._tables = {}               # bucket -> learn(value), for the shared tables
        self._followers = {}            # bucket -> handle of the consumer of its stream
        self._epoch = 0                 # one more at each link lost: its followers are stale
        self.ready = False              # linked, and the engine's streams are set up
        self._set_up = False
        self.members = {}               # node id -> its heartbeat {"sessions": n, "at": t}
        self.local = {}                 # peer id -> session attached here
        self._unregistered = set()      # sessions attached while the engine was away
        self.rooms = {}                 # room -> Deferred[subscription handle]
        self._leaving = {}              # peer -> its detaches whose session entry may still name us
        self._entry_locks = {}          # peer -> DeferredLock: its session entry's changes, in order
        self._closing = set()           # rooms left here, kept while a persistent member is leaving
        self.seqs = {}                  # peer -> {msg_id: stream seq} of its mail in the engine
        self._from_engine = None        # msg_id of the room/broadcast message being accepted
        self.listener = None            # IJournal: told of the lines given to ``add``
        self._adding = deque()          # [result] of each line given to ``add``, in order
        self.metrics = ClusterMetrics(registry) if registry is not None else None
        self.relay_id = relay_id
        self.fed_stream = self.fed_subject = None       # set by ``federate``
        self.federation = None          # the FederationLeader, on a federated cluster
        self._heartbeat = task.LoopingCall(self.beat)
        self._heartbeat.clock = clock
        router.observe(self)
        router.subscribe(self)
        link.watch(self._engine_state)

    def federate(self):
        """Put each message and receipt this relay originates in the
        federation stream too, before its ack."""
        self.fed_stream = self.stream + "_FED"
        self.fed_subject = self.prefix + ".fed"

    # --- lifecycle ------------------------------------------------------------

    def startService(self):
        super().startService()
        if self.handover is not None:
            self.handover.take(self.router.mailboxes)
        self._heartbeat.start(max(self.settings.liveness / 3.0, 0.1), now=False)
        if self.link.state == CONNECTED:
            self._engine_state(CONNECTED)

    def stopService(self):
        """Leave the cluster: this node's entry goes, so that the others take
        its peers for offline at once (their mail waits in the engine)."""
        super().stopService()
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        was_ready, self.ready = self.ready, False
        if not was_ready:
            return None
        d = self.link.kv_delete(self.nodes_kv, self.node)
        d.addErrback(lambda f: self.log.warn("could not leave the cluster cleanly: {error}",
                                             error=f.getErrorMessage()[:200]))
        return d

    def _engine_state(self, state):
        if not self.running:
            return
        if state != CONNECTED:
            self._drop_followers()
            self._set_ready(False)
        elif self._set_up:
            for room, subscription in self.rooms.items():
                if subscription is None:
                    self.rooms[room] = self.link.subscribe(self._room_subject(room), self._remote)
            for bucket in self._tables:
                # a consumer of the last link may be gone; and what changed meanwhile
                self._follow_table(bucket, self._epoch)
            self._set_ready(True)
            self.beat()
        else:
            self._setup().addCallbacks(self._setup_done, self._setup_failed)

    def _set_ready(self, ready):
        if ready != self.ready:
            self.ready = ready
            if ready:
                # peers and key claims that came while the engine was away
                waiting, self._unregistered = self._unregistered, set()
                for session in waiting:
                    if self.local.get(session.peer_id) is session:
                        self._register(session)
                self._share_pending()
                if self.handover is not None:
                    self.handover.hand_over(self._store_found).addCallback(self._found_stored)
            self.log.info("cluster node {node}: {state}", node=self.node,
                          state="accepting messages" if ready else "engine lost, refusing messages")
        if self.metrics is not None:
            self.metrics.engine_up.set(1 if ready else 0)

    @defer.inlineCallbacks
    def _setup(self):
        s, link, p = self.settings, self.link, self.prefix
        yield link.ensure_stream(self.stream, [p + ".mail.>", p + ".log.>"], s.replicas,
                                 self.mailbox_ttl)
        if self.fed_stream is not None:
            yield link.ensure_stream(self.fed_stream, [self.fed_subject], s.replicas,
                                     self.mailbox_ttl)
        yield link.ensure_kv(self.sessions_kv, s.replicas)
        yield link.ensure_kv(self.nodes_kv, s.replicas, ttl=s.liveness)
        yield self._table(self.members_kv, self._learn_member)
        if self.guard is not None:
            yield self._table(self.bans_kv, self._learn_ban)
        if self.ownership is not None:
            shared = yield self._table(self.owners_kv, self.ownership.learn)
            for peer_id, key in self.ownership.snapshot().items():
                if t(peer_id) not in shared:
                    self._unshared[peer_id] = key       # claimed here before
        yield link.consume(self.stream, "%s.mail.%s.>" % (p, self.node),
                           "node_" + self.node, self._mail)
        yield link.subscribe(p + ".all", self._remote)
        for room in list(self.rooms):
            self.rooms[room] = link.subscribe(self._room_subject(room), self._remote)

    @defer.inlineCallbacks
    def _table(self, bucket, learn):
        """Set up a table shared through ``bucket``: ``learn(value)`` each
        change as the bucket stores it, then each value it holds; fires those
        values."""
        yield self.link.ensure_kv(bucket, self.settings.replicas)
        self._tables[bucket] = learn
        return (yield self._follow(bucket, self._epoch))

    @defer.inlineCallbacks
    def _follow(self, bucket, epoch):
        """Follow the changes ``bucket`` stores, then read what it holds.

        The changes come from the bucket's stream, not from its subject: a
        subscriber of the subject sees every write tried, the create that
        lost to another and the put the engine could not store."""
        learn = self._tables[bucket]
        if bucket not in self._followers:
            handle = yield self.link.follow("KV_" + bucket, "$KV.%s.>" % bucket,
                                            lambda seq, value: learn(value))
            if epoch == self._epoch and bucket not in self._followers:
                self._followers[bucket] = handle
            else:                       # the link was lost meanwhile, or another follows
                self._unfollow(handle)
        return (yield self._read_table(bucket, learn))

    def _follow_table(self, bucket, epoch):
        """``_follow`` for the link of ``epoch``; again a second later if the
        engine fails it."""
        if epoch != self._epoch or not self.running:
            return                      # a newer link follows it
        self._follow(bucket, epoch).addErrback(self._follow_failed, bucket, epoch)

    def _follow_failed(self, failure, bucket, epoch):
        self.log.warn("could not follow the cluster's {bucket}: {error}; trying again",
                      bucket=bucket, error=failure.getErrorMessage()[:200])
        self.clock.callLater(RETRY, self._follow_table, bucket, epoch)

    def _drop_followers(self):
        """The tables' consumers belong to a link that is gone (or to a
        set-up that failed): the next link follows afresh."""
        self._epoch += 1
        followers, self._followers = self._followers, {}
        for handle in followers.values():
            self._unfollow(handle)

    def _unfollow(self, handle):
        self.link.unsubscribe(handle).addErrback(lambda f: None)    # it ends with the link

    def _read_table(self, bucket, learn):
        """Deferred[the values in ``bucket``], each given to ``learn`` first."""
        def learn_all(items):
            for value in items.values():
                learn(value)
            return items
        return self.link.kv_items(bucket).addCallback(learn_all)

    def _put_shared(self, bucket, key, value):
        """Put a change made here in ``bucket`` (when the engine is back, if
        it is away; again a second later if the engine failed it)."""
        if not self.ready:
            self._unsent[(bucket, key)] = value
            return
        self._putting[(bucket, key)] = value
        d = self.link.kv_put(bucket, key, value)
        d.addBoth(self._put_done, bucket, key, value)

    def _put_done(self, result, bucket, key, value):
        latest = self._putting.get((bucket, key)) is value
        if latest:
            del self._putting[(bucket, key)]
        if isinstance(result, Failure):
            self.log.warn("could not share a change with the cluster ({bucket}): {error}; "
                          "trying again", bucket=bucket, error=result.getErrorMessage()[:200])
            if latest:                  # else a later change of the key is on its way
                self._unsent.setdefault((bucket, key), value)
                self._retry_pending()

    def _share_pending(self):
        """Share the key claims and table changes that wait for the engine."""
        claims, self._unshared = self._unshared, {}
        for peer_id, key in claims.items():
            if self.ownership.owner(peer_id) == key:        # not given up meanwhile
                self._share_claim(peer_id, key)
        unsent, self._unsent = self._unsent, {}
        for (bucket, key), value in unsent.items():
            self._put_shared(bucket, key, value)

    def _retry_pending(self):
        if self._retry is None or not self._retry.active():
            self._retry = self.clock.callLater(RETRY, self._retried)

    def _retried(self):
        self._retry = None
        if self.running and self.ready:
            self._share_pending()       # else the next ready shares them

    def _setup_done(self, _):
        self._set_up = True
        if self.link.state == CONNECTED:
            self._set_ready(True)
            self.beat()

    def _setup_failed(self, failure):
        self._drop_followers()
        self.log.warn("cluster engine set-up failed ({error}); retrying",
                      error=failure.getErrorMessage()[:200])
        if self.running:
            self.clock.callLater(RETRY, self._engine_state, self.link.state)

    def share_ownership(self, ownership):
        """Share the key claims of ``ownership`` (a ``SharedOwnership``) with
        the other nodes."""
        self.ownership = ownership
        ownership.share = self._share_claim

    def _share_claim(self, peer_id, public_key):
        if not self.ready:
            self._unshared[peer_id] = public_key        # shared when the engine is back
            return
        d = self.link.kv_create(self.owners_kv, t(peer_id),
                                self.ownership.record(peer_id, public_key))
        d.addCallback(lambda created: None if created else self.link.kv_get(
            self.owners_kv, t(peer_id)).addCallback(self.ownership.learn))
        d.addErrback(self._claim_not_shared, peer_id, public_key)

    def _claim_not_shared(self, failure, peer_id, public_key):
        self.log.warn("could not share the key claim of {peer}: {error}; trying again",
                      peer=peer_id[:64], error=failure.getErrorMessage()[:200])
        self._unshared.setdefault(peer_id, public_key)
        self._retry_pending()

    def share_guard(self, guard):
        """Share the bans of ``guard`` (an ``AbuseGuard``) with the other nodes."""
        self.guard = guard
        guard.on_ban.append(self._banned)
        guard.on_unban.append(self._banned)

    def _banned(self, ip):
        """A ban made or lifted here: the other nodes apply it too."""
        if ip == self._applying:
            return
        left = self.guard.banned(ip)
        until = 0 if left is None else self.clock.seconds() + left
        self._put_shared(self.bans_kv, t(ip), json.dumps({"ip": ip, "until": until}).encode())

    def _learn_ban(self, value):
        """A ban from the engine (this node's own come back, and change nothing)."""
        if not value:
            return                      # a deleted entry
        record = json.loads(value)
        ip, left = record["ip"], record["until"] - self.clock.seconds()
        self._applying = ip
        try:
            if left <= 0:
                self.guard.unban(ip)
            elif (self.guard.banned(ip) or 0) < left - 1.0:
                self.guard.ban(ip, left, reason="cluster")
        finally:
            self._applying = None

    def _learn_member(self, value):
        """A persistent membership record from the engine."""
        if value:
            self.router.memberships.restore(json.loads(value))

    # --- liveness ---------------------------------------------------------------

    def beat(self):
        """Refresh this node's entry and read which nodes are alive."""
        if not self.ready:
            return
        info = json.dumps({"sessions": len(self.local), "at": self.clock.seconds()}).encode()
        d = self.link.kv_put(self.nodes_kv, self.node, info)
        d.addCallback(lambda _: self.link.kv_items(self.nodes_kv))
        d.addCallbacks(self._members, self._beat_failed)

    def _members(self, items):
        self.members = {node: json.loads(value) for node, value in items.items()}
        if self.metrics is not None:
            self.metrics.nodes.set(len(self.members))

    def _beat_failed(self, failure):
        self.log.warn("cluster heartbeat failed: {error}", error=failure.getErrorMessage()[:200])

    # --- the router's journal (IJournal) ----------------------------------------

    def append(self, line):
        """Put what the cluster needs of ``line`` in the engine and journal it
        here; fires once both hold it.  A message is journaled here only once
        the engine has it: one the engine refused (or had not taken when the
        node stopped) would come back at restart into the dedup window, and
        the sender's retry would be acked as a repeat of a message no node
        holds."""
        record = json.loads(line)
        if message.is_message(record):
            d = self._store(message.entry_of(record), line, record.get("held_for", ()))
            d.addCallback(lambda _: self.journal.append(line))
            return d
        if "receipt" in record:
            engine = self._settled(record["receipt"], record.get("to"))
            if self.fed_stream is not None and "fed" not in record:     # made here
                engine = self._federated(engine, line, record["receipt"] + "@" + t(record["to"]))
        elif is_member_record(record):
            self._put_shared(self.members_kv, "%s.%s" % (t(record["member"]), t(record["room"])),
                             line)
            engine = defer.succeed(None)
        else:
            engine = defer.succeed(None)
        d = defer.gatherResults([engine, self.journal.append(line)], consumeErrors=True)
        d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)
        return d

    def add(self, line):
        """``append`` without a Deferred: the ``listener`` hears of each line
        once it is in the engine and here, in the order given."""
        slot = [None]
        self._adding.append(slot)
        self.append(line).addBoth(self._added, slot)

    def _added(self, result, slot):
        slot[0] = result if isinstance(result, Failure) else True
        while self._adding and self._adding[0][0] is not None:
            done = self._adding.popleft()[0]
            self.listener(1, done if isinstance(done, Failure) else None)

    def _store(self, entry, line, held_for):
        msg_id, to, room = entry["msg_id"], entry["to"], entry.get("room")
        if room is None and to != message.BROADCAST:
            if msg_id in self.seqs.get(to, ()) or to == entry["from"]:
                return defer.succeed(None)      # from the engine; or to oneself, never sent
            if not self.ready:
                return self._refuse()
            d = self._holder(to)
            d.addCallback(lambda node: self.link.store(
                self._mail_subject(node, to, msg_id if node == "_" and to not in self.local
                                   else None), line, msg_id))
            d.addCallback(self._stored_mail, to, msg_id)
            return self._own_federated(d, entry)
        if self._from_engine == msg_id:
            # the node that accepted it held it for the members offline in the
            # cluster; one that just left here may have looked attached here
            leaving = [peer for peer in held_for if peer in self._leaving]
            return self._hold_for(entry, leaving) if leaving and self.ready \
                else defer.succeed(None)
        if not self.ready:
            return self._refuse()
        if room is not None:
            log, live, kind = ".log.room." + t(room), self._room_subject(room), "room"
        else:
            log, live, kind = ".log.all", self.prefix + ".all", "broadcast"
        d = self.link.store(self.prefix + log, line, msg_id)
        if held_for:
            d.addCallback(lambda ack: self._hold_for(entry, held_for).addCallback(lambda _: ack))
        d.addCallback(self._stored_shared, live, line, kind)
        return self._own_federated(d, entry)

    def _own_federated(self, d, entry):
        """``_federated`` for a message a client of this relay sent."""
        if self.fed_stream is None or entry["seen_by"] != [self.relay_id]:
            return d                    # not federated, or a peer relay's
        return self._federated(d, message.journal_line(entry), entry["msg_id"])

    def _federated(self, d, data, msg_id):
        """``d``, and ``data`` stored in the federation stream (if federated)."""
        if self.fed_stream is None:
            return d
        both = defer.gatherResults([d, self.link.store(self.fed_subject, data, msg_id)],
                                   consumeErrors=True)
        return both.addErrback(lambda f: f.value.subFailure)

    def _hold_for(self, entry, peers):
        """Store a room message in the engine for each of its persistent
        members ``peers`` that is offline in the whole cluster (or attached
        here and reading its stored mail); one attached to another node gets
        it there, live."""
        data = message.journal_line(entry)
        return defer.gatherResults(
            [self._holder(peer).addCallback(self._store_held, peer, data, entry["msg_id"])
             for peer in peers], consumeErrors=True)

    def _store_held(self, node, peer, data, msg_id):
        if node != "_":
            return None
        d = self.link.store(self._mail_subject("_", peer, msg_id), data,
                            "%s@%s" % (msg_id, t(peer)))
        d.addCallback(self._stored_mail, peer, msg_id)
        return d

    def _store_found(self, peer, entry):
        """Store ``entry``, mail for ``peer`` found in this node's journal from
        before it joined the cluster, as the peer's engine mail."""
        return self._store_held("_", peer, message.journal_line(entry), entry["msg_id"])

    def _found_stored(self, peers):
        """Peers attached here meanwhile get that mail now."""
        for peer in peers or ():
            session = self.local.get(peer)
            if session is not None:
                self._read_mail(session)

    def _mail_subject(self, node, peer, msg_id=None):
        """The subject of mail for ``peer`` held for ``node``: ending with
        ``t(msg_id)`` if given (``*``: any), else ``-`` (a subject per
        message costs the engine: only mail for offline peers has one)."""
        last = "-" if msg_id is None else msg_id if msg_id == "*" else t(msg_id)
        return "%s.mail.%s.%s.%s" % (self.prefix, node, t(peer), last)

    def settled_elsewhere(self, peer, msg_id):
        """A federation peer delivered ``msg_id`` to ``peer``: its copy
        waiting in the engine for the peer to come back goes."""
        if not self.ready:
            return
        d = self.link.purge(self.stream, self._mail_subject("_", peer, msg_id))
        d.addErrback(lambda f: self.log.warn("could not delete mail delivered elsewhere from "
                                             "the engine: {error}",
                                             error=f.getErrorMessage()[:200]))

    def _refuse(self):
        if self.metrics is not None:
            self.metrics.refused.inc()
        return defer.fail(EngineUnavailable("the cluster engine is unreachable"))

    def locate(self, peer):
        """Deferred[the id of the live node holding ``peer``, or None if no
        node does]; fails with ``EngineUnavailable`` while the engine is away."""
        if peer in self.local:
            return defer.succeed(self.node)
        if not self.ready:
            return defer.fail(EngineUnavailable("the cluster engine is unreachable"))
        d = self._holder(peer)
        d.addCallback(lambda node: None if node == "_" else node)
        return d

    def _holder(self, peer):
        """Deferred[the node subject part for mail to ``peer``]: the live node
        holding it, or ``_`` (held here, or offline)."""
        if peer in self.local:
            return defer.succeed("_")
        d = self.link.kv_get(self.sessions_kv, t(peer))
        d.addCallback(self._alive)
        return d

    def _alive(self, value):
        """``value`` (a node id, or None) if it names another live node, else
        ``_``; a node not seen alive at the last heartbeat is asked about."""
        node = None if value is None else value.decode()
        if node is None or node == self.node:
            return "_"
        if node in self.members:
            return node
        d = self.link.kv_get(self.nodes_kv, node)
        d.addCallback(lambda info: "_" if info is None else node)
        return d

    def _stored_mail(self, ack, to, msg_id):
        seq, _ = ack
        if to in self.local:
            self.seqs.setdefault(to, {})[msg_id] = seq
        if self.metrics is not None:
            self.metrics.stored.labels("direct").inc()

    def _stored_shared(self, ack, subject, line, kind):
        seq, _ = ack
        if self.metrics is not None:
            self.metrics.stored.labels(kind).inc()
        return self.link.publish(subject, b"%s %d %s" % (self.node.encode(), seq, line))

    def _settled(self, msg_id, peer):
        seq = self.seqs.get(peer, {}).pop(msg_id, None)
        if seq is None or not self.ready:
            return defer.succeed(None)
        d = self.link.delete(self.stream, seq)
        d.addCallback(self._deleted)
        d.addErrback(lambda f: self.log.warn("could not delete settled mail from the engine: "
                                             "{error}", error=f.getErrorMessage()[:200]))
        return d

    def _deleted(self, found):
        if found and self.metrics is not None:
            self.metrics.deleted.inc()

    # --- messages from the engine -------------------------------------------------

    def _mail(self, seq, data):
        """The durable consumer: mail sent to this node for a peer held here.
        If the peer has moved meanwhile, the mail follows it to its node; if
        it is offline, the mail waits where it is for its next connection."""
        entry = message.entry_of(json.loads(data))
        if entry["to"] in self.local:
            self._accept(entry, seq)
        elif self.ready:
            d = self._holder(entry["to"])
            d.addCallback(self._reroute, entry, seq, data)
            d.addErrback(lambda f: self.log.warn("could not pass on mail for a peer that moved: "
                                                 "{error}", error=f.getErrorMessage()[:200]))

    def _reroute(self, node, entry, seq, data):
        if node == "_":
            return None
        d = self.link.store(self._mail_subject(node, entry["to"]), data,
                            "%s@%s" % (entry["msg_id"], node))
        d.addCallback(lambda _: self.link.delete(self.stream, seq))
        return d

    def _accept(self, entry, seq):
        peer = entry["to"]
        self.seqs.setdefault(peer, {})[entry["msg_id"]] = seq
        if self.metrics is not None:
            self.metrics.forwarded.labels("direct").inc()
        self.router.accept_remote(entry, self).addErrback(self._accept_failed)

    def _remote(self, data):
        """A room or broadcast message another node accepted."""
        origin, _, line = data.split(b" ", 2)
        if origin.decode() == self.node:
            return
        entry = message.entry_of(json.loads(line))
        if self.metrics is not None:
            self.metrics.forwarded.labels("room" if "room" in entry else "broadcast").inc()
        self._from_engine = entry["msg_id"]
        try:
            self.router.accept_remote(entry, self).addErrback(self._accept_failed)
        finally:
            self._from_engine = None

    def _accept_failed(self, failure):
        self.log.warn("a message from the cluster could not be journaled here: {error}",
                      error=failure.getErrorMessage()[:200])

    # --- presence (IPresenceObserver) --------------------------------------------

    def attached(self, session):
        self.local[session.peer_id] = session
        if self.ready:
            self._register(session)
        else:
            self._unregistered.add(session)

    def _register(self, session):
        """Name this node as the holder of ``session``'s peer, then deliver its
        engine mail."""
        peer = session.peer_id
        d = self._change_entry(peer, self.link.kv_put, self.sessions_kv, t(peer),
                               self.node.encode())
        d.addCallback(lambda _: self._read_mail(session))
        d.addErrback(self._mail_unread, peer)

    def _read_mail(self, session):
        """Deliver the engine mail of ``session``'s peer."""
        peer = session.peer_id
        d = self.link.messages(self.stream, self._mail_subject("*", peer, "*"), MAILBOX_FETCH)
        d.addCallback(self._stored_for, session)
        d.addErrback(self._mail_unread, peer)
        return d

    def _mail_unread(self, failure, peer):
        self.log.warn("could not read {peer}'s mail from the engine: {error}", peer=peer[:64],
                      error=failure.getErrorMessage()[:200])

    def _stored_for(self, stored, session):
        """The engine's mail for the peer of ``session``: new messages are
        accepted as from another node; those this node holds already (it
        accepted them, or they were sent to it before) go through its
        mailbox, unless they are there."""
        peer = session.peer_id
        if self.local.get(peer) is not session:
            return
        seqs = self.seqs.setdefault(peer, {})
        mailbox = self.router.mailboxes
        waiting = {entry["msg_id"] for entry, _ in mailbox.peek(peer)}
        again = False
        for seq, data in stored:
            entry = message.entry_of(json.loads(data))
            msg_id = entry["msg_id"]
            if "room" not in entry and not self.router.holds(msg_id):
                self._accept(entry, seq)
                continue
            seqs[msg_id] = seq
            if msg_id not in waiting:
                mailbox.put(peer, entry, message.delivery_line(data))
                again = True
        if again:
            self.router.deliver_stored(session, mailbox.peek(peer))

    def detached(self, session):
        """Drop the peer's session entry if it names this node. Until that is
        done, and for ``timeout`` after (an answer to a lookup made before it
        may still be on its way), other nodes may take the peer for attached
        here and pass its room messages on here, live: the rooms it leaves
        stay subscribed meanwhile, and what comes for it is stored in the
        engine (``_store``)."""
        peer = session.peer_id
        self._unregistered.discard(session)
        if self.local.get(peer) is session:
            del self.local[peer]
            self.seqs.pop(peer, None)
            if self.ready:
                self._leaving[peer] = self._leaving.get(peer, 0) + 1
                d = self._change_entry(peer, self._drop_entry, peer)
                d.addErrback(lambda f: None)    # its entry names a node; liveness covers it
                d.addCallback(lambda _: self.clock.callLater(self.settings.timeout,
                                                             self._left, peer))

    def _drop_entry(self, peer):
        """Delete the entry if it names this node, and only at the revision
        read: if the peer has attached to another node since, its write wins."""
        d = self.link.kv_entry(self.sessions_kv, t(peer))
        d.addCallback(lambda entry: self.link.kv_delete(self.sessions_kv, t(peer), entry[1])
                      if entry and entry[0] == self.node.encode() else None)
        return d

    def _change_entry(self, peer, change, *args):
        """``change(*args)``, a change to ``peer``'s session entry, once the
        changes this node made to it before are done (a quick detach must
        not read the entry before its attach has written it)."""
        lock = self._entry_locks.setdefault(peer, defer.DeferredLock())
        d = lock.run(change, *args)
        d.addBoth(self._entry_changed, peer, lock)
        return d

    def _entry_changed(self, result, peer, lock):
        if not lock.locked and not lock.waiting and self._entry_locks.get(peer) is lock:
            del self._entry_locks[peer]
        return result

    def _left(self, peer):
        """No node takes ``peer`` for attached here any more (from this detach)."""
        if self._leaving[peer] > 1:
            self._leaving[peer] -= 1
            return
        del self._leaving[peer]
        self._close_rooms()

    def room_opened(self, room):
        if room in self._closing:
            self._closing.discard(room)         # still subscribed
            return
        self.rooms[room] = self.link.subscribe(self._room_subject(room), self._remote) \
            if self.ready else None

    def room_closed(self, room):
        """Unsubscribe at the end of this turn (the router closes a leaving
        peer's rooms before it tells of its detach), unless a persistent
        member of the room is leaving: then once it has left."""
        self._closing.add(room)
        self.clock.callLater(0, self._close_rooms)

    def _close_rooms(self):
        memberships = self.router.memberships
        kept = {room for peer in self._leaving for room in memberships.rooms_of(peer)}
        for room in self._closing - kept:
            d = self.rooms.pop(room, None)
            if d is not None:
                d.addCallback(self.link.unsubscribe)
                d.addErrback(lambda f: None)    # a subscription ends with its connection anyway
        self._closing &= kept

    def _room_subject(self, room):
        return "%s.room.%s" % (self.prefix, t(room))

    # --- durable events (IDurableEventSubscriber) -----------------------------------

    def durable(self, event):
        """A directed message accepted here for a peer not held here: the
        engine's mailbox has it, the node's own mailbox lets it go."""
        entry = event.entry
        to, room = entry["to"], entry.get("room")
        if room is not None:
            # the node that accepted it stored it in the engine for the offline members
            for peer in self.router.memberships.members(room):
                if peer not in self.local:
                    self.router.delivered_elsewhere(peer, entry["msg_id"])
        elif event.source is not self and to != message.BROADCAST and to not in self.local:
            self.router.delivered_elsewhere(to, entry["msg_id"])

    def delivered(self, entry, peer, timestamp, seq):
        """Nothing to do: the receipt reaches the engine through ``append``."""

    # --- operations ---------------------------------------------------------------

    def refusal(self, sender, to, body):
        """A tcp send check: refuse while the engine is unreachable."""
        return None if self.ready else REFUSAL

    def health(self):
        return None if self.ready else "cluster engine %s" % self.link.state

    def summary(self):
        """For ``/health``: the engine link and the cluster's members."""
        summary = {"node": self.node, "engine": self.link.state, "server": self.link.server,
                   "ready": self.ready, "members": sorted(self.members)}
        if self.federation is not None:
            summary["federation_leader"] = self.federation.leading
        return summary

    def stats(self):
        return dict(self.summary(), nodes=self.members, sessions=len(self.local),
                    rooms=len(self.rooms))

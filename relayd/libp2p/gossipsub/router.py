"""The GossipSub router: subscriptions, meshes, heartbeat, gossip and scores.

I/O-free: each peer is reached through a *link* with ``send(rpc_bytes)``
and ``queued()`` (bytes not yet written), and RPCs come in through
``handle_rpc``.  The clock and the random source are injected.
"""
import os
import random

from twisted.logger import Logger

from relayd.libp2p.gossipsub import messages as gm
from relayd.libp2p.gossipsub.mcache import MessageCache, SeenCache


class Params:
    """Defaults from the GossipSub v1.0/v1.1 specs, plus relayd's bounds."""

    D, D_lo, D_hi, D_lazy = 6, 4, 12, 6
    gossip_factor = 0.25
    heartbeat_interval = 1.0
    history_length, history_gossip = 5, 3
    seen_ttl = 120.0
    prune_backoff = 60.0
    max_ihave_length = 5000        # ids asked for per peer and heartbeat
    max_ihave_messages = 10        # IHAVE RPCs taken per peer and heartbeat
    gossip_retransmission = 3
    max_message_size = 1024 * 1024
    max_topics = 64                # topics relayd subscribes to
    max_topics_per_peer = 256      # subscriptions kept per peer
    max_peers_per_topic = 10000
    max_queued = 4 * 1024 * 1024   # bytes waiting to a peer before forwarded messages are dropped
    strict_sign = True             # StrictSign: unsigned or badly signed messages are invalid
    invalid_penalty = 10.0         # score lost per invalid message or GRAFT in backoff
    penalty_decay = 0.9            # per heartbeat
    gossip_threshold = -10.0       # below: no gossip to or from the peer
    graylist_threshold = -80.0     # below: everything from the peer is ignored
    subscribe_all = False          # join every topic peers use (up to max_topics)

    def __init__(self, **overrides):
        for key, value in overrides.items():
            if not hasattr(Params, key):
                raise TypeError(f"unknown GossipSub parameter {key}")
            setattr(self, key, value)


class PeerState:
    __slots__ = ("peer_id", "link", "topics", "penalty", "ihaves", "asked", "pending")

    def __init__(self, peer_id):
        self.peer_id = peer_id
        self.link = None
        self.topics = set()
        self.penalty = 0.0
        self.ihaves = self.asked = 0
        self.pending = None         # an RPC being put together for this peer

    @property
    def score(self):
        return -self.penalty


class GossipRouter:
    log = Logger(namespace="relayd.gossipsub")

    def __init__(self, keypair, clock, params=None, rng=None):
        self.keypair = keypair
        self.clock = clock
        self.params = params or Params()
        self.rng = rng or random.Random()
        self.peers = {}             # PeerId -> PeerState
        self.topics = {}            # topic -> peers subscribed to it
        self.mesh = {}              # our topics -> mesh peers
        self.backoff = {}           # (topic, PeerId) -> until
        self.listeners = []         # listener(topic, message, from_peer)
        self.mcache = MessageCache(self.params.history_length, self.params.history_gossip)
        self.seen = SeenCache(clock, self.params.seen_ttl)
        self.seqno = int.from_bytes(os.urandom(4), "big") << 32
        self.counts = dict.fromkeys(("received", "delivered", "duplicates", "invalid", "published",
                                     "forwarded", "dropped", "graylisted", "ignored"), 0)

    # --- peers ----------------------------------------------------------------------
    def peer(self, peer_id):
        state = self.peers.get(peer_id)
        if state is None:
            state = self.peers[peer_id] = PeerState(peer_id)
        return state

    def attach(self, peer_id, link):
        """Our stream to ``peer_id`` is open: tell it what we are subscribed to."""
        state = self.peer(peer_id)
        state.link = link
        if self.mesh:
            self._send(state, gm.RPC(subscriptions=[(True, t) for t in self.mesh]))

    def remove(self, peer_id):
        state = self.peers.pop(peer_id, None)
        if state is None:
            return
        for topic in state.topics:
            self._forget_subscriber(topic, peer_id)
        for mesh in self.mesh.values():
            mesh.discard(peer_id)

    def _forget_subscriber(self, topic, peer_id):
        peers = self.topics.get(topic)
        if peers is not None:
            peers.discard(peer_id)
            if not peers:
                del self.topics[topic]
        mesh = self.mesh.get(topic)
        if mesh is not None:
            mesh.discard(peer_id)

    # --- our subscriptions ------------------------------------------------------------
    def subscribe(self, topic):
        if topic in self.mesh:
            return
        self.mesh[topic] = set()
        for state in self.peers.values():
            self._send(state, gm.RPC(subscriptions=[(True, topic)]))
        self._fill_mesh(topic)

    def unsubscribe(self, topic):
        mesh = self.mesh.pop(topic, None)
        if mesh is None:
            return
        for state in self.peers.values():
            rpc = gm.RPC(subscriptions=[(False, topic)])
            if state.peer_id in mesh:
                rpc.prune.append((topic, int(self.params.prune_backoff)))
            self._send(state, rpc)

    # --- publishing -------------------------------------------------------------------
    def publish(self, topic, data):
        """Sign and send ``data`` to every peer subscribed to ``topic`` (flood
        publishing, as v1.1 does for a peer's own messages); returns its id."""
        self.seqno += 1
        msg = gm.sign(self.keypair, topic, data, self.seqno.to_bytes(8, "big"))
        msg.encode()
        self.seen.add(msg.id)
        self.mcache.put(msg.id, msg)
        self.counts["published"] += 1
        for peer_id in self.topics.get(topic, ()):
            state = self.peers[peer_id]
            if state.score >= 0:
                self._forward(state, msg)
        return msg.id

    # --- input ------------------------------------------------------------------------
    def handle_rpc(self, peer_id, rpc):
        state = self.peer(peer_id)
        if state.score < self.params.graylist_threshold:
            self.counts["graylisted"] += 1
            return
        state.pending = reply = gm.RPC()
        for subscribe, topic in rpc.subscriptions:
            self._on_subscription(state, subscribe, topic)
        for msg in rpc.publish:
            self._on_message(state, msg)
        if rpc.ihave:
            self._on_ihave(state, rpc.ihave, reply)
        for msg_id in rpc.iwant[:self.params.max_ihave_length]:
            msg = self.mcache.get_for_peer(msg_id, peer_id, self.params.gossip_retransmission)
            if msg is not None:
                reply.publish.append(msg)
        for topic in rpc.graft:
            self._on_graft(state, topic, reply)
        for topic, backoff in rpc.prune:
            if peer_id in self.mesh.get(topic, ()):
                self.mesh[topic].discard(peer_id)
            self._set_backoff(topic, peer_id, backoff or self.params.prune_backoff)
        state.pending = None
        self._send(state, reply)

    def malformed(self, peer_id):
        """An RPC that could not be decoded counts as an invalid message."""
        self.counts["invalid"] += 1
        self._penalize(self.peer(peer_id))

    def _penalize(self, state):
        was = state.score
        state.penalty += self.params.invalid_penalty
        if was >= self.params.graylist_threshold > state.score:
            self.log.warn("gossipsub: peer {peer} graylisted (score {score:.0f}) after invalid "
                          "messages; ignored until its score recovers",
                          peer=str(state.peer_id), score=state.score)

    def _on_subscription(self, state, subscribe, topic):
        if not subscribe:
            if topic in state.topics:
                state.topics.discard(topic)
                self._forget_subscriber(topic, state.peer_id)
            return
        if topic in state.topics or len(state.topics) >= self.params.max_topics_per_peer:
            return
        peers = self.topics.setdefault(topic, set())
        if len(peers) >= self.params.max_peers_per_topic:
            return
        state.topics.add(topic)
        peers.add(state.peer_id)
        if (self.params.subscribe_all and topic not in self.mesh
                and len(self.mesh) < self.params.max_topics):
            self.subscribe(topic)

    def _valid(self, msg):
        if len(msg.raw) > self.params.max_message_size or len(msg.topic) > 256:
            return False
        if self.params.strict_sign:
            return gm.check_signature(msg)
        return msg.signature is None or gm.check_signature(msg)

    def _on_message(self, state, msg):
        self.counts["received"] += 1
        msg_id = msg.id
        if msg_id in self.seen:
            self.counts["duplicates"] += 1
            return
        if not self._valid(msg):
            self.counts["invalid"] += 1
            self._penalize(state)
            return
        self.seen.add(msg_id)
        mesh = self.mesh.get(msg.topic)
        if mesh is None:
            self.counts["ignored"] += 1         # a topic we are not in
            return
        self.mcache.put(msg_id, msg)
        self.counts["delivered"] += 1
        for listener in self.listeners:
            try:
                listener(msg.topic, msg, state.peer_id)
            except Exception:
                self.log.failure("gossipsub: a message listener failed")
        author = msg.sender
        for peer_id in mesh:
            if peer_id != state.peer_id and peer_id.bytes != author:
                self._forward(self.peers[peer_id], msg)

    def _on_ihave(self, state, ihaves, reply):
        p = self.params
        if state.score < p.gossip_threshold:
            return
        for topic, ids in ihaves:
            state.ihaves += 1
            if state.ihaves > p.max_ihave_messages or topic not in self.mesh:
                continue
            for msg_id in ids:
                if state.asked >= p.max_ihave_length:
                    return
                if msg_id not in self.seen:
                    state.asked += 1
                    reply.iwant.append(msg_id)

    def _on_graft(self, state, topic, reply):
        mesh = self.mesh.get(topic)
        if mesh is None:                        # not our topic: say no, without a penalty
            reply.prune.append((topic, int(self.params.prune_backoff)))
            return
        if self._backing_off(topic, state.peer_id):
            self._penalize(state)
            reply.prune.append((topic, int(self.params.prune_backoff)))
        elif state.score < 0:
            reply.prune.append((topic, int(self.params.prune_backoff)))
        else:
            mesh.add(state.peer_id)

    def _set_backoff(self, topic, peer_id, seconds):
        self.backoff[(topic, peer_id)] = self.clock.seconds() + seconds

    def _backing_off(self, topic, peer_id):
        until = self.backoff.get((topic, peer_id))
        return until is not None and until > self.clock.seconds()

    # --- output -----------------------------------------------------------------------
    def _forward(self, state, msg):
        if state.link is None or state.link.queued() > self.params.max_queued:
            self.counts["dropped"] += 1
            return
        self.counts["forwarded"] += 1
        if state.pending is not None:
            state.pending.publish.append(msg)
        else:
            self._send(state, gm.RPC(publish=[msg]))

    def _send(self, state, rpc):
        if rpc and state.link is not None:
            state.link.send(rpc.encode())

    # --- heartbeat --------------------------------------------------------------------
    def _fill_mesh(self, topic, out=None):
        """GRAFT peers until the mesh has D of them."""
        mesh = self.mesh[topic]
        candidates = [p for p in self.topics.get(topic, ()) if p not in mesh
                      and self.peers[p].link is not None and self.peers[p].score >= 0
                      and not self._backing_off(topic, p)]
        chosen = self.rng.sample(candidates, min(len(candidates), self.params.D - len(mesh)))
        for peer_id in chosen:
            mesh.add(peer_id)
            if out is None:
                self._send(self.peers[peer_id], gm.RPC(graft=[topic]))
            else:
                out.setdefault(peer_id, gm.RPC()).graft.append(topic)

    def heartbeat(self):
        p = self.params
        out = {}                                # PeerId -> RPC sent at the end
        for topic, mesh in self.mesh.items():
            for peer_id in [x for x in mesh if self.peers[x].score < 0]:
                mesh.discard(peer_id)
                self._set_backoff(topic, peer_id, p.prune_backoff)
                out.setdefault(peer_id, gm.RPC()).prune.append((topic, int(p.prune_backoff)))
            if len(mesh) < p.D_lo:
                self._fill_mesh(topic, out)
            if len(mesh) > p.D_hi:
                for peer_id in self.rng.sample(sorted(mesh, key=lambda x: x.bytes), len(mesh) - p.D):
                    mesh.discard(peer_id)
                    self._set_backoff(topic, peer_id, p.prune_backoff)
                    out.setdefault(peer_id, gm.RPC()).prune.append((topic, int(p.prune_backoff)))
            self._emit_gossip(topic, mesh, out)
        for peer_id, rpc in out.items():
            if peer_id in self.peers:
                self._send(self.peers[peer_id], rpc)
        self.mcache.shift()
        self.seen.expire()
        now = self.clock.seconds()
        self.backoff = {k: until for k, until in self.backoff.items() if until > now}
        for state in self.peers.values():
            state.penalty *= p.penalty_decay
            if state.penalty < 0.01:
                state.penalty = 0.0
            state.ihaves = state.asked = 0

    def _emit_gossip(self, topic, mesh, out):
        ids = self.mcache.gossip_ids(topic)[-self.params.max_ihave_length:]
        if not ids:
            return
        others = [x for x in self.topics.get(topic, ()) if x not in mesh
                  and self.peers[x].link is not None
                  and self.peers[x].score >= self.params.gossip_threshold]
        count = max(self.params.D_lazy, int(self.params.gossip_factor * len(others)))
        for peer_id in self.rng.sample(others, min(count, len(others))):
            out.setdefault(peer_id, gm.RPC()).ihave.append((topic, ids))

    # --- views ------------------------------------------------------------------------
    def stats(self):
        return dict(self.counts, peers=len(self.peers), topics=len(self.topics),
                    subscribed=sorted(self.mesh),
                    mesh={t: len(m) for t, m in self.mesh.items()},
                    mcache=len(self.mcache), seen=len(self.seen))

    def mesh_peers(self, topic):
        return sorted(str(p) for p in self.mesh.get(topic, ()))


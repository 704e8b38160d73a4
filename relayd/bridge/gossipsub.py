"""GossipSub topics and relayd rooms of the same name as one room.

In: a GossipSub message (payload ``"<peer id>: <text>"``, seed 004) becomes
a room message from its signed ``from`` peer id, with the text as body (the
prefix is taken off when it names that sender).  Its id comes from the
GossipSub message id (as the nonce), so every relay that bridges the topic
makes the same entry and federation's dedup keeps one.

Entries made here carry ``"via": "gossipsub"`` (kept by the journal and by
federation), and such entries never go back out.

Out: a room message from relayd's own network (a client of this relay, or,
with ``federated``, of another relay) is published on the topic, signed
with the relay's key, as ``"<sender>: <text>"``.  So each message crosses
the bridge once; where several federated relays bridge one topic they run
with ``federated`` off and each publishes what entered at it.
"""
import hashlib

from twisted.logger import Logger
from zope.interface import implementer

from relayd.core import message
from relayd.core.interfaces import IDurableEventSubscriber
from relayd.libp2p.peerid import PeerId

VIA = "gossipsub"
MAX_BODY = 60 * 1024    # a bridged line still fits [tcp] max_line's default 64 KiB


def utf8(text):
    """``text`` in UTF-8, a lone surrogate (which relayd's clients may send as
    a JSON escape, and UTF-8 cannot carry) as U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


@implementer(IDurableEventSubscriber)
class GossipRoomBridge:
    """Admits bridged entries through ``router.accept_remote`` (as the
    relay's own: no source) and hears durable room messages as the router's
    subscriber."""

    log = Logger(namespace="relayd.bridge")

    def __init__(self, router, rooms, relay_id, clock, federated=True):
        self.router = router
        self.rooms = set(rooms)
        self.relay_id = relay_id
        self.clock = clock
        self.federated = federated
        self.gossip = None
        self.counts = {"in": 0, "out": 0, "refused": 0}
        router.subscribe(self)

    def attach(self, gossip_router):
        self.gossip = gossip_router
        gossip_router.listeners.append(self.from_gossip)

    # --- GossipSub -> room ------------------------------------------------------------
    def from_gossip(self, topic, msg, via):
        if topic not in self.rooms:
            return
        try:
            sender = str(PeerId(msg.sender))
            text = msg.data.decode("utf-8")
        except (ValueError, TypeError):
            self.counts["refused"] += 1     # unsigned (permissive mode) or not UTF-8
            return
        if len(msg.data) > MAX_BODY:
            self.counts["refused"] += 1
            return
        prefix = sender + ": "
        body = text[len(prefix):] if text.startswith(prefix) else text
        nonce = hashlib.sha256(msg.id).hexdigest()
        entry = message.new_entry(sender, message.room_target(topic), body, self.clock.seconds(),
                                  self.relay_id, room=topic, nonce=nonce)
        entry["via"] = VIA
        self.counts["in"] += 1
        d = self.router.accept_remote(entry, None)
        d.addErrback(lambda f: self.log.failure("a bridged message could not be admitted", f))

    # --- room -> GossipSub ------------------------------------------------------------
    def durable(self, event):
        entry = event.entry
        room = entry.get("room")
        if room not in self.rooms or entry.get("via") == VIA or self.gossip is None:
            return
        if event.source is not None and not self.federated:
            return
        self.gossip.publish(room, utf8(f"{entry['from']}: {entry['body']}"))
        self.counts["out"] += 1

    def delivered(self, entry, peer, timestamp, seq):
        """Directed deliveries do not concern a room bridge."""

    def stats(self):
        return dict(self.counts, rooms=sorted(self.rooms))

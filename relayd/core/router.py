"""The router: the admission pipeline and delivery, wired together.

``relayd.core.pipeline`` admits messages (dedup -> journal -> a
``DurableEvent`` for the subscribers: federation, bridges) and knows no
sessions; ``relayd.core.delivery`` keeps the sessions, rooms and mailboxes
and knows no journal.  They meet through ``IDelivery`` and ``IRecorder``
(``relayd.core.interfaces``).  The router is what the protocols, the
journal's replay and the operator commands hold: each call goes to the
side that owns it.
"""
from twisted.logger import Logger

from relayd.core import message
from relayd.core.delivery import Delivery
from relayd.core.history import conversation
from relayd.core.membership import Memberships
from relayd.core.metrics import RouterCollector
from relayd.core.pipeline import Pipeline

_DELIVERY = ("attach", "detach", "deliver_stored", "resume", "handed", "acknowledged",
             "delivered_elsewhere", "join", "leave", "flush", "hold", "release",
             "clients", "kick", "rooms", "observe")
_PIPELINE = ("accept_remote", "holds", "subscribe", "unsettled")


def _pipeline_attribute(name):
    """A router attribute that is the pipeline's, read and set."""
    return property(lambda self: getattr(self.pipeline, name),
                    lambda self, value: setattr(self.pipeline, name, value))


class Router:
    log = Logger()

    def __init__(self, relay_id, clock, dedup, mailboxes, history, ownership,
                 retention, registry=None, memberships=None):
        self.relay_id = relay_id
        self.clock = clock
        self.ownership = ownership
        self.retention = retention
        self.pipeline = Pipeline(relay_id, clock, dedup, history)
        self.delivery = Delivery(clock, mailboxes,
                                 memberships if memberships is not None else Memberships(64, 1000),
                                 self.pipeline)
        self.pipeline.delivery = self.delivery
        for name in _DELIVERY:
            setattr(self, name, getattr(self.delivery, name))
        for name in _PIPELINE:
            setattr(self, name, getattr(self.pipeline, name))
        if registry is not None:
            registry.register(RouterCollector(self.pipeline, self.delivery))

    # the state other parts wire to (checkpoints, tests)
    dedup = property(lambda self: self.pipeline.dedup)
    history = property(lambda self: self.pipeline.history)
    subscribers = property(lambda self: self.pipeline.subscribers)
    mailboxes = property(lambda self: self.delivery.mailboxes)
    memberships = property(lambda self: self.delivery.memberships)
    sessions = property(lambda self: self.delivery.sessions)
    members = property(lambda self: self.delivery.members)

    # what the daemon wires in (federation's sequencer, the cluster's journal)
    journal = _pipeline_attribute("journal")
    sequencer = _pipeline_attribute("sequencer")

    def submit(self, session, to, body, room=None, nonce=None, done=None):
        """Accept a message from ``session``'s client (``Pipeline.submit``)."""
        return self.pipeline.submit(session.peer_id, to, body, room, nonce, done)

    # --- journal replay (the journal's consumer) -----------------------------

    def restore(self, record):
        if message.is_message(record):
            self.pipeline.restore(message.entry_of(record))
        self.delivery.restore(record)

    def restore_done(self, report):
        self.delivery.restore_done()
        mailboxes = self.delivery.mailboxes
        self.log.info("journal replayed: {records} records, {skipped} skipped, "
                      "{stored} messages waiting for {peers} offline peers",
                      records=report.records, skipped=len(report.skipped),
                      stored=mailboxes.total(), peers=len(mailboxes))

    # --- queries --------------------------------------------------------------

    def visible_history(self, peer_id, room=None, with_peer=None, limit=50):
        """Recent entries ``peer_id`` may read, oldest first, within the
        journal's retention (0: kept forever)."""
        if room is not None:
            key = conversation({"room": room})
        elif with_peer is not None:
            key = conversation({"from": peer_id, "to": with_peer})
        else:
            key = conversation({"to": message.BROADCAST})
        horizon = self.clock.seconds() - self.retention if self.retention else float("-inf")
        return self.pipeline.history.recent(key, limit, horizon)

    def stats(self):
        p, d = self.pipeline, self.delivery
        return {"sessions": len(d.sessions), "rooms": len(d.members),
                "messages_in": p.received, "messages_out": d.delivered,
                "dedup_hits": p.dedup.hits, "dedup_window": len(p.dedup),
                "mailbox_messages": d.mailboxes.total(), "mailbox_peers": len(d.mailboxes),
                "mailbox_dropped": d.mailboxes.dropped, "owned_ids": len(self.ownership)}

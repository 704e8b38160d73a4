"""The contracts between the router and its collaborators."""
from typing import NamedTuple

from zope.interface import Attribute, Interface


class DurableEvent(NamedTuple):
    """A message that is now in the journal.

    ``entry`` is the seed-format message (``msg_id`` and ``seen_by``
    included), ``line`` its seed-format line, ``origin`` the relay that
    first accepted it (``seen_by[0]``, or the origin its ``ISequencer``
    gave) and ``seq`` its sequence number there (None without a sequencer;
    the journal record carries both), and ``source`` what handed it to
    this relay: None for a local client, else the object given to
    ``accept_remote`` (a federation link, a bridge).  A named tuple: one
    is made per message, in a third of the time of a frozen dataclass.
    """

    entry: dict
    line: bytes
    origin: str
    source: object = None
    seq: int = None


class ISession(Interface):
    """One identified client connection, as the router sees it.

    The router never does I/O: it hands lines to a session, and the session
    tells it when directed messages left for good (``Router.handed`` once
    their bytes reached the kernel, or ``Router.acknowledged`` when the
    client acked them).
    """

    peer_id = Attribute("the id the client identified with")
    address = Attribute("(host, port) of the client")
    dialect = Attribute("'json' or 'legacy'")
    authenticated = Attribute("True when the id was proved with a key")
    rooms = Attribute("the rooms joined (the router keeps it)")
    connected_at = Attribute("when the connection opened (clock seconds)")

    def writable():
        """False while the session's output is waiting for the network."""

    def deliver_lines(lines, receipts):
        """Write ``lines`` (bytes, each one or more whole lines) in order;
        ``receipts`` are the directed entries among them, settled later
        through ``handed`` or ``acknowledged``."""

    def close(code, text):
        """Send the error ``code`` after everything written, and disconnect."""


class IDelivery(Interface):
    """What the pipeline asks of delivery (``relayd.core.delivery``)."""

    def route(entry, line):
        """Send ``entry`` (its delivery ``line``) to its online recipients
        (held until ``flush``) and store it for the offline ones; returns
        the ids of the persistent room members it was stored for (the
        message's journal record names them)."""

    def refused(entry):
        """The journal refused ``entry``: unstore it."""

    def flush():
        """Write the copies held since the last flush."""


class IRecorder(Interface):
    """What delivery asks of the pipeline: records that are not messages."""

    def receipt(entry, peer):
        """Journal that ``peer`` settled the directed message ``entry``, and
        tell the subscribers."""

    def membership(peer, room, joined):
        """Journal that ``peer`` joined (or left) ``room`` for good."""


class IJournal(Interface):
    """Where accepted messages and receipts become durable."""

    listener = Attribute("called as listener(count, result) once per batch that held lines "
                         "given to ``add``: how many, and None (or the batch's first seq), "
                         "or the batch's Failure")

    def append(line):
        """Journal one JSON object (bytes, no newline); Deferred[None] once durable."""

    def add(line):
        """Journal one JSON object without a Deferred of its own: the
        ``listener`` hears of it with its batch, in order (raises if the
        journal refuses it at once, e.g. once stopped)."""


class IDurableEventSubscriber(Interface):
    """Federation, bridges: told what became durable and what was delivered
    (``Router.subscribe``), instead of reaching into the router's state."""

    def durable(event):
        """``event`` (a ``DurableEvent``) is in the journal; its local
        recipients have it or will get it."""

    def delivered(entry, peer, timestamp, seq):
        """The directed message ``entry`` was settled by ``peer`` here; the
        receipt's record carries ``seq`` (this relay's, or None)."""


class IPresenceObserver(Interface):
    """Cluster mode: told which peers and rooms this relay holds
    (``Router.observe``), instead of reaching into the router's state."""

    def attached(session):
        """``session`` now owns its peer id here."""

    def detached(session):
        """``session`` no longer owns its peer id here."""

    def room_opened(room):
        """``room`` has its first connected member here."""

    def room_closed(room):
        """``room`` has no connected member here any more."""


class ISequencer(Interface):
    """Federation: names each item the router journals with ``(origin, seq)``,
    which goes in the item's own journal record (``Router.sequencer``)."""

    def message_key(entry):
        """``(origin, seq)`` of a message about to be journaled."""

    def receipt_key():
        """``(origin, seq)`` of a delivery receipt about to be journaled."""

    def refused(entry):
        """The journal refused ``entry``: forget its key."""

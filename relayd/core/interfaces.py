"""The contracts between the router and its collaborators."""
from zope.interface import Attribute, Interface


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
        """Write ``lines`` in order; ``receipts`` are the directed entries
        among them, settled later through ``handed`` or ``acknowledged``."""

    def close(code, text):
        """Send the error ``code`` after everything written, and disconnect."""


class IJournal(Interface):
    """Where accepted messages and receipts become durable."""

    def append(line):
        """Journal one JSON object (bytes, no newline); Deferred[None] once durable."""

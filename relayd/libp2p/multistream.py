"""multistream-select 1.0 (``/multistream/1.0.0``), both roles, with leftovers.

Messages are ``uvarint(len) || text || "\\n"``.  Both negotiators are
I/O-free: ``feed(data)`` returns the bytes to send, and ``result`` holds
``(protocol, leftover bytes)`` once agreed.  Leftover bytes belong to the
next layer and are never dropped.
"""
from relayd.libp2p import varint

HEADER = "/multistream/1.0.0"
NA = "na"
MAX_MESSAGE = 1024 + 1          # a protocol id of at most 1024 bytes, plus "\n"


class NegotiationFailed(Exception):
    pass


def message(text):
    return varint.prefixed(text.encode("utf-8") + b"\n")


def _next(buf):
    """Take one message off ``buf``: ``(text, rest)``, or None when incomplete."""
    try:
        got = varint.split_prefixed(buf, MAX_MESSAGE)
    except ValueError as e:
        raise NegotiationFailed(str(e)) from None
    if got is None:
        return None
    body, rest = got
    if not body.endswith(b"\n"):
        raise NegotiationFailed("multistream message without trailing newline")
    try:
        return body[:-1].decode("utf-8"), rest
    except UnicodeDecodeError:
        raise NegotiationFailed("multistream message is not UTF-8") from None


class _Negotiator:
    """Reads messages, checks the header, then hands each message to ``_on_message``."""

    def __init__(self):
        self.result = None
        self._buf = b""
        self._header_seen = False

    def feed(self, data):
        """Returns the bytes to send in reply (the Dialer never replies)."""
        if self.result is not None:
            raise NegotiationFailed("already negotiated")
        self._buf += data
        out = []
        while self.result is None:
            got = _next(self._buf)
            if got is None:
                break
            text, self._buf = got
            if self._header_seen:
                out.append(self._on_message(text))
            elif text != HEADER:
                raise NegotiationFailed(f"expected {HEADER}, got {text[:64]!r}")
            else:
                self._header_seen = True
                out.append(self._on_header())
        return b"".join(out)

    def _agree(self, text):
        self.result = (text, self._buf)
        self._buf = b""


class Listener(_Negotiator):
    """The responder: accepts the first proposed protocol it supports."""

    def __init__(self, protocols, max_attempts=16):
        super().__init__()
        self.protocols = protocols
        self.max_attempts = max_attempts
        self._attempts = 0

    def _on_header(self):
        return message(HEADER)

    def _on_message(self, text):
        self._attempts += 1
        if self._attempts > self.max_attempts:
            raise NegotiationFailed("too many protocol proposals")
        if text in self.protocols:
            self._agree(text)
            return message(text)
        return message(NA)


class Dialer(_Negotiator):
    """The initiator: proposes one protocol (header and proposal in one write)."""

    def __init__(self, protocol):
        super().__init__()
        self.protocol = protocol

    def start(self):
        return message(HEADER) + message(self.protocol)

    def _on_header(self):
        return b""

    def _on_message(self, text):
        if text == self.protocol:
            self._agree(text)
            return b""
        if text == NA:
            raise NegotiationFailed(f"protocol {self.protocol} not supported by the remote")
        raise NegotiationFailed(f"unexpected reply {text[:64]!r}")

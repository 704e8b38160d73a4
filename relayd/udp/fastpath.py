"""The native relay path: plain ``relay`` packets forwarded below Python.

``relayd.udp._fastrelay`` (C, built by setup.py when a compiler is there)
reads the socket in batches and forwards a ``relay`` packet itself when its
sender's address and its target's name are in the two tables kept here,
which the Python relay path fills as it forwards (``learn``) and the peer
table empties on every change (``forget``).  Everything else, and one
datagram a second from each sender (so that the peer table and the proven
addresses see it), comes back to ``RendezvousProtocol.datagramReceived``
unchanged.  The per-IP rate limit is the protocol's own token buckets.
"""
import socket
import struct

from twisted.logger import Logger

from relayd.udp.budget import RELAY_SLACK
from relayd.udp.packets import relayed_head
from relayd.udp.peers import TOUCH_GRAIN

try:
    from relayd.udp import _fastrelay
except ImportError:            # no compiler when relayd was installed
    _fastrelay = None

log = Logger()

MAX_ENTRIES = 65536    # addresses and names each; both tables start over past it


def address_key(family, address):
    """The C side's key for ``(host, port)``: family, port, packed address; None if it has none."""
    try:
        return struct.pack("!BH", family, address[1]) + socket.inet_pton(family, address[0])
    except (OSError, ValueError, struct.error):
        return None


class FastPath:
    """The native relay on ``sock``: its tables and counters."""

    def __init__(self, sock, max_datagram):
        self.family = sock.family
        self.sources = {}      # address key -> (host, relayed_packet head, time learned, proven)
        self.targets = {}      # name as UTF-8 -> address key
        self.relay = _fastrelay.Relay(sock.fileno(), max_datagram, self.sources, self.targets,
                                      float(RELAY_SLACK), TOUCH_GRAIN)

    def learn(self, address, sender_name, target_name, target_address, now, proven):
        """``address`` (holding ``sender_name``; ``proven``: it needs no byte budget)
        may relay to ``target_name`` natively for the next TOUCH_GRAIN seconds."""
        source = address_key(self.family, address)
        target = address_key(self.family, target_address)
        if source is None or target is None:
            return
        for table in (self.sources, self.targets):
            if len(table) >= MAX_ENTRIES:
                table.clear()
        self.sources[source] = (address[0], relayed_head(sender_name), float(now), proven)
        self.targets[target_name.encode("utf-8")] = target

    def forget(self):
        """The peer table or the proven addresses changed: every datagram goes
        through Python until relearned."""
        self.sources.clear()
        self.targets.clear()

    def counts(self):
        relay = self.relay
        return {"received": relay.received, "sent": relay.sent, "relayed": relay.relayed,
                "relayed_bytes": relay.relayed_bytes, "dropped_send_failed": relay.send_failed}


def start(transport, settings):
    """A FastPath reading ``transport`` (a RendezvousPort) if ``settings`` and the
    build allow, else None; logs which relay path is in use."""
    if not hasattr(transport, "read_with"):
        log.info("udp relay path: python (a port without native reads)")
        return None
    if not settings.native_relay:
        log.info("udp relay path: python ([udp] native_relay = no)")
        return None
    if _fastrelay is None:
        log.info("udp relay path: python (the native extension is not built)")
        return None
    fast = FastPath(transport.socket, settings.max_datagram)
    transport.read_with(fast.relay)
    log.info("udp relay path: native (recvmmsg/sendmmsg)")
    return fast

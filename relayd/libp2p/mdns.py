"""mDNS peer discovery on the local network (libp2p/specs discovery/mdns.md).

A peer answers PTR queries for ``_p2p._udp.local`` with a PTR to
``<random name>._p2p._udp.local`` and, as additional records, one TXT
``dnsaddr=<multiaddr>/p2p/<peer id>`` per address.  Discovering is asking
that question and reading the TXT records of the answers.
"""
import os

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.names import dns

from relayd.libp2p.peerid import PeerId

SERVICE = b"_p2p._udp.local"
GROUP, PORT = "224.0.0.251", 5353
TTL = 120
MAX_PEERS = 1024


def _peer_of(multiaddr):
    if "/p2p/" not in multiaddr:
        return None
    try:
        return PeerId.from_string(multiaddr.rsplit("/p2p/", 1)[1])
    except ValueError:
        return None


class MdnsPeer(DatagramProtocol):
    """``addrs()``: our multiaddrs (with ``/p2p/``) to announce, or None to only
    look; ``on_peer(PeerId, [multiaddrs])`` for every peer an answer names."""

    log = Logger(namespace="relayd.mdns")

    def __init__(self, peer_id, addrs, on_peer):
        self.peer_id = peer_id
        self.addrs = addrs
        self.on_peer = on_peer
        self.name = os.urandom(16).hex().encode() + b"." + SERVICE
        self.seen = {}

    def startProtocol(self):
        self.transport.setTTL(255)
        self.transport.setLoopbackMode(True)
        self.transport.joinGroup(GROUP).addErrback(
            lambda failure: self.log.warn("mDNS: cannot join {group}: {error}", group=GROUP,
                                          error=failure.value))
        self.query()

    def query(self):
        message = dns.Message(id=0)
        message.queries.append(dns.Query(SERVICE, dns.PTR, dns.IN))
        self.transport.write(message.toStr(), (GROUP, PORT))

    def _answer(self):
        message = dns.Message(id=0, answer=1, auth=1)
        message.answers.append(dns.RRHeader(SERVICE, dns.PTR, dns.IN, TTL,
                                            dns.Record_PTR(self.name, TTL)))
        for addr in self.addrs():
            message.additional.append(dns.RRHeader(
                self.name, dns.TXT, dns.IN, TTL, dns.Record_TXT(b"dnsaddr=" + addr.encode(), ttl=TTL)))
        self.transport.write(message.toStr(), (GROUP, PORT))

    def datagramReceived(self, data, address):
        message = dns.Message()
        try:
            message.fromStr(data)
        except Exception:
            return                      # not DNS, or not what we can read
        if not message.answer:
            if self.addrs is not None and any(
                    q.name.name.lower() == SERVICE and q.type in (dns.PTR, dns.ALL_RECORDS)
                    for q in message.queries):
                self._answer()
            return
        found = {}
        for record in message.answers + message.additional:
            if record.type != dns.TXT:
                continue
            for text in record.payload.data:
                if not text.startswith(b"dnsaddr="):
                    continue
                addr = text[len(b"dnsaddr="):].decode("utf-8", "replace")
                peer = _peer_of(addr)
                if peer is not None and peer != self.peer_id:
                    found.setdefault(peer, []).append(addr)
        for peer, addrs in found.items():
            if peer in self.seen or len(self.seen) < MAX_PEERS:
                self.seen[peer] = addrs
                self.on_peer(peer, addrs)


def start(reactor, peer_id, addrs, on_peer):
    """Join the mDNS group on port 5353 (shared with other responders)."""
    protocol = MdnsPeer(peer_id, addrs, on_peer)
    reactor.listenMulticast(PORT, protocol, listenMultiple=True)
    return protocol

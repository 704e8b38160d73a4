"""The rendezvous DatagramProtocol: seed-001 JSON packets and STUN on one port.

Every datagram is size-checked and rate-limited per source IP, then goes to
the STUN codec (magic cookie) or the JSON handlers.  Replies to a source
that holds no name are never larger than the datagram it sent (no
amplification); payloads are never logged.
"""
import base64
import json
import socket
from collections import Counter

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from relayd.udp import packets, proof, stun
from relayd.udp.packets import PacketError, encode, field
from relayd.udp.peers import NameTaken, PeerTable, TableFull
from relayd.udp.ratelimit import TokenBuckets

NAME_LIMIT = 64


class RendezvousProtocol(DatagramProtocol):
    """``settings`` is the ``[udp]`` section; ``clock`` gives ``seconds()``."""

    log = Logger()

    def __init__(self, settings, clock, challenger=None):
        self.settings = settings
        self.clock = clock
        self.table = PeerTable(settings.max_peers, settings.stale_after)
        self.challenger = challenger or proof.Challenger()
        self.counts = Counter()
        self.max_datagram = settings.max_datagram     # fixed: the socket reads this much
        self.configure(settings)

    def configure(self, settings):
        """Apply limits from ``settings`` (at start and on reload)."""
        self.settings = settings
        self.table.max_peers = settings.max_peers
        self.table.stale_after = settings.stale_after
        self.datagrams = TokenBuckets(settings.rate, settings.burst, settings.max_sources)
        self.claims = TokenBuckets(settings.claim_rate, settings.claim_burst, settings.max_sources)

    def startProtocol(self):
        sock = getattr(self.transport, "socket", None)
        if sock is None:          # a fake transport in tests
            self._write = self.transport.write
            return
        # Every address we send to came from this socket's own recvfrom, so
        # the address checks of transport.write (a third of a relayed
        # datagram's cost) are skipped; socket errors are counted in _send.
        self._write = sock.sendto
        # Absorb bursts; the kernel caps these at net.core.rmem_max/wmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.settings.socket_buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.socket_buffer)
        self.log.info("udp rendezvous listening on {host}:{port}",
                      host=self.transport.getHost().host, port=self.transport.getHost().port)

    # --- input ---------------------------------------------------------------

    def datagramReceived(self, data, address):
        counts = self.counts
        counts["received"] += 1
        now = self.clock.seconds()
        if len(data) > self.max_datagram:
            self._drop("too_large")
            return
        if not self.datagrams.allow(address[0], now):
            self._drop("rate_limited")
            return
        if stun.looks_like_stun(data):
            self._stun(data, address)
            return
        try:
            packet = packets.decode(data)
            handler = self._handlers.get(packet["type"])
            if handler is None:
                raise PacketError("unknown_type")
            handler(self, packet, address, now, len(data))
        except PacketError as e:
            self._error(e.code, address, len(data), detail=str(e) if str(e) != e.code else None)
        except Exception:
            self._drop("internal_error")
            self.log.failure("udp handler failed for a datagram from {address}",
                             address=packets.format_address(address))

    def _stun(self, data, address):
        try:
            message = stun.parse(data)
        except stun.StunError:
            self._drop("bad_stun")
            return
        reply = stun.respond(message, packets.plain_host(address[0]), address[1])
        if reply is None:
            self._drop("stun_not_request")
            return
        self.counts["stun_" + ("error" if reply[0] & 0x01 else "success")] += 1
        self._send(reply, address)

    # --- handlers ------------------------------------------------------------

    def _register(self, packet, address, now, size):
        name = field(packet, "name", limit=NAME_LIMIT)
        key_text = field(packet, "key", required=False, limit=64)
        key = self._decode_key(key_text)
        proven = None
        if key is not None and "signature" in packet:
            if not self.challenger.check(address, name, now, packet.get("challenge"),
                                         key, packet.get("signature")):
                self._error("auth_failed", address, size)
                return
            proven = key
        peer = self._claim(name, address, now, size, proven, key is not None)
        if peer is None:
            return
        extra = {"authenticated": peer.authenticated} if key is not None else {}
        if key is not None and proven is None:
            extra["challenge"] = self.challenger.challenge(address, name, now)
        self.counts["registered"] += 1
        self.log.debug("udp peer {name} registered from {address}",
                       name=name, address=packets.format_address(address))
        self._send_packet(packets.register_ack(address, now, name, **extra), address)
        names = self._names()
        self._send_packet(packets.peer_list(names), address)
        self._announce(packets.peer_joined(name, names), exclude=address)

    def _keepalive(self, packet, address, now, size):
        name = field(packet, "name", required=False, limit=NAME_LIMIT)
        if name is None:
            return                     # the seed ignores a keepalive without a name
        peer = self.table.at(address)
        if peer is None or peer.name != name:
            peer = self._claim(name, address, now, size, None, False)
            if peer is None:
                return
        self.table.touch(peer, now)
        self._send_packet(packets.keepalive_ack(name, now), address)

    def _ping(self, packet, address, now, size):
        peer = self.table.at(address)
        if peer is not None:
            self.table.touch(peer, now)
        self._reply(encode(packets.pong(address, now)), address, size)

    def _relay(self, packet, address, now, size):
        sender = self._sender(address, size)
        if sender is None:
            return
        target_name = field(packet, "target", limit=NAME_LIMIT)
        if "payload" not in packet:
            raise PacketError("bad_request", "payload is missing")
        self.table.touch(sender, now)
        target = self.table.get(target_name)
        if target is None:
            self._error("unknown_target", address, size, target=target_name)
            return
        out = packets.relayed(sender.name, json.dumps(packet["payload"]).encode("utf-8"))
        if len(out) > self.max_datagram:
            self._error("too_large", address, size, limit=self.max_datagram)
            return
        self.counts["relayed"] += 1
        self.counts["relayed_bytes"] += len(out)
        self._send(out, target.address)

    def _connect(self, packet, address, now, size):
        sender = self._sender(address, size)
        if sender is None:
            return
        target_name = field(packet, "target", limit=NAME_LIMIT)
        self.table.touch(sender, now)
        target = self.table.get(target_name)
        if target is None or target is sender:
            self._error("unknown_target", address, size, target=target_name)
            return
        if not self.claims.allow(address[0], now):
            self._error("rate_limited", address, size)
            return
        self.counts["connects"] += 1
        to_sender = packets.connect_peer(target.name, target.address, self._key_text(target),
                                         target.authenticated)
        to_target = packets.connect_peer(sender.name, sender.address, self._key_text(sender),
                                         sender.authenticated)
        self._send_packet(to_sender, sender.address)
        self._send_packet(to_target, target.address)

    _handlers = {"register": _register, "keepalive": _keepalive, "ping": _ping,
                 "relay": _relay, "connect": _connect}

    # --- helpers -------------------------------------------------------------

    def _decode_key(self, text):
        if text is None:
            return None
        try:
            return proof.decode_key(text)
        except proof.BadKey:
            raise PacketError("bad_request", "key must be a base64 Ed25519 public key") from None

    @staticmethod
    def _key_text(peer):
        return None if peer.key is None else base64.b64encode(peer.key).decode("ascii")

    def _claim(self, name, address, now, size, key, wants_proof):
        """Claim ``name`` for ``address``; None (after an error reply) if refused.

        Every claim costs a ``claim_rate`` token, a repeated ``register`` of
        the name the address holds too: each one is answered with a
        ``peer_list`` and announced to every peer.
        """
        if not self.claims.allow(address[0], now):
            self._error("rate_limited", address, size)
            return None
        try:
            peer, gave_up = self.table.claim(name, address, now, key)
        except NameTaken:
            extra = {"challenge": self.challenger.challenge(address, name, now)} if wants_proof else {}
            self._error("name_taken", address, size, name=name, **extra)
            return None
        except TableFull:
            self._error("server_full", address, size)
            return None
        if gave_up is not None:
            self._announce(packets.peer_left(gave_up, self._names()))
        return peer

    def _names(self):
        """Names for ``peers`` lists: the most recent ``peer_list_max``, in half a datagram.

        A name is up to NAME_LIMIT characters, but JSON escaping makes one
        up to 12 bytes each: the byte budget keeps every list-carrying
        packet within ``max_datagram``.
        """
        budget, names = self.max_datagram // 2, []
        for name in self.table.recent_names(self.settings.peer_list_max):
            budget -= len(encode(name)) + 2            # the quoted name and ", "
            if budget < 0:
                break
            names.append(name)
        return names

    def _sender(self, address, size):
        peer = self.table.at(address)
        if peer is None:
            self._error("not_registered", address, size)
        return peer

    def _announce(self, packet, exclude=None):
        """Send ``packet`` to every peer (but ``exclude``) while the table is small."""
        if len(self.table) > self.settings.announce_limit:
            self.counts["announcements_suppressed"] += 1
            return
        data = encode(packet)
        for peer in self.table:
            if peer.address != exclude:
                self._send(data, peer.address)

    def _error(self, code, address, size, **extra):
        self.counts["error_" + code] += 1
        self._reply(encode(packets.error(code, **{k: v for k, v in extra.items() if v is not None})),
                    address, size)

    def _reply(self, data, address, size):
        """Send to ``address`` unless it holds no name and ``data`` outweighs its request."""
        if len(data) > size and self.table.at(address) is None:
            self._drop("amplification")
            return
        self._send(data, address)

    def _send_packet(self, packet, address):
        self._send(encode(packet), address)

    def _send(self, data, address):
        if len(data) > self.max_datagram:      # never more than the clients accept
            self._drop("too_large_out")
            return
        try:
            self._write(data, address)
        except OSError:
            self._drop("send_failed")
            return
        self.counts["sent"] += 1

    def _drop(self, reason):
        self.counts["dropped_" + reason] += 1

    # --- timers --------------------------------------------------------------

    def tick(self):
        """Every ``keepalive`` seconds: drop stale peers, keep the others' NAT bindings open."""
        now = self.clock.seconds()
        for peer in self.table.sweep(now):
            self.counts["stale"] += 1
            self.log.debug("udp peer {name} went stale", name=peer.name)
            self._announce(packets.peer_left(peer.name, self._names()))
        for peer in self.table:
            self._send_packet(packets.server_keepalive(peer.name, now), peer.address)

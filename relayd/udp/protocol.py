"""The rendezvous DatagramProtocol: seed-001 JSON packets and STUN on one port.

Every datagram is size-checked and rate-limited per source IP, then goes to
the STUN codec (magic cookie) or the JSON handlers.  What an address that
has not proved it receives there makes relayd send is paid from its byte
budget (``budget``); a reply to such a source that holds no name is never
larger than the datagram it sent.  Payloads are never logged.  Plain relays
between known peers may be forwarded by the native path (``fastpath``)
before they reach ``datagramReceived``, with the same result.
"""
import base64
import socket
from collections import Counter

from twisted.internet.error import InvalidAddressError, MessageLengthError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from relayd.udp import fastpath, packets, proof, stun
from relayd.udp.budget import (FANOUT_RESERVE, RELAY_SLACK, RESERVE, ProvenAddresses,
                               SourceBudgets)
from relayd.udp.packets import PacketError, encode, field
from relayd.udp.peers import TOUCH_GRAIN, NameTaken, PeerTable, TableFull
from relayd.udp.ratelimit import TokenBuckets

NAME_LIMIT = 64


class RendezvousProtocol(DatagramProtocol):
    """``settings`` is the ``[udp]`` section; ``clock`` gives ``seconds()``."""

    noisy = False

    log = Logger()

    def __init__(self, settings, clock, challenger=None):
        self.settings = settings
        self.clock = clock
        self.fast = None              # the native relay path, once listening (fastpath)
        self.table = PeerTable(settings.max_peers, settings.stale_after, changed=self._forget_fast)
        self.challenger = challenger or proof.Challenger()
        self.tally = Counter()        # counters off the relay path, by name
        # the relay path's counters, plain ints (``counts`` has them all)
        self.received = self.sent = self.relayed = self.relayed_bytes = 0
        self.max_datagram = settings.max_datagram     # fixed: the socket reads this much
        self.proven = ProvenAddresses(settings.stale_after, settings.max_sources,
                                      forgot=self._forget_fast)
        self.budgets = SourceBudgets(cap=self.max_datagram * 2, max_keys=settings.max_sources)
        self.configure(settings)

    @property
    def counts(self):
        """Every counter by name: a copy of ``tally`` with the relay path's (and the native one's)."""
        counts = self.tally.copy()
        counts.update(received=self.received, sent=self.sent, relayed=self.relayed,
                      relayed_bytes=self.relayed_bytes)
        if self.fast is not None:
            counts.update(self.fast.counts())
        return counts

    def configure(self, settings):
        """Apply limits from ``settings`` (at start and on reload)."""
        self.settings = settings
        self.table.max_peers = settings.max_peers
        self.table.stale_after = settings.stale_after
        self.datagrams = TokenBuckets(settings.rate, settings.burst, settings.max_sources)
        self.claims = TokenBuckets(settings.claim_rate, settings.claim_burst, settings.max_sources)
        self.proven.ttl = settings.stale_after
        self.proven.max_addresses = settings.max_sources
        self.budgets.set_max_keys(settings.max_sources)

    def startProtocol(self):
        self._write = self.transport.write
        sock = getattr(self.transport, "socket", None)
        if sock is None:          # a fake transport in tests
            return
        # Absorb bursts; the kernel caps these at net.core.rmem_max/wmem_max.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.settings.socket_buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.socket_buffer)
        self.log.info("udp rendezvous listening on {host}:{port}",
                      host=self.transport.getHost().host, port=self.transport.getHost().port)
        if self.fast is not None:            # started again: keep what the last one counted
            self.tally.update(self.fast.counts())
        self.fast = fastpath.start(self.transport, self.settings)

    def _forget_fast(self):
        if self.fast is not None:
            self.fast.forget()

    # --- input ---------------------------------------------------------------

    def datagramReceived(self, data, address):
        self.received += 1
        now = self.clock.seconds()
        if len(data) > self.max_datagram:
            self._drop("too_large")
            return
        if not self.datagrams.allow(address[0], now):
            self._drop("rate_limited")
            return
        proven = self.proven.touch(address, now)
        try:
            relay = packets.relay_fields(data)
            if relay is not None:       # the hot path: neither earns nor spends budget
                self._forward(address, now, len(data), *relay)
                return
            if not proven:
                self.budgets.deposit(address, now, len(data))
            if stun.looks_like_stun(data):
                self._stun(data, address)
                return
            if stun.looks_like_classic(data):
                self._classic_stun(data, address)
                return
            packet = packets.decode(data)
            if "cookie" in packet and self.challenger.check_cookie(address, now, packet["cookie"]):
                self._prove(address, now)
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
        self.tally["stun_" + ("error" if stun.message_class(reply) == stun.ERROR else "success")] += 1
        self._out(reply, address, address)

    def _classic_stun(self, data, address):
        reply = stun.classic_response(data, packets.plain_host(address[0]), address[1])
        if reply is None:
            self._drop("stun_classic_unanswered")
            return
        self.tally["stun_success"] += 1
        self._out(reply, address, address)

    # --- handlers ------------------------------------------------------------

    def _register(self, packet, address, now, size):
        name = packets.name_field(packet, "name", limit=NAME_LIMIT)
        key_text = field(packet, "key", required=False, limit=64)
        key = self._decode_key(key_text)
        proven = None
        if key is not None and "signature" in packet:
            if not self.challenger.check(address, name, now, packet.get("challenge"),
                                         key, packet.get("signature")):
                self._error("auth_failed", address, size)
                return
            proven = key
            self._prove(address, now)     # the challenge went to this address
        peer = self._claim(name, address, now, size, proven, key is not None)
        if peer is None:
            return
        extra = self._cookie(packet, address, now)
        if key is not None:
            extra["authenticated"] = peer.authenticated
        if key is not None and proven is None:
            extra["challenge"] = self.challenger.challenge(address, name, now)
        self.tally["registered"] += 1
        self.log.debug("udp peer {name} registered from {address}",
                       name=name, address=packets.format_address(address))
        self._out(encode(packets.register_ack(address, now, name, **extra)), address, address)
        names = self._names()
        self._peer_list(peer, names, now)
        self._announce(packets.peer_joined(name, names), exclude=address, cause=address)

    def _keepalive(self, packet, address, now, size):
        name = packets.name_field(packet, "name", required=False, limit=NAME_LIMIT)
        if name is None:
            return                     # the seed ignores a keepalive without a name
        peer = self.table.at(address)
        if peer is None or peer.name != name:
            peer = self._claim(name, address, now, size, None, False)
            if peer is None:
                return
        self.table.touch(peer, now)
        self._out(encode(packets.keepalive_ack(name, now, **self._cookie(packet, address, now))),
                  address, address, reserve=RESERVE)
        self._more_names(peer, now)

    def _ping(self, packet, address, now, size):
        peer = self.table.at(address)
        if peer is not None:
            self.table.touch(peer, now)
        self._reply(encode(packets.pong(address, now, **self._cookie(packet, address, now))),
                    address, size)
        if peer is not None:
            self._more_names(peer, now)

    def _relay(self, packet, address, now, size):
        """The full parse's way to ``_forward`` (the fast path declined this packet)."""
        if self._sender(address, size) is None:
            return
        target_name = field(packet, "target", limit=NAME_LIMIT)
        if "payload" not in packet:
            raise PacketError("bad_request", "payload is missing")
        self._forward(address, now, size, target_name, packets.payload_json(packet["payload"]))

    def _forward(self, address, now, size, target_name, payload):
        """Wrap ``payload`` (JSON bytes, as received) in a relayed_packet for ``target_name``.

        An unproven sender pays what the relayed_packet is longer than its
        request beyond RELAY_SLACK.
        """
        table = self.table
        sender = table.at(address)
        if sender is None:
            self._error("not_registered", address, size)
            return
        if now - sender.last_seen >= TOUCH_GRAIN:
            table.touch(sender, now)
        target = table.get(target_name)
        if target is None:
            self._error("unknown_target", address, size, target=target_name)
            return
        out = packets.relayed(sender.name, payload)
        if len(out) > self.max_datagram:
            self._error("too_large", address, size, limit=self.max_datagram)
            return
        extra = len(out) - size - RELAY_SLACK
        proven = address in self.proven
        if extra > 0 and not proven and not self.budgets.charge({address: 0}, now, extra):
            self._drop("budget")
            return
        self.relayed += 1
        self.relayed_bytes += len(out)
        if self.fast is not None and (extra <= 0 or proven):
            self.fast.learn(address, sender.name, target_name, target.address, now, proven)
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
        self.tally["connects"] += 1
        to_sender = packets.connect_peer(target.name, target.address, self._key_text(target),
                                         target.authenticated)
        to_target = packets.connect_peer(sender.name, sender.address, self._key_text(sender),
                                         sender.authenticated)
        self._out(encode(to_sender), sender.address, address)
        self._out(encode(to_target), target.address, address)

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
            self._announce(packets.peer_left(gave_up, self._names()), cause=address)
        return peer

    def _cookie(self, packet, address, now):
        """``{"cookie": ...}`` for a reply when ``packet`` asks for one (carries an invalid one)."""
        if "cookie" in packet and not self.challenger.check_cookie(address, now, packet["cookie"]):
            return {"cookie": self.challenger.cookie(address, now)}
        return {}

    def _prove(self, address, now):
        """``address`` echoed a cookie or signed a challenge: no budget, and the rest of its list."""
        self.proven.add(address, now)
        self.budgets.forget(address)
        peer = self.table.at(address)
        if peer is not None:
            self._more_names(peer, now)

    def _peer_list(self, peer, names, now):
        """``names`` to ``peer`` in a peer_list; an unproven one gets what its budget pays now.

        The rest is kept on the peer and follows as it keeps talking
        (``_more_names``); a cut list says how many are to come in ``more``.
        """
        data, rest = encode(packets.peer_list(names)), []
        if peer.address not in self.proven:
            room = self.budgets.balance(peer.address, now)
            while len(data) > room and names:
                names, rest = names[:-1], names[-1:] + rest
                data = encode(packets.peer_list(names, more=len(rest)))
        peer.pending_names = rest or None
        if names or not rest:
            self._out(data, peer.address, peer.address)
        else:
            self._drop("budget")

    def _more_names(self, peer, now):
        if peer.pending_names:
            self._peer_list(peer, peer.pending_names, now)

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

    def _announce(self, packet, exclude=None, cause=None):
        """Send ``packet`` to every peer (but ``exclude``) while the table is small.

        ``cause``, the address whose request this answers, pays for the
        whole fan-out while it is unproven.
        """
        if len(self.table) > self.settings.announce_limit:
            self.tally["announcements_suppressed"] += 1
            return
        data = encode(packet)
        for peer in self.table:
            if peer.address != exclude:
                self._out(data, peer.address, cause, cause_reserve=FANOUT_RESERVE)

    def _error(self, code, address, size, **extra):
        self.tally["error_" + code] += 1
        self._reply(encode(packets.error(code, **{k: v for k, v in extra.items() if v is not None})),
                    address, size)

    def _reply(self, data, address, size):
        """Send to ``address`` unless it is unproven, holds no name and ``data`` outweighs its request."""
        if len(data) > size and address not in self.proven and self.table.at(address) is None:
            self._drop("amplification")
            return
        self._out(data, address, address)

    def _out(self, data, address, cause=None, reserve=0, cause_reserve=0):
        """Send ``data`` to ``address`` once the budgets of the unproven among it and
        ``cause`` pay, keeping ``reserve`` and ``cause_reserve`` bytes."""
        if len(data) > self.max_datagram:      # never more than the clients accept
            self._drop("too_large_out")
            return
        payers = {}
        if cause is not None and cause not in self.proven:
            payers[cause] = cause_reserve
        if address not in self.proven:
            payers[address] = max(reserve, payers.get(address, 0))
        if payers and not self.budgets.charge(payers, self.clock.seconds(), len(data)):
            self._drop("budget")
            return
        self._send(data, address)

    def _send(self, data, address):
        try:
            self._write(data, address)
        except (OSError, InvalidAddressError, MessageLengthError):
            self._drop("send_failed")
            return
        self.sent += 1

    def _drop(self, reason):
        self.tally["dropped_" + reason] += 1

    # --- timers --------------------------------------------------------------

    def tick(self):
        """Every ``keepalive`` seconds: drop stale peers, keep the others' NAT bindings open."""
        now = self.clock.seconds()
        self.proven.sweep(now)
        for peer in self.table.sweep(now):
            self.tally["stale"] += 1
            self.log.debug("udp peer {name} went stale", name=peer.name)
            self._announce(packets.peer_left(peer.name, self._names()))
        for peer in self.table:
            self._out(encode(packets.server_keepalive(peer.name, now)), peer.address,
                      reserve=RESERVE)

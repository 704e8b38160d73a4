"""Circuit Relay v2, relay side: RESERVE and CONNECT on hop streams, STOP to
targets, and the byte splice of each circuit with its duration and data limits."""
import itertools

from relayd.libp2p import envelope, messages as m, multiaddr, varint
from relayd.libp2p.access import PeerAccess
from relayd.libp2p.resources import Circuit, Limits, Reservation
from relayd.libp2p.yamux import StreamHandler

MAX_EARLY_BYTES = 64 * 1024     # bytes an initiator may send before the circuit is up
SPLICE_WINDOW = 1024 * 1024     # receive window of each spliced stream (bounds buffering)


def _ip(connection):
    return connection.transport.getPeer().host


def take_message(handler, decode):
    """Decode one length-prefixed message off ``handler.buf``; None while incomplete.

    Raises ValueError when it is too long or malformed."""
    got = varint.split_prefixed(handler.buf, m.MAX_MESSAGE)
    if got is None:
        return None
    message, handler.buf = got
    return decode(message)


class Relay:
    """The relay's state; ``events`` receives every accounting event
    (``events.reservation(...)``, ``events.circuit_opened/closed(...)``,
    ``events.denied(...)``, ``events.relayed(n)``)."""

    def __init__(self, clock, settings, keypair, events, addrs):
        self.clock = clock
        self.settings = settings
        self.keypair = keypair
        self.events = events
        self.addrs = addrs              # callable -> announce multiaddrs (text, with /p2p/<relay>)
        self.limits = Limits(clock, settings)
        self.access = PeerAccess()
        self.ids = itertools.count(1)

    def limit(self):
        return m.limit(self.settings.circuit_duration, self.settings.circuit_bytes)

    # --- reservations ---------------------------------------------------------------
    def reserve(self, connection):
        """Grant or refresh; returns the HopMessage reply."""
        peer, ip = connection.remote_peer, _ip(connection)
        refused = self.access.refusal(peer)
        if refused is not None:
            self.events.denied("reservation", "peer-" + refused, peer=str(peer), ip=ip)
            return m.hop(m.STATUS, status=m.PERMISSION_DENIED)
        reason = self.limits.check_reservation(peer, connection, ip)
        if reason is not None:
            self.events.denied("reservation", reason, peer=str(peer), ip=ip)
            return m.hop(m.STATUS, status=m.RESERVATION_REFUSED)
        now = self.clock.seconds()
        expires = int(now + self.settings.reservation_ttl)
        key = (peer, connection)
        found = self.limits.reservations.get(key)
        if found is None:
            found = self.limits.reservations[key] = Reservation(peer, connection, ip, now, expires)
            event = "accepted"
        else:
            found.expires = expires
            found.timer.cancel()
            event = "renewed"
        found.timer = self.clock.callLater(self.settings.reservation_ttl, self._expire, key)
        self.events.reservation(event, peer=str(peer), ip=ip, expires=expires)
        addrs = [multiaddr.to_bytes(a) for a in self.addrs()]
        voucher = envelope.voucher(self.keypair, peer, expires)
        return m.hop(m.STATUS, status=m.OK, reservation=m.reservation(expires, addrs, voucher),
                     limit=self.limit())

    def _expire(self, key):
        found = self.limits.reservations.pop(key, None)
        if found is not None:
            self.events.reservation("expired", peer=str(found.peer), ip=found.ip, expires=found.expires)

    def connection_gone(self, connection):
        """Drop the reservations held on a closed connection."""
        self._drop([k for k in self.limits.reservations if k[1] is connection], "closed")

    def set_access(self, access):
        """Apply new peer lists; reservations of peers they refuse end now."""
        self.access = access
        self._drop([k for k in self.limits.reservations if access.refusal(k[0])], "revoked")

    def _drop(self, keys, event):
        for key in keys:
            found = self.limits.reservations.pop(key)
            if found.timer.active():
                found.timer.cancel()
            self.events.reservation(event, peer=str(found.peer), ip=found.ip, expires=found.expires)

    def reservations(self):
        return [{"peer": str(r.peer), "ip": r.ip, "expires": r.expires}
                for r in self.limits.reservations.values()]

    # --- circuits -------------------------------------------------------------------
    def connect(self, hop_handler, target):
        """Start a circuit for ``hop_handler`` (the initiator's hop stream) to ``target``."""
        src = hop_handler.connection
        peer, ip = src.remote_peer, _ip(src)
        status, reason, found = self._admit_circuit(peer, target, ip)
        if reason is not None:
            self.events.denied("circuit", reason, peer=str(peer), ip=ip, target=str(target))
            return hop_handler.refuse(status)
        circuit = Circuit(next(self.ids), peer, target, ip, self.clock.seconds())
        self.limits.circuits[circuit.id] = circuit      # holds the slot while STOP runs
        dialer = StopDialer(self, circuit, hop_handler)
        dialer.stream = found.connection.open_protocol(m.STOP_PROTOCOL_ID, dialer)
        if dialer.stream is None:
            dialer.fail("target connection closing")

    def _admit_circuit(self, peer, target, ip):
        """``(refusal status, denial reason, None)`` or ``(OK, None, the target's reservation)``."""
        # the rate limit comes first: every lookup costs one, so no one can probe
        # without limit which peers hold reservations
        reason = self.limits.check_circuit_rate(ip)
        if reason is not None:
            return m.RESOURCE_LIMIT_EXCEEDED, reason, None
        refused = self.access.refusal(peer)
        if refused is not None:
            return m.PERMISSION_DENIED, "peer-" + refused, None
        found = self.limits.reservation_for(target)
        if found is None:
            return m.NO_RESERVATION, "no-reservation", None
        refused = self.access.refusal(target)
        if refused is not None:
            return m.PERMISSION_DENIED, "target-" + refused, None
        reason = self.limits.check_circuit(peer, target)
        if reason is not None:
            return m.RESOURCE_LIMIT_EXCEEDED, reason, None
        return m.OK, None, found

    def circuits(self):
        now = self.clock.seconds()
        return [{"id": c.id, "src": str(c.src), "dst": str(c.dst),
                 "bytes": c.bytes_to_dst + c.bytes_to_src, "age": round(now - c.started, 3)}
                for c in self.limits.circuits.values()]

    def circuit_failed(self, circuit, reason):
        self.limits.circuits.pop(circuit.id, None)
        self.events.denied("circuit", reason, peer=str(circuit.src), ip=circuit.src_ip,
                           target=str(circuit.dst))


class HopHandler(StreamHandler):
    """``/libp2p/circuit/relay/0.2.0/hop``: one request per stream."""

    def __init__(self, connection):
        self.connection = connection
        self.relay = connection.factory.relay
        self.buf = b""
        self.pending = None             # the StopDialer while CONNECT runs
        self.done = False

    def data_received(self, data):
        self.buf += data
        if self.done or self.pending is not None:
            if len(self.buf) > MAX_EARLY_BYTES:
                self.stream.reset()
            return
        try:
            got = take_message(self, m.decode_hop)
        except ValueError:
            return self.refuse(m.MALFORMED_MESSAGE)
        if got is None:
            return
        msg_type, target, _, _ = got
        if msg_type == m.RESERVE:
            self.done = True
            self.stream.write(varint.prefixed(self.relay.reserve(self.connection)))
            self.stream.close()
        elif msg_type == m.CONNECT:
            if target is None:
                return self.refuse(m.MALFORMED_MESSAGE)
            self.relay.connect(self, target)
        else:
            self.refuse(m.UNEXPECTED_MESSAGE)

    def refuse(self, status):
        self.done = True
        self.pending = None
        self.stream.write(varint.prefixed(m.hop(m.STATUS, status=status)))
        self.stream.close()

    def accept(self):
        """Tell the initiator the circuit is up; returns bytes it sent early."""
        self.pending = None
        self.done = True
        self.stream.write(varint.prefixed(m.hop(m.STATUS, status=m.OK, limit=self.relay.limit())))
        early, self.buf = self.buf, b""
        return early

    def read_closed(self):
        if self.pending is not None:
            self.stream.reset()
        elif not self.done:
            self.stream.close()

    def stream_closed(self, reset):
        if self.pending is not None:
            self.pending.fail("initiator went away")


class StopDialer(StreamHandler):
    """``/libp2p/circuit/relay/0.2.0/stop`` towards the target."""

    def __init__(self, relay, circuit, hop_handler):
        self.relay = relay
        self.circuit = circuit
        self.hop = hop_handler
        self.buf = b""
        self.finished = False
        self.stream = None
        hop_handler.pending = self
        self.timer = relay.clock.callLater(relay.settings.connect_timeout, self.fail, "stop timeout")

    def stream_opened(self, stream):
        self.stream = stream
        stream.write(varint.prefixed(m.stop(
            m.STOP_CONNECT, peer=m.peer(self.circuit.src), limit=self.relay.limit())))

    def data_received(self, data):
        if self.finished:
            return
        self.buf += data
        try:
            got = take_message(self, m.decode_stop)
        except ValueError:
            return self.fail("malformed stop reply")
        if got is None:
            return
        msg_type, _, status, _ = got
        if msg_type != m.STOP_STATUS or status != m.OK:
            return self.fail(f"target refused (status {status})")
        self.finished = True
        self.timer.cancel()
        early_src = self.hop.accept()
        early_dst, self.buf = self.buf, b""
        Splice(self.relay, self.circuit, self.hop.stream, self.stream, early_src, early_dst)

    def read_closed(self):
        self.fail("target closed the stop stream")

    def stream_closed(self, reset):
        self.fail("stop stream closed")

    def fail(self, reason):
        if self.finished:
            return
        self.finished = True
        if self.timer.active():
            self.timer.cancel()
        if self.stream is not None and not self.stream.closed:
            self.stream.reset()
        if self.hop.pending is self:
            self.hop.refuse(m.CONNECTION_FAILED)
        self.relay.circuit_failed(self.circuit, "connection-failed: " + reason)


class _Side(StreamHandler):
    def __init__(self, splice, to_dst):
        self.splice = splice
        self.to_dst = to_dst
        self.other = None

    def data_received(self, data):
        self.splice.forward(self, data)

    def read_closed(self):
        if not self.other.stream.closed:
            self.other.stream.close()

    def stream_closed(self, reset):
        self.splice.side_closed(reset)

    # producer for the other side's stream
    def pause(self):
        self.stream.pause()

    def resume(self):
        self.stream.resume()


class Splice:
    """Copies bytes between the hop stream (src) and the stop stream (dst),
    carrying FIN as FIN and RST as RST, until a limit resets both."""

    def __init__(self, relay, circuit, src_stream, dst_stream, early_src=b"", early_dst=b""):
        self.relay = relay
        self.circuit = circuit
        self.ended = False
        self.src, self.dst = _Side(self, True), _Side(self, False)
        self.src.other, self.dst.other = self.dst, self.src
        src_stream.attach(self.src)
        dst_stream.attach(self.dst)
        dst_stream.register_producer(self.src)
        src_stream.register_producer(self.dst)
        src_stream.set_window(SPLICE_WINDOW)
        dst_stream.set_window(SPLICE_WINDOW)
        duration = relay.settings.circuit_duration
        self.timer = relay.clock.callLater(duration, self.end, "duration-limit", True) if duration else None
        relay.events.circuit_opened(circuit)
        for side, early in ((self.src, early_src), (self.dst, early_dst)):
            if early and not self.ended:
                self.forward(side, early)

    def forward(self, side, data):
        if self.ended:
            return
        c = self.circuit
        sent = c.bytes_to_dst if side.to_dst else c.bytes_to_src
        cap = self.relay.settings.circuit_bytes
        over = bool(cap) and sent + len(data) > cap
        if over:
            data = data[:cap - sent]
        if side.to_dst:
            c.bytes_to_dst += len(data)
        else:
            c.bytes_to_src += len(data)
        if data:
            side.other.stream.write(data)
            self.relay.events.relayed(len(data))
        if over:
            self.end("data-limit", True)

    def side_closed(self, reset):
        if reset:
            self.end("reset", True)
        elif self.src.stream.closed and self.dst.stream.closed:
            self.end("closed", False)

    def end(self, reason, reset):
        if self.ended:
            return
        self.ended = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if reset:
            for side in (self.src, self.dst):
                side.stream.reset()
        self.relay.limits.circuits.pop(self.circuit.id, None)
        self.relay.events.circuit_closed(self.circuit, reason,
                                         self.relay.clock.seconds() - self.circuit.started)

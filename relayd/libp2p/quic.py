"""libp2p over QUIC (``/ip4/…/udp/N/quic-v1``): aioquic driven by a Twisted
``DatagramProtocol``.

The handshake is TLS 1.3 inside QUIC with ALPN ``libp2p``; both ends present
a self-signed certificate carrying the libp2p public-key extension (the
identity key's signature over the certificate's key), from which the peer
id is taken (libp2p/specs tls/tls.md).  Every QUIC bidirectional stream then
negotiates its protocol with multistream-select and is handed to the same
handlers as a Yamux stream on TCP (identify, ping, hop, stop, AutoNAT), so
reservations and circuits work across transports.
"""
import datetime
import ipaddress
import os
import ssl

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, encode_quic_retry, pull_quic_header
from aioquic.quic.retry import QuicRetryTokenHandler
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import DatagramProtocol

from relayd.libp2p.connection import InboundNegotiation, OutboundNegotiation
from relayd.libp2p.peerid import PeerId, verify

ALPN = "libp2p"
EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
SIGNATURE_PREFIX = b"libp2p-tls-handshake:"
HIGH_WATER = 1024 * 1024        # bytes queued in a QUIC stream that pause its producer
LOW_WATER = 256 * 1024
MAX_HELD = 8 * 1024 * 1024      # bytes received on a paused stream before it is reset
SMALLEST_INITIAL = 1200         # a client's Initial datagram is at least this big (RFC 9000)
NO_ERROR, PROTOCOL_ERROR = 0, 1
AIOQUIC_CHECKED = "1.7.2"       # the version _Libp2pQuicConnection's internals were read in


# --- the libp2p certificate ------------------------------------------------------------
def _der(tag, content):
    n = len(content)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + content


def _der_items(data):
    """The (tag, content) items of a DER sequence's content."""
    items, pos = [], 0
    while pos < len(data):
        tag, n = data[pos], data[pos + 1]
        pos += 2
        if n & 0x80:
            size = n & 0x7F
            n, pos = int.from_bytes(data[pos:pos + size], "big"), pos + size
        items.append((tag, data[pos:pos + n]))
        pos += n
    if pos != len(data):
        raise ValueError("truncated DER")
    return items


def certificate(keypair):
    """A fresh self-signed certificate and key carrying ``keypair``'s libp2p extension."""
    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    signed_key = _der(0x30, _der(0x04, keypair.public_key)
                      + _der(0x04, keypair.sign(SIGNATURE_PREFIX + spki)))
    name = x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, os.urandom(8).hex())])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.UnrecognizedExtension(EXTENSION_OID, signed_key), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def peer_of(cert):
    """The PeerId a peer's libp2p certificate proves; ValueError when it proves none."""
    try:
        ext = cert.extensions.get_extension_for_oid(EXTENSION_OID).value.value
    except x509.ExtensionNotFound:
        raise ValueError("certificate without the libp2p extension") from None
    (tag, body), = _der_items(ext)
    items = _der_items(body) if tag == 0x30 else []
    if [t for t, _ in items] != [0x04, 0x04]:
        raise ValueError("malformed libp2p extension")
    public_key, signature = items[0][1], items[1][1]
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    if not verify(public_key, signature, SIGNATURE_PREFIX + spki):
        raise ValueError("libp2p extension signature does not verify")
    return PeerId.from_public_key(public_key)


class _Libp2pQuicConnection(QuicConnection):
    """aioquic's connection, asking the client for its certificate (libp2p needs
    mutual authentication; aioquic has the switch but no setting for it), and
    granting no more credit on a stream whose reader is paused (aioquic grows
    every window as data arrives, whether or not it is consumed).

    The only place relayd reaches into aioquic's internals: it has no public
    API for any of the four uses below.  Checked against aioquic
    ``AIOQUIC_CHECKED``; tests/test_libp2p_quic.py's ``AioquicInternalsTests``
    fails naming the one that moved when another version changes them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.held_back = set()          # stream ids granted no more credit for now

    def _initialize(self, peer_cid):
        super()._initialize(peer_cid)
        self.tls._request_client_certificate = True

    def _write_stream_limits(self, builder, space, stream):
        if stream.stream_id not in self.held_back:
            super()._write_stream_limits(builder, space, stream)

    def peer_certificate(self):
        """The peer's ``x509.Certificate`` once the handshake completed, or None."""
        return self.tls._peer_certificate

    def queued(self, stream_id):
        """Bytes written on ``stream_id`` and not yet acknowledged."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else len(stream.sender._buffer)


# --- streams and connections -------------------------------------------------------------
class QuicStream:
    """A QUIC bidirectional stream with the Yamux stream's interface."""

    def __init__(self, connection, stream_id):
        self.connection = connection
        self.id = stream_id
        self.handler = None
        self.producer = None
        self.producer_paused = False
        self.fin_sent = self.fin_received = self.closed = False
        self.paused = False
        self.held = bytearray()         # received while paused
        self.held_end = False

    def attach(self, handler):
        self.handler = handler
        handler.stream_opened(self)

    def write(self, data):
        if self.closed or self.fin_sent or not data:
            return
        if not self._send(bytes(data)):
            return
        if self.producer is not None and not self.producer_paused and self.queued() > HIGH_WATER:
            self.producer_paused = True
            self.producer.pause()

    def queued(self):
        return self.connection.quic.queued(self.id)

    def drained(self):
        if self.producer_paused and self.queued() < LOW_WATER:
            self.producer_paused = False
            self.producer.resume()

    def close(self):
        if self.closed or self.fin_sent:
            return
        self.fin_sent = True
        if self._send(b"", end=True):
            self._maybe_done()

    def _send(self, data, end=False):
        """Queue ``data`` in aioquic; False (and the stream reset) when it refuses."""
        try:
            self.connection.quic.send_stream_data(self.id, data, end_stream=end)
        except ValueError:              # the stream ended under us (the connection closing)
            self._finish(True)
            return False
        self.connection.transmit()
        return True

    def reset(self):
        if self.closed:
            return
        if not self.fin_sent:
            self.connection.quic.reset_stream(self.id, NO_ERROR)
        if not self.fin_received:
            self.connection.quic.stop_stream(self.id, NO_ERROR)
        self.connection.transmit()
        self._finish(True)

    def register_producer(self, producer):
        """``producer`` is paused while more than HIGH_WATER bytes wait to be acknowledged."""
        self.producer = producer

    def set_window(self, size):
        """QUIC windows are aioquic's (they grow with the transfer)."""

    def pause(self):
        """Stop delivering and stop granting the sender credit."""
        self.paused = True
        self.connection.quic.held_back.add(self.id)

    def resume(self):
        self.paused = False
        self.connection.quic.held_back.discard(self.id)
        held, end, self.held, self.held_end = bytes(self.held), self.held_end, bytearray(), False
        if held or end:
            self.received(held, end)
        self.connection.transmit()

    # --- from the connection ------------------------------------------------------
    def received(self, data, end):
        if self.closed:
            return
        if self.paused:
            self.held += data
            self.held_end = self.held_end or end
            if len(self.held) > MAX_HELD:
                self.reset()
            return
        if data and self.handler is not None:
            self.handler.data_received(data)
        if end and not self.fin_received and not self.closed:
            self.fin_received = True
            if self.handler is not None:
                self.handler.read_closed()
            self._maybe_done()

    def _maybe_done(self):
        if self.fin_sent and self.fin_received:
            self._finish(False)

    def _finish(self, reset):
        if self.closed:
            return
        self.closed = True
        self.connection.quic.held_back.discard(self.id)
        self.connection.session.streams.pop(self.id, None)
        if self.handler is not None:
            self.handler.stream_closed(reset)


class _Session:
    """What the idle sweep reads of a connection: its open streams."""

    def __init__(self):
        self.streams = {}


class _Endpoint:
    """``transport.getPeer()`` for the code written against TCP connections."""

    def __init__(self, peer):
        self.peer = peer

    def getPeer(self):
        return self.peer


class QuicLibp2pConnection:
    """One QUIC connection as the relay's handlers see a libp2p connection."""

    def __init__(self, endpoint, quic, addr):
        self.endpoint = endpoint
        self.factory = endpoint.factory
        self.quic = quic
        self.addr = addr
        host = ipaddress.ip_address(addr[0].split("%")[0])
        self.ip = str(host)
        peer = (IPv6Address if host.version == 6 else IPv4Address)("UDP", self.ip, addr[1])
        self.transport = _Endpoint(peer)
        self.remote_address = f"/ip{host.version}/{self.ip}/udp/{addr[1]}/quic-v1"
        self.remote_peer = None
        self.session = _Session()
        self.bytes_in = self.bytes_out = 0
        self.close_reason = self.close_kind = None
        self.idle_since = None
        self.ping_streams = 0
        self.ready = self.ended = False
        self.timer = self.handshake_timer = self.flush = None

    @property
    def handlers(self):
        return self.factory.handlers

    def open_protocol(self, protocol, handler):
        if not self.ready:
            return None
        stream = self._stream(self.quic.get_next_available_stream_id())
        stream.attach(OutboundNegotiation(protocol, handler))
        return stream

    def _stream(self, stream_id):
        stream = self.session.streams[stream_id] = QuicStream(self, stream_id)
        return stream

    # --- events ---------------------------------------------------------------------
    def datagram(self, data, addr, now):
        self.bytes_in += len(data)
        self.quic.receive_datagram(data, addr, now)
        self.process()

    def process(self):
        event = self.quic.next_event()
        while event is not None:
            self.event(event)
            event = self.quic.next_event()
        self.transmit()

    def event(self, event):
        if isinstance(event, events.HandshakeCompleted):
            self.handshake_done()
        elif isinstance(event, events.StreamDataReceived) and self.ready:
            stream = self.session.streams.get(event.stream_id)
            if stream is None:
                if event.stream_id % 4 != (1 if self.quic.configuration.is_client else 0):
                    return                  # a stream of ours that ended already
                stream = self._stream(event.stream_id)
                stream.attach(InboundNegotiation(self))
            stream.received(event.data, event.end_stream)
        elif isinstance(event, (events.StreamReset, events.StopSendingReceived)):
            stream = self.session.streams.get(event.stream_id)
            if stream is not None:
                stream._finish(True)
        elif isinstance(event, events.ConnectionIdIssued):
            self.endpoint.cids[event.connection_id] = self
        elif isinstance(event, events.ConnectionIdRetired):
            self.endpoint.cids.pop(event.connection_id, None)
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated()

    def handshake_done(self):
        try:
            self.remote_peer = peer_of(self.quic.peer_certificate())
        except (ValueError, AttributeError) as e:
            return self.abort(f"TLS: {e}", "tls")
        self.ready = True
        if self.handshake_timer is not None and self.handshake_timer.active():
            self.handshake_timer.cancel()
        self.factory.connection_ready(self)

    def transmit(self):
        """Send what aioquic has, once per reactor turn (writes in one turn coalesce)."""
        if self.flush is None and not self.ended:
            self.flush = self.endpoint.clock.callLater(0, self._send)

    def _send(self):
        self.flush = None
        now = self.endpoint.clock.seconds()
        for data, addr in self.quic.datagrams_to_send(now):
            self.bytes_out += len(data)
            self.endpoint.transport.write(data, addr)
        for stream in list(self.session.streams.values()):
            stream.drained()
        self.schedule()

    def schedule(self):
        at = self.quic.get_timer()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if at is not None:
            self.timer = self.endpoint.clock.callLater(
                max(0, at - self.endpoint.clock.seconds()), self.on_timer)

    def on_timer(self):
        self.timer = None
        self.quic.handle_timer(self.endpoint.clock.seconds())
        self.process()

    def terminated(self):
        if self.ended:
            return
        self.ended = True
        for call in (self.timer, self.flush):
            if call is not None and call.active():
                call.cancel()
        for stream in list(self.session.streams.values()):
            stream._finish(True)
        self.endpoint.forget(self)
        self.factory.connection_lost(self)

    # --- ending ---------------------------------------------------------------------
    def abort(self, reason, kind="policy"):
        if self.close_reason is None:
            self.close_reason, self.close_kind = reason, kind
        self.quic.close(error_code=PROTOCOL_ERROR, reason_phrase=reason[:100])
        self.transmit()

    def close(self):
        self.quic.close(error_code=NO_ERROR)
        self.transmit()


class QuicEndpoint(DatagramProtocol):
    """The UDP socket: routes datagrams to connections by connection id and
    accepts new ones within the factory's connection caps."""

    noisy = False

    on_listening = staticmethod(lambda: None)

    def __init__(self, factory, clock):
        self.factory = factory
        self.clock = clock
        self.cids = {}                  # connection id -> QuicLibp2pConnection
        self.retry = QuicRetryTokenHandler()
        cert, key = certificate(factory.keypair)
        self.configuration = QuicConfiguration(
            is_client=False, alpn_protocols=[ALPN], certificate=cert, private_key=key,
            verify_mode=ssl.CERT_NONE, idle_timeout=factory.settings.idle_timeout or 60)

    def startProtocol(self):
        self.on_listening()

    def datagramReceived(self, data, addr):
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
        except ValueError:
            return
        conn = self.cids.get(header.destination_cid)
        if conn is None:
            if (header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_INITIAL
                    or header.version not in self.configuration.supported_versions):
                return                      # nothing is answered to unknown traffic
            conn = self.accept(header, addr)
            if conn is None:
                return
        conn.datagram(data, addr, self.clock.seconds())

    def accept(self, header, addr):
        """A connection for a client Initial that echoes a Retry token (so its
        address is proven: a Retry is smaller than the Initial it answers, and
        nothing bigger goes to an address that did not show it receives)."""
        if not header.token:
            source_cid = os.urandom(8)
            self.transport.write(encode_quic_retry(
                version=header.version, source_cid=source_cid,
                destination_cid=header.source_cid, original_destination_cid=header.destination_cid,
                retry_token=self.retry.create_token(
                    address=addr, original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=source_cid, now=self.clock.seconds())), addr)
            return None
        try:
            original_cid = self.retry.validate_token(
                address=addr, destination_cid=header.destination_cid, token=header.token,
                now=self.clock.seconds())
        except ValueError:
            return None
        quic = _Libp2pQuicConnection(configuration=self.configuration,
                                     original_destination_connection_id=original_cid,
                                     retry_source_connection_id=header.destination_cid)
        conn = QuicLibp2pConnection(self, quic, addr)
        if not self.factory.admit(conn, conn.ip):
            return None
        conn.handshake_timer = self.clock.callLater(self.factory.handshake_timeout,
                                                    self._handshake_timeout, conn)
        self.cids[header.destination_cid] = self.cids[quic.host_cid] = conn
        return conn

    def _handshake_timeout(self, conn):
        if not conn.ready and not conn.ended:
            conn.abort("handshake timeout", "handshake-timeout")

    def forget(self, conn):
        if conn.handshake_timer is not None and conn.handshake_timer.active():
            conn.handshake_timer.cancel()
        for cid in [c for c, owner in self.cids.items() if owner is conn]:
            del self.cids[cid]

    def stopProtocol(self):
        """The socket is gone: connections end now, without their draining period."""
        for conn in set(self.cids.values()):
            conn.terminated()

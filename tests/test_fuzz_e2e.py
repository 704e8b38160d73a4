"""Hostile input against a real ``twistd relayd`` with every listener on:
seeded random requests, damaged frames, bad UTF-8, noise and half-open
connections on the TCP relay (both dialects), the UDP port (rendezvous and
STUN), the federation, libp2p (TCP, WebSocket, QUIC) and HTTP listeners.

What a user would check afterwards: every answer on the relay is a JSON
line; no address got back more UDP bytes than its budget allows; the daemon
still serves and logged no traceback and no overlong line; the messages it
acked in the meantime all reach their offline recipient after a restart.
An authenticated federation peer sends malformed items too, and libp2p
peers that pass Noise and yamux send malformed protobufs on every protocol
the relay speaks. The first test runs against a cluster node as well.

``RELAYD_FUZZ_SEED`` picks another seed (the default one runs in CI);
``RELAYD_FUZZ_SESSIONS`` sets how many sessions each listener gets.
"""
import base64
import json
import os
import random
import select
import socket
import ssl
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from relayd.e2ee import wire
from relayd.federation.frames import is_seq
from relayd.libp2p import identify, messages, varint
from relayd.libp2p.peer import Peer, Pipe, StopAcceptor
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.yamux import StreamHandler
from tests import fuzzinput
from tests.daemon import READY, Relayd, free_port
from tests.engine import nats_engine
from tests.test_ops_support import http_json
from tests.test_tls import make_pki
from tests.seedclient import LineClient

SEED = int(os.environ.get("RELAYD_FUZZ_SEED", "20261207"))
SESSIONS = int(os.environ.get("RELAYD_FUZZ_SESSIONS", "120"))
BATCH = 30                  # connections open at once
QUIET = 0.5                 # seconds without a byte that end a batch's reading
LINE_TIMEOUT = 2
MAX_LOG_LINE = 1000         # characters: what one line of the log may take
READY_LINE = "accepting messages"   # a cluster node's, once linked to its engine

INI = """
[relay]
id = fuzzed
data_dir = {data_dir}
[tcp]
listen = tcp:{tcp}:interface=127.0.0.1
max_line = 4096
line_timeout = %d
[ratelimit]
messages = 100000
per_seconds = 1
[http]
listen = tcp:{http}:interface=127.0.0.1
[udp]
listen = {udp}
interface = 127.0.0.1
[libp2p]
listen = tcp:{p2p}:interface=127.0.0.1
connect_timeout = 1s
ws_listen = tcp:{ws}:interface=127.0.0.1
quic_listen = 127.0.0.1:{quic}
[kad]
[gossipsub]
bridge = lobby
[federation]
listen = tcp:{fed}:interface=127.0.0.1
[peer:other]
endpoint = tcp:127.0.0.1:{dead}
key = {key}
""" % LINE_TIMEOUT


def read_all(socks, quiet=QUIET, limit=10.0):
    """Read every socket of ``socks`` until it closes or ``quiet`` seconds
    pass without a byte from any: {socket: bytes}."""
    got = {s: b"" for s in socks}
    open_ = set(socks)
    deadline = time.monotonic() + limit
    while open_ and time.monotonic() < deadline:
        ready = [s for s in open_ if isinstance(s, ssl.SSLSocket) and s.pending()] \
            or select.select(list(open_), [], [], quiet)[0]
        if not ready:
            break
        for s in ready:
            try:
                chunk = s.recv(65536)
            except (ConnectionError, socket.timeout, ssl.SSLError):
                chunk = b""
            if chunk:
                got[s] += chunk
            else:
                open_.discard(s)
    return got


def received_datagrams(socks, quiet=0.05):
    """The datagrams waiting on ``socks`` and those arriving until none has
    for ``quiet`` seconds."""
    got = []
    while True:
        ready = select.select(socks, [], [], quiet)[0]
        if not ready:
            return got
        got += [s.recv(65536) for s in ready]


def plain_socket(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def send_quietly(sock, data):
    """Send what the peer takes; a peer that closed on us is an answer too."""
    try:
        sock.sendall(data)
    except OSError:
        pass


class FederationPeer:
    """Relay "other", configured as a peer of the fuzzed relay: it proves its
    key in the handshake, then sends whatever frames it is given."""

    PROTO = "relayd-federation/1"

    def __init__(self, port):
        self.key = Ed25519PrivateKey.generate()
        self.port = port
        self.sock = None

    def public_key(self):
        return base64.b64encode(self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()

    def link(self):
        """Connect and authenticate: the link is up."""
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.file = self.sock.makefile("rb")
        nonce = os.urandom(16).hex()
        self.send({"type": "hello", "proto": self.PROTO, "relay": "other",
                   "key": self.public_key(), "nonce": nonce, "features": ["have-ranges"]})
        theirs = self.read("hello")
        signed = f"{self.PROTO}|other|{theirs['relay']}|{nonce}|{theirs['nonce']}".encode()
        self.send({"type": "auth", "sig": base64.b64encode(self.key.sign(signed)).decode()})
        self.read("auth")

    def send(self, frame):
        self.sock.sendall(json.dumps(frame).encode() + b"\n")

    def read(self, kind):
        """The next frame of ``kind``, the others skipped."""
        while True:
            line = self.file.readline()
            if not line:
                raise EOFError(f"the relay closed the link waiting for {kind}")
            frame = json.loads(line)
            if frame.get("type") == kind:
                return frame

    def answers(self, timeout=10.0):
        """What the relay sends until its ``pong`` (it answers frames in
        order) or until it closes the link."""
        got = b""
        self.sock.settimeout(timeout)
        while b'"type":"pong"' not in got:
            try:
                chunk = self.file.read1(65536)
            except (ConnectionError, socket.timeout):
                break
            if not chunk:
                break
            got += chunk
        return got

    def close(self):
        if self.sock is not None:
            self.file.close()
            self.sock.close()
            self.sock = None


class HostileInput:
    """A fuzzed daemon (set up per test) and the test of its TCP, UDP,
    HTTP, federation and unauthenticated libp2p listeners."""

    PHASES = ("fuzz_relay", "fuzz_proved_sessions", "fuzz_udp", "fuzz_udp_proven",
              "fuzz_other_listeners", "fuzz_federation_peer")

    def setUp(self):
        self.rng = random.Random(SEED)
        ports = {name: free_port() for name in ("tcp", "http", "p2p", "ws", "fed", "dead")}
        ports["udp"] = free_port(socket.SOCK_DGRAM)
        ports["quic"] = free_port(socket.SOCK_DGRAM)
        self.peer = FederationPeer(ports["fed"])
        self.addCleanup(self.peer.close)
        self.relay = Relayd(self, self.ini(), key=self.peer.public_key(), **ports)
        self.ports = ports
        self.start_relay()
        self.acked = []             # msg_ids acked to the witness, for zed (offline)
        self.witness = LineClient(ports["tcp"], "witness", sock=self.client_socket())
        self.addCleanup(self.witness.close)

    def ini(self):
        return INI

    def start_relay(self):
        self.relay.start(wait_tcp=[self.ports[name] for name in ("tcp", "http", "p2p", "fed")])

    def kept_state(self):
        """What the daemon keeps across a restart, as /stats shows it."""
        _, stats = http_json(self.ports["http"], "/stats")
        kept = {key: stats["tcp"][key] for key in ("mailbox_messages", "mailbox_peers",
                                                   "owned_ids", "dedup_window")}
        kept.update(keyed_ids=stats["e2ee"]["ids"], prekeys=stats["e2ee"]["prekeys"],
                    kad_records=stats["kad"]["records"])
        return kept

    def kept_across_a_restart(self, before):
        """What ``kept_state`` shows after a clean restart, given ``before``."""
        return before

    def client_socket(self):
        """A connection to the client listener, as a client makes it."""
        return plain_socket(self.ports["tcp"])

    def connect(self, port):
        return self.client_socket() if port == self.ports["tcp"] else plain_socket(port)

    def fail_with(self, what):
        self.fail(f"seed {SEED}: {what}")

    def witness_sends(self, n):
        """A well-behaved client's direct message to offline zed, and its ack."""
        nonce = "w%d" % n
        self.witness.request(type="send", to="zed", body="kept %d" % n, nonce=nonce, req=nonce)
        while True:
            reply = self.witness.read()
            if reply.get("req") == nonce:
                break
        if reply.get("type") != "ack":
            self.fail_with(f"the witness's message was refused: {reply}")
        self.acked.append(reply["msg_id"])

    def connections(self, port, payloads, check_lines, connect=None):
        """Open a connection per payload (with ``connect(port)``, else as a
        client does), send them all, read every answer; each connection ends
        in one of the ways a client can end."""
        socks = []
        for payload in payloads:
            s = (connect or self.connect)(port)
            send_quietly(s, payload)
            ending = self.rng.choice(["open", "shut", "reset"])
            if ending == "shut":
                try:            # the TCP half-close itself (an SSLSocket's would drop TLS)
                    socket.socket.shutdown(s, socket.SHUT_WR)
                except OSError:
                    pass
            socks.append((s, ending))
        got = read_all([s for s, _ in socks])
        for (s, ending), payload in zip(socks, payloads):
            if check_lines:
                self.assertJsonLines(got[s], payload)
            if ending == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            s.close()

    def assertJsonLines(self, data, sent):
        for line in data.split(b"\n")[:-1]:
            try:
                obj = json.loads(line)
            except ValueError:
                self.fail_with(f"not a JSON line: {line[:200]!r}, after {sent[:300]!r}")
            if not isinstance(obj, dict):
                self.fail_with(f"not a JSON object: {line[:200]!r}")

    def fuzz_relay(self):
        for start in range(0, SESSIONS, BATCH):
            payloads = []
            for _ in range(BATCH):
                if self.rng.random() < 0.7:
                    hello = json.dumps({"type": "hello", "id": fuzzinput.peer_id(self.rng)})
                    payloads.append(hello.encode() + b"\n" + fuzzinput.json_lines(
                        self.rng, self.rng.randrange(1, 40)))
                else:
                    payloads.append(fuzzinput.legacy_frames(self.rng, self.rng.randrange(1, 20)))
            self.connections(self.ports["tcp"], payloads, check_lines=True)
            self.witness_sends(start)

    def fuzz_proved_sessions(self):
        """Clients that prove their id with a key (what reaches the key
        directory and the owned-id paths), then send odd requests."""
        for n in range(SESSIONS // 20):
            key = Ed25519PrivateKey.generate()
            public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                                   serialization.PublicFormat.Raw)
            client = LineClient(self.ports["tcp"], sock=self.client_socket())
            client.request(type="hello", id=f"owner{n}", key=base64.b64encode(public).decode())
            challenge = client.read()
            signed = f"relayd-auth:{challenge['relay']}:owner{n}:{challenge['challenge']}"
            client.request(type="auth", signature=base64.b64encode(key.sign(signed.encode())).decode())
            self.assertTrue(client.read()["authenticated"])
            client.request(type="keys_publish", **{
                "spk": wire.prekey_record(key, wire.SPK_LABEL, f"owner{n}", self.rng.randbytes(32)),
                "opks": [wire.prekey_record(key, wire.OPK_LABEL, f"owner{n}", self.rng.randbytes(32))
                         for _ in range(self.rng.choice([0, 1, 50, 101]))]})
            send_quietly(client.sock, fuzzinput.json_lines(self.rng, 40))
            self.assertJsonLines(read_all([client.sock])[client.sock], b"(a proved session)")
            client.close()

    def fuzz_udp(self):
        """Every datagram from unproven addresses (no valid cookie or key is
        ever sent): what comes back to all of them together stays within
        the per-IP byte budget of PROTOCOL.md."""
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(40)]
        sent = received = 0
        begin = time.monotonic()
        for s in socks:
            s.bind(("127.0.0.1", 0))
        for _ in range(SESSIONS // 8):
            for s in socks:
                data = fuzzinput.datagram(self.rng)
                s.sendto(data, ("127.0.0.1", self.ports["udp"]))
                sent += len(data)
            received += sum(map(len, received_datagrams(socks)))
        received += sum(map(len, received_datagrams(socks, quiet=0.3)))
        for s in socks:
            s.close()
        allowance = 4096 + 512 * (time.monotonic() - begin)
        if received > sent + allowance:
            self.fail_with(f"UDP: {received} bytes back for {sent} sent "
                           f"(budget allows {sent + allowance:.0f})")
        quic = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(SESSIONS):
            quic.sendto(self.rng.randbytes(self.rng.randrange(1, 1400)),
                        ("127.0.0.1", self.ports["quic"]))
        quic.close()

    def fuzz_udp_proven(self):
        """Addresses that proved they receive (with a ping's cookie), from
        another loopback IP: no budget limits them, so every answer is
        checked instead: one JSON object or one STUN message a datagram,
        none over max_datagram."""
        udp = ("127.0.0.1", self.ports["udp"])
        socks = []
        for n in range(10):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            s.sendto(json.dumps({"type": "ping", "cookie": "", "pad": "p" * 200}).encode(), udp)
            cookie = json.loads(s.recv(8192))["cookie"]
            name = ("alice", "bob")[n] if n < 2 else "fz%d" % n      # names the fuzz targets
            s.sendto(json.dumps({"type": "register", "name": name, "cookie": cookie}).encode(), udp)
            socks.append((s, cookie))
        for _ in range(SESSIONS // 8):
            for s, cookie in socks:
                s.sendto(fuzzinput.datagram(self.rng, cookie), udp)
            for data in received_datagrams([s for s, _ in socks]):
                self.assertDatagram(data)
        for s, _ in socks:
            s.close()

    def assertDatagram(self, data):
        if len(data) > 8192:
            self.fail_with(f"a datagram of {len(data)} bytes")
        if data[:1] < b"\x40":        # STUN (RFC 8489, or 3489 without the cookie): header, length
            if 20 + int.from_bytes(data[2:4], "big") != len(data):
                self.fail_with(f"a malformed STUN answer: {data[:60]!r}")
        elif not isinstance(json.loads(data), dict):
            self.fail_with(f"not a JSON object: {data[:200]!r}")

    def fuzz_other_listeners(self):
        for name in ("p2p", "ws", "http", "fed", "tcp"):
            self.connections(self.ports[name], [fuzzinput.noise(self.rng)
                                                for _ in range(SESSIONS // 8)], check_lines=False)
        self.connections(self.ports["fed"], [fuzzinput.federation_handshake(self.rng, 10)
                                             for _ in range(SESSIONS // 4)], check_lines=True)
        self.connections(self.ports["ws"], [fuzzinput.websocket(self.rng)
                                            for _ in range(SESSIONS // 4)], check_lines=False)

    def fuzz_federation_peer(self):
        """An authenticated peer sends malformed and odd items; each gets an
        error or is taken, and the items it then sends for zed are kept."""
        answers = b""
        for _ in range(SESSIONS // 20):
            self.peer.link()
            send_quietly(self.peer.sock, fuzzinput.federation_items(self.rng, 40)
                         + b'{"type": "ping"}\n')
            answers += self.peer.answers()
            self.peer.close()
        self.assertIn(b'"bad_item"', answers)       # the items got as far as their checks
        self.peer.link()
        for seq in range(1, 4):
            msg_id = os.urandom(32).hex()
            self.peer.send({"type": "msg", "origin": "faraway", "seq": seq, "entry": {
                "from": "far", "to": "zed", "body": f"federated {seq}", "timestamp": time.time(),
                "seen_by": ["faraway", "other"], "msg_id": msg_id}})
            self.acked.append(msg_id)
        self.peer.send({"type": "ping"})
        self.peer.read("pong")

    def test_hostile_input_loses_nothing_and_breaks_nothing(self):
        half_open = self.client_socket()
        half_open.sendall(b'{"type": "hello", "id": "slowpoke"}\n{"type": "pi')
        for phase in self.PHASES:
            getattr(self, phase)()
        self.witness_sends(-1)
        # the relay's own items still go to its peer under a seq the peer accepts
        while True:
            frame = self.peer.read("msg")
            if frame["entry"]["msg_id"] == self.acked[-1]:
                break
        self.assertTrue(is_seq(frame["seq"]), frame["seq"])
        # the line left unfinished was cut off, with a reason
        half_open.settimeout(LINE_TIMEOUT + 5)
        tail = b"".join(iter(lambda: half_open.recv(4096), b""))
        self.assertIn(b"line_timeout", tail)
        half_open.close()
        # the daemon still serves: a room message between two fresh clients, /health
        bob = LineClient(self.ports["tcp"], "late-bob", sock=self.client_socket())
        bob.request(type="join", room="after")
        self.assertEqual(bob.read()["type"], "joined")
        alice = LineClient(self.ports["tcp"], "late-alice", sock=self.client_socket())
        alice.request(type="send", room="after", body="still here")
        got = bob.read()
        self.assertEqual((got["from"], got["body"]), ("late-alice", "still here"))
        self.assertEqual(alice.read()["type"], "ack")     # durable: the state below is settled
        alice.close()
        bob.close()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.ports['http']}/health", timeout=5)
        except urllib.error.HTTPError as e:     # 503: only the peer nobody runs is down
            self.assertEqual(list(json.load(e)["problems"]), ["federation"])
        # a clean stop, then the same state back and every acked message reaches zed
        before = self.kept_state()
        self.assertEqual(self.relay.stop(), 0)
        self.start_relay()
        self.assertEqual(self.kept_state(), self.kept_across_a_restart(before))
        zed = LineClient(self.ports["tcp"], "zed", sock=self.client_socket())
        delivered = [zed.read()["msg_id"] for _ in self.acked]
        self.assertEqual(sorted(delivered), sorted(self.acked))
        zed.close()
        self.relay.stop()
        self.assertLogHealthy()

    def assertLogHealthy(self):
        log = self.relay.log()
        for marker in ("Traceback", "#critical]"):
            at = log.find(marker)
            if at >= 0:
                self.fail_with(f"the log has {marker}:\n{log[max(at - 500, 0):at + 3000]}")
        longest = max((line for line in log.splitlines() if " stats relay=" not in line),
                      key=len)      # the periodic stats line grows with the config, not the input
        if len(longest) > MAX_LOG_LINE:
            self.fail_with(f"a log line of {len(longest)} characters: {longest[:300]}...")


class FuzzedDaemon(HostileInput, unittest.TestCase):

    @defer.inlineCallbacks
    def test_libp2p_streams_with_hostile_messages(self):
        """Peers that pass Noise and yamux, then open the relay's protocols and
        write malformed protobufs: afterwards a new peer is still served."""
        for _ in range(SESSIONS // 4):
            peer = yield self.libp2p_peer()
            for _ in range(self.rng.randrange(1, 6)):
                protocol = self.rng.choice(sorted(fuzzinput.SCHEMAS))
                pipe = Pipe()
                if peer.connection.open_protocol(protocol, pipe) is None:
                    break                               # the relay closed the connection
                pipe.opened.addCallback(lambda _, pipe=pipe, data=fuzzinput.stream_bytes(
                    self.rng, protocol): pipe.stream.write(data))
            yield task.deferLater(reactor, 0.02)
            yield peer.close()
        peer = yield self.libp2p_peer()
        pipe = Pipe()
        peer.connection.open_protocol(identify.PROTOCOL_ID, pipe)
        for _ in range(1000):                          # the answer, then FIN: at most 10 s
            if pipe.fin:
                break
            yield task.deferLater(reactor, 0.01)
        info = identify.decode(varint.split_prefixed(bytes(pipe.received), 65536)[0])
        self.assertIn("/ipfs/kad/1.0.0", info["protocols"])
        yield peer.close()
        self.assertEqual(self.relay.stop(), 0)
        self.assertLogHealthy()

    @defer.inlineCallbacks
    def test_a_circuit_target_that_answers_stop_with_hostile_bytes(self):
        """A reserved peer answers each STOP with malformed, cut short, reset
        or no answers: every initiator gets an answer, no circuit is left
        behind, and a fair target is then reached through the same relay."""
        target = yield self.libp2p_peer()
        rng = self.rng

        class HostileStop(StreamHandler):
            def stream_opened(self, stream):
                self.stream = stream
                ending = rng.choice(["open", "fin", "reset", "silent", "silent reset"])
                if not ending.startswith("silent"):
                    stream.write(fuzzinput.stream_bytes(rng, messages.STOP_PROTOCOL_ID,
                                                        fuzzinput.ANSWERS))
                if ending == "fin":
                    stream.close()
                elif ending.endswith("reset"):
                    stream.reset()
        target.handlers[messages.STOP_PROTOCOL_ID] = lambda connection: HostileStop()
        _, _, status, _ = yield target.reserve()
        self.assertEqual(status, messages.OK)
        for _ in range(SESSIONS // 8):
            initiator = yield self.libp2p_peer()
            _, _, status, _ = yield initiator.connect(target.keypair.peer_id, Pipe())
            self.assertIn(status, (messages.OK, messages.CONNECTION_FAILED))
            yield initiator.close()
        for _ in range(500):                            # at most 5 s
            if http_json(self.ports["http"], "/stats")[1]["libp2p"]["circuits"] == 0:
                break
            yield task.deferLater(reactor, 0.01)
        self.assertEqual(http_json(self.ports["http"], "/stats")[1]["libp2p"]["circuits"], 0)
        target.handlers[messages.STOP_PROTOCOL_ID] = StopAcceptor
        arriving = target.next_circuit()
        initiator, there = (yield self.libp2p_peer()), Pipe()
        _, _, status, _ = yield initiator.connect(target.keypair.peer_id, there)
        self.assertEqual(status, messages.OK)
        here = yield arriving
        there.stream.write(b"fair")
        self.assertEqual((yield here.wait_for(4)), b"fair")
        yield initiator.close()
        yield target.close()
        self.assertEqual(self.relay.stop(), 0)
        self.assertLogHealthy()

    @defer.inlineCallbacks
    def libp2p_peer(self):
        peer = Peer(reactor, KeyPair(Ed25519PrivateKey.generate()))
        connector = reactor.connectTCP("127.0.0.1", self.ports["p2p"], peer)
        yield peer.ready

        def close():        # abort: what is still queued for the relay does not matter
            if peer.connection is not None:
                peer.connection.transport.abortConnection()
            connector.disconnect()
            return peer.lost
        peer.close = close
        return peer


class FuzzedTLSListener(HostileInput, unittest.TestCase):
    """The same with the client listener behind TLS (``[tls]``): every
    client connection of the test shakes hands first, and the noise
    reaches the TLS layer (not TLS at all, or a cut or bent ClientHello)."""

    PHASES = ("fuzz_relay", "fuzz_proved_sessions", "fuzz_other_listeners",
              "fuzz_federation_peer")

    def ini(self):
        return INI + """[tls]
cert = {workdir}/pki/relay1.pem
key = {workdir}/pki/relay1.key
"""

    def start_relay(self):
        pki = os.path.join(self.relay.workdir, "pki")
        if not os.path.isdir(pki):
            self.context = ssl.create_default_context(cafile=make_pki(pki)["ca.pem"])
        super().start_relay()

    def client_socket(self):
        return self.context.wrap_socket(plain_socket(self.ports["tcp"]),
                                        server_hostname="localhost")

    def fuzz_other_listeners(self):
        super().fuzz_other_listeners()
        self.connections(self.ports["tcp"], [fuzzinput.noise(self.rng)
                                             for _ in range(SESSIONS // 4)],
                         check_lines=False, connect=plain_socket)


class FuzzedClusterNode(HostileInput, unittest.TestCase):
    """The same against a node of a cluster (``[cluster]``, a one-server
    nats-server JetStream engine): sessions, rooms, mail and the federation
    leader's links go through the engine."""

    def setUp(self):
        self.engine = nats_engine(self, nodes=1)
        super().setUp()

    def ini(self):
        return INI + f"""[cluster]
engine = {self.engine.urls[0]}
node = n1
replicas = 1
"""

    def kept_across_a_restart(self, before):
        """The mail the node's own mailboxes held is left to the engine at a
        restart (docs/OPERATIONS.md, "A node's own journal"): zed's, and any
        other peer's, comes from there."""
        return dict(before, mailbox_messages=0, mailbox_peers=0)

    def start_relay(self):
        super().start_relay()
        deadline = time.monotonic() + 60
        while self.relay.log().count(READY_LINE) < self.relay.log().count(READY):
            if time.monotonic() > deadline:
                self.fail("the node did not link to the engine:\n" + self.relay.log()[-3000:])
            time.sleep(0.05)

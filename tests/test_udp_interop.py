"""The running daemon (twistd subprocess) against a client written to the
seed-001 packet formats, and against a STUN client from PyPI (aioice)."""
import json
import socket
import time

from twisted.trial import unittest

from tests.daemon import Relayd, free_port

try:
    from aioice import stun as aioice_stun
except ImportError:          # pragma: no cover - aioice is a test extra
    aioice_stun = None

INI = """
    [relay]
    data_dir = {data_dir}
    [udp]
    listen = {udp}
    interface = 127.0.0.1
    keepalive = 1
    stale_after = 3
"""


class SeedClient:
    """What the seed's secure_chat client does on the wire: plain JSON datagrams."""

    def __init__(self, server, name):
        self.server, self.name = server, name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)

    def close(self):
        self.sock.close()

    def send(self, packet):
        self.sock.sendto(json.dumps(packet).encode("utf-8"), self.server)

    def receive(self, kind=None):
        """The next packet (of type ``kind``, skipping others)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            data, address = self.sock.recvfrom(8192)     # the seed's MAX_PACKET_SIZE
            packet = json.loads(data.decode("utf-8"))
            if kind is None or packet["type"] == kind:
                return packet
        raise AssertionError(f"no {kind} packet")


def start_daemon(testcase):
    port = free_port(socket.SOCK_DGRAM)
    relay = Relayd(testcase, INI, udp=port).start()
    server = ("127.0.0.1", port)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(0.2)
    try:
        for _ in range(150):                 # until it answers a (padded) ping
            probe.sendto(json.dumps({"type": "ping", "pad": "x" * 100}).encode(), server)
            try:
                probe.recvfrom(8192)
                return server
            except socket.timeout:
                if relay.process.poll() is not None:
                    break
    finally:
        probe.close()
    raise AssertionError(f"relayd did not answer on UDP {port}:\n{relay.output()}")


class SeedInteropTests(unittest.TestCase):
    def setUp(self):
        self.server = start_daemon(self)

    def client(self, name):
        client = SeedClient(self.server, name)
        self.addCleanup(client.close)
        return client

    def test_seed_client_session(self):
        alice, bob = self.client("Alice"), self.client("Bob")
        alice.send({"type": "register", "name": "Alice"})
        ack = alice.receive()
        self.assertEqual((ack["type"], ack["status"], ack["peer_name"]),
                         ("register_ack", "success", "Alice"))
        ip, port = ack["your_address"].split(":")      # exactly what the seed client does
        self.assertEqual((ip, int(port)), alice.sock.getsockname())
        self.assertEqual(alice.receive(), {"type": "peer_list", "peers": ["Alice"], "count": 1})

        bob.send({"type": "register", "name": "Bob"})
        self.assertEqual(bob.receive()["type"], "register_ack")
        self.assertEqual(alice.receive("peer_joined")["peer_name"], "Bob")

        inner = {"type": "handshake", "data": "eyJuYW1lIjogIkFsaWNlIn0=", "signature": "c2ln"}
        alice.send({"type": "relay", "target": "Bob", "source": "Alice",
                    "payload": json.dumps(inner)})
        relayed = bob.receive("relayed_packet")
        self.assertEqual((relayed["from_peer"], relayed["via_relay"]), ("Alice", True))
        self.assertEqual(json.loads(relayed["payload"]), inner)

        bob.send({"type": "keepalive", "name": "Bob"})
        self.assertEqual(bob.receive("keepalive_ack")["peer_name"], "Bob")
        self.assertEqual(bob.receive("server_keepalive")["peer_name"], "Bob")

        # A forged relay "from Bob" by Alice arrives as from Alice; an unknown
        # target gets an error instead of silence.
        alice.send({"type": "relay", "target": "Bob", "source": "Bob", "payload": "x"})
        self.assertEqual(bob.receive("relayed_packet")["from_peer"], "Alice")
        alice.send({"type": "relay", "target": "Carol", "source": "Alice", "payload": "x"})
        self.assertEqual(alice.receive("error")["code"], "unknown_target")

        # Alice falls silent; after stale_after the relay drops her and tells Bob.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            bob.send({"type": "keepalive", "name": "Bob"})
            packet = bob.receive()
            if packet["type"] == "peer_left":
                self.assertEqual((packet["peer_name"], packet["peers"]), ("Alice", ["Bob"]))
                break
        else:
            self.fail("no peer_left for Alice")


class StunInteropTests(unittest.TestCase):
    def setUp(self):
        if aioice_stun is None:
            raise unittest.SkipTest("aioice (a test extra) is not installed")
        self.server = start_daemon(self)

    def test_aioice_binding_request(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        request = aioice_stun.Message(message_method=aioice_stun.Method.BINDING,
                                      message_class=aioice_stun.Class.REQUEST)
        request.attributes["SOFTWARE"] = "aioice interop test"
        request.add_fingerprint()
        sock.sendto(bytes(request), self.server)
        data, _ = sock.recvfrom(2048)
        response = aioice_stun.parse_message(data)       # checks FINGERPRINT too
        self.assertEqual(response.message_class, aioice_stun.Class.RESPONSE)
        self.assertEqual(response.transaction_id, request.transaction_id)
        self.assertEqual(response.attributes["XOR-MAPPED-ADDRESS"], sock.getsockname())
        self.assertIn("FINGERPRINT", response.attributes)
        # The JSON protocol keeps working on the same port.
        sock.sendto(json.dumps({"type": "register", "name": "stunner"}).encode(), self.server)
        self.assertEqual(json.loads(sock.recvfrom(8192)[0])["type"], "register_ack")

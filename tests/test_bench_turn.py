"""The benchmark's TURN client (``bench.turn``): it retransmits a request
unchanged, and its pairs relay through coturn itself."""
import contextlib
import shutil
import socket
import tempfile
import threading

from twisted.trial import unittest

from bench import turn
from bench.server import HOST
from bench.udp_relay import start_turnserver, turn_pairs
from relayd.udp import stun


def udp_socket():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    return sock


class RetransmissionTests(unittest.TestCase):
    def test_a_lost_request_is_resent_with_the_same_transaction(self):
        """The first request is dropped; the second must be the same bytes,
        and its answer ends the request."""
        server, client = udp_socket(), udp_socket()
        self.addCleanup(server.close)
        self.addCleanup(client.close)
        seen = []

        def serve():
            server.settimeout(5)
            for _ in range(2):
                data, peer = server.recvfrom(2048)
                seen.append(data)
            txid = stun.parse(data).transaction_id
            server.sendto(stun.encode(turn.CHANNEL_BIND, stun.SUCCESS, txid, []), peer)

        thread = threading.Thread(target=serve)
        thread.start()
        answer = turn.request(client, server.getsockname(), turn.CHANNEL_BIND, lambda txid: [],
                              timeout=5, rto=0.05)
        thread.join(5)
        self.assertEqual(len(seen), 2)
        self.assertEqual(seen[0], seen[1])
        self.assertEqual(answer.transaction_id, stun.parse(seen[0]).transaction_id)

    def test_no_answer_is_an_error_naming_the_method(self):
        server, client = udp_socket(), udp_socket()
        self.addCleanup(server.close)
        self.addCleanup(client.close)
        with self.assertRaises(turn.TurnError) as raised:
            turn.request(client, server.getsockname(), turn.ALLOCATE, lambda txid: [],
                         timeout=0.3, rto=0.05)
        self.assertIn("no answer to TURN method 0x3", str(raised.exception))


class CoturnTests(unittest.TestCase):
    def setUp(self):
        if shutil.which("turnserver") is None:
            raise unittest.SkipTest("coturn's turnserver is not installed (tests/debian-packages.txt)")
        workdir = tempfile.mkdtemp(prefix="test-coturn-")
        self.addCleanup(shutil.rmtree, workdir, True)
        process, port = start_turnserver(workdir)
        self.addCleanup(process.wait, 10)
        self.addCleanup(process.terminate)
        self.server = (HOST, port)

    def test_each_sender_reaches_its_own_receiver_by_channel_data(self):
        with contextlib.ExitStack() as sockets:
            senders, receivers = turn_pairs(sockets, self.server, pairs=3)
            for n, sender in enumerate(senders):
                sender.sendto(turn.channel_data(turn.FIRST_CHANNEL, b"to %d" % n), self.server)
            for n, receiver in enumerate(receivers):
                receiver.settimeout(5)
                self.assertEqual(receiver.recvfrom(2048)[0], b"to %d" % n)

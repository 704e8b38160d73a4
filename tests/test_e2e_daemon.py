"""The daemon as a user runs it: twistd subprocess, real clients, signals."""
import os
import signal
import socket
import threading
import time

from twisted.trial import unittest

from relayd.journal import segments
from relayd.journal.replay import check

from tests.daemon import REPO, TWISTD, Relayd, free_port, relay_ini, wait_for_port
from tests.seedclient import LineClient, SeedClient

BASIC = relay_ini("""
[ratelimit]
messages = 100000
per_seconds = 1
""", id="relay1")


def journal_records(data_dir):
    folder = os.path.join(data_dir, "journal")
    records = []
    for segment in segments.scan(folder):
        with open(os.path.join(folder, segment.name), "rb") as f:
            for line in f:
                record, _ = check(line)
                if record is not None:
                    records.append(record)
    return records


class DaemonTests(unittest.TestCase):
    timeout = 120

    def start(self, ini=BASIC, **ports):
        ports.setdefault("tcp", free_port())
        relay = Relayd(self, ini, **ports)
        relay.start(wait_tcp=[ports["tcp"]])
        return relay

    def test_seed_client_and_json_client(self):
        relay = self.start()
        port = relay.ports["tcp"]
        bob = LineClient(port, "bob")
        self.addCleanup(bob.close)
        alice = SeedClient(port, "alice")
        self.addCleanup(alice.close)
        time.sleep(0.2)
        alice.send("bob", "secret payload text")
        [ack] = alice.read_objects(1)
        self.assertEqual(list(ack), ["status", "msg_id"])
        self.assertEqual(ack["status"], "ok")
        msg = bob.read()
        self.assertEqual((msg["from"], msg["to"], msg["body"], msg["msg_id"]),
                         ("alice", "bob", "secret payload text", ack["msg_id"]))
        bob.request(type="send", to="alice", body="reply")
        self.assertEqual(bob.read()["type"], "ack")
        [reply] = alice.read_objects(1)
        self.assertEqual(reply["body"], "reply")
        self.assertEqual(relay.stop(), 0)
        log = relay.log()
        self.assertIn("legacy client alice identified", log)
        self.assertNotIn("secret payload text", log, "payloads are never logged")

    def test_config_error_stops_before_listening(self):
        port = free_port()
        relay = Relayd(self, BASIC + "max_line = lots\n", tcp=port)
        code, output = relay.run_to_exit()
        self.assertNotEqual(code, 0)
        self.assertIn("[ratelimit] max_line", output)
        self.assertFalse(wait_for_port(port, timeout=0.5))

    def test_bad_value_names_section_and_key(self):
        relay = Relayd(self, BASIC.replace("listen = tcp:{tcp}", "listen = tcpx:{tcp}"), tcp=free_port())
        code, output = relay.run_to_exit()
        self.assertNotEqual(code, 0)
        self.assertIn("[tcp] listen", output)

    def assertPortInUse(self, ini, kind, where, **ports):
        """The daemon, on a port the test holds, exits 1 with one line naming
        ``where`` (the section, key and value) and the address, no traceback."""
        blocker = socket.socket(socket.AF_INET, kind)
        blocker.bind(("127.0.0.1", free_port(kind)))
        if kind == socket.SOCK_STREAM:
            blocker.listen(1)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        relay = Relayd(self, ini, held=port, **ports)
        code, output = relay.run_to_exit()
        self.assertEqual(code, 1, output)
        self.assertIn(f"relayd: {where.format(held=port)}: cannot listen on 127.0.0.1:{port}: "
                      "Address already in use\n", output)
        self.assertNotIn("Traceback", output)

    def test_port_in_use_names_the_listener(self):
        self.assertPortInUse(BASIC.replace("{tcp}", "{held}"), socket.SOCK_STREAM,
                             "[tcp] listen = tcp:{held}:interface=127.0.0.1")

    def test_port_in_use_names_a_later_listener(self):
        ini = BASIC + "[http]\nlisten = tcp:{held}:interface=127.0.0.1\n"
        self.assertPortInUse(ini, socket.SOCK_STREAM,
                             "[http] listen = tcp:{held}:interface=127.0.0.1", tcp=free_port())

    def test_udp_port_in_use_names_the_listener(self):
        ini = BASIC + "[udp]\nlisten = {held}\ninterface = 127.0.0.1\n"
        self.assertPortInUse(ini, socket.SOCK_DGRAM, "[udp] listen = {held}", tcp=free_port())

    def test_websocket_port_in_use_names_its_key(self):
        ini = BASIC + ("[libp2p]\nlisten = tcp:{libp2p}:interface=127.0.0.1\n"
                       "ws_listen = tcp:{held}:interface=127.0.0.1\n")
        self.assertPortInUse(ini, socket.SOCK_STREAM,
                             "[libp2p] ws_listen = tcp:{held}:interface=127.0.0.1",
                             tcp=free_port(), libp2p=free_port())

    def test_a_second_daemon_on_the_same_data_directory_says_so_in_one_line(self):
        first = self.start()
        second = Relayd(self, BASIC.replace("{data_dir}", first.data_dir), tcp=free_port())
        code, output = second.run_to_exit()
        self.assertEqual(code, 1, output)
        self.assertIn(f"relayd: the journal {first.data_dir}/journal is in use by another relayd",
                      output)
        self.assertNotIn("Traceback", output)

    def test_sigterm_is_graceful(self):
        relay = self.start()
        alice = LineClient(relay.ports["tcp"], "alice")
        self.addCleanup(alice.close)
        for i in range(50):
            alice.request(type="send", to="nobody", body=str(i), nonce=f"n{i}")
        acks = [alice.read() for _ in range(50)]
        self.assertEqual({a["type"] for a in acks}, {"ack"})
        self.assertEqual(relay.stop(signal.SIGTERM), 0)
        self.assertEqual(alice.read()["error"], "shutting_down")
        stored = [r for r in journal_records(relay.data_dir) if r.get("to") == "nobody"]
        self.assertEqual(len(stored), 50)

    def test_identity_survives_restart(self):
        relay = self.start()
        relay.stop()
        with open(os.path.join(relay.data_dir, "identity.key"), "rb") as f:
            first = f.read()
        self.assertEqual(os.stat(os.path.join(relay.data_dir, "identity.key")).st_mode & 0o777, 0o600)
        relay.start(wait_tcp=[relay.ports["tcp"]])
        relay.stop()
        with open(os.path.join(relay.data_dir, "identity.key"), "rb") as f:
            self.assertEqual(f.read(), first)


class CrashTests(unittest.TestCase):
    """SIGKILL mid-stream loses no acked message and delivers none twice."""

    timeout = 120

    def test_kill_9_mid_stream(self):
        port = free_port()
        relay = Relayd(self, BASIC, tcp=port)
        relay.start(wait_tcp=[port])
        total = 400
        acked = {}
        sent = threading.Event()

        def sender():
            # Sends everything with nonces; reads acks until the connection dies.
            client = LineClient(port, "alice")
            for i in range(total):
                try:
                    client.request(type="send", to="bob", body=f"m{i}", nonce=f"n{i}")
                except OSError:
                    break
                if i == total // 4:
                    sent.set()
            try:
                while len(acked) < total:
                    ack = client.read()
                    acked[ack["nonce"]] = ack["msg_id"]
            except (EOFError, OSError, ValueError):
                pass
            client.close()

        thread = threading.Thread(target=sender)
        thread.start()
        sent.wait(10)
        relay.kill()
        thread.join(20)
        self.assertLess(len(acked), total + 1)
        relay.start(wait_tcp=[port])
        # The client re-sends what was not acknowledged, with the same nonces.
        alice = LineClient(port, "alice")
        self.addCleanup(alice.close)
        for i in range(total):
            if f"n{i}" not in acked:
                alice.request(type="send", to="bob", body=f"m{i}", nonce=f"n{i}")
                ack = alice.read()
                acked[ack["nonce"]] = ack["msg_id"]
        bob = LineClient(port, "bob")
        self.addCleanup(bob.close)
        self.assertEqual(bob.welcome["pending"], total)
        received = [bob.read() for _ in range(total)]
        self.assertEqual([m["body"] for m in received], [f"m{i}" for i in range(total)])
        self.assertEqual(sorted(m["msg_id"] for m in received), sorted(acked.values()))
        self.assertEqual(relay.stop(), 0)
        self.assertIn("journal replayed", relay.log())


class TacTests(unittest.TestCase):
    timeout = 60

    def test_tac_file_runs_the_same_service(self):
        port = free_port()
        relay = Relayd(self, BASIC, tcp=port)
        relay.command = lambda: (TWISTD + ["-ny", os.path.join(REPO, "tap", "relayd.tac"),
                                                   "--pidfile=", "--logfile", relay.logfile])
        os.environ["RELAYD_CONFIG"] = relay.config
        self.addCleanup(os.environ.pop, "RELAYD_CONFIG", None)
        relay.start(wait_tcp=[port])
        client = LineClient(port, "alice")
        self.addCleanup(client.close)
        self.assertEqual(client.welcome["type"], "welcome")
        self.assertEqual(relay.stop(), 0)

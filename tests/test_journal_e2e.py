"""The journal under a real twistd: checkpointed restarts, crashes and damaged files."""
import os
import signal
import threading
import time
import urllib.request

from twisted.trial import unittest

from relayd.journal import checkpoint, segments
from tests.daemon import Relayd, free_port, relay_ini
from tests.seedclient import LineClient

CONFIG = relay_ini("""
[http]
listen = tcp:{http}:interface=127.0.0.1
[ratelimit]
messages = 100000
per_seconds = 1
""", id="relay1")


class JournalDaemonTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        self.relay = Relayd(self, CONFIG, tcp=free_port(), http=free_port())
        self.journal = os.path.join(self.relay.data_dir, "journal")

    def start(self):
        return self.relay.start(wait_tcp=[self.relay.ports["tcp"]])

    def send(self, bodies, to="bob"):
        alice = LineClient(self.relay.ports["tcp"], "alice")
        for body in bodies:
            alice.request(type="send", to=to, body=body, nonce=body)
        acks = [alice.read() for _ in bodies]
        alice.close()
        self.assertEqual({a["type"] for a in acks}, {"ack"})

    def received(self, count):
        bob = LineClient(self.relay.ports["tcp"], "bob")
        self.addCleanup(bob.close)
        bob.sock.settimeout(5)
        got = []
        try:
            while len(got) < count + 1:
                frame = bob.read()
                if frame.get("type") == "message":
                    got.append(frame["body"])
        except OSError:         # nothing more within the timeout
            pass
        return got

    def metric(self, name):
        url = f"http://127.0.0.1:{self.relay.ports['http']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return None

    def test_stored_mail_survives_a_checkpointed_restart_and_a_crash(self):
        self.start()
        self.send([f"a{n}" for n in range(20)])
        self.assertEqual(self.relay.stop(signal.SIGTERM), 0)
        self.assertTrue(os.path.exists(os.path.join(self.journal, checkpoint.FILE_NAME)))
        self.start()
        self.assertIn("after the checkpoint at record", self.relay.log())
        self.send([f"b{n}" for n in range(10)])
        self.relay.kill()
        self.start()
        self.assertIn("replayed 10 records from 2 segments after the checkpoint", self.relay.log())
        self.assertEqual(self.received(30),
                         [f"a{n}" for n in range(20)] + [f"b{n}" for n in range(10)])

    def test_a_flipped_bit_is_reported_and_never_delivered(self):
        self.start()
        self.send(["hello", "world", "again"])
        self.relay.stop(signal.SIGTERM)
        # Damage the checkpoint (so the whole journal is replayed) and one body,
        # and leave a torn line at the end as a crash mid-write would.
        [segment] = segments.scan(self.journal)
        path = os.path.join(self.journal, segment.name)
        with open(path, "rb") as f:
            data = bytearray(f.read())
        data[data.index(b'"world"') + 1] ^= 0x20            # "world" -> "World": still valid JSON
        with open(path, "wb") as f:
            f.write(bytes(data) + b'9 0badc0de {"from": "alice", "to": "b')
        flip(os.path.join(self.journal, checkpoint.FILE_NAME), -10)
        self.start()
        log = self.relay.log()
        self.assertIn("the checkpoint is damaged (checksum mismatch)", log)
        self.assertIn(f"skipped {segment.name} line 2: checksum mismatch", log)
        self.assertIn(f"skipped {segment.name} line 4: torn line", log)
        self.assertEqual(self.received(2), ["hello", "again"])
        self.assertEqual(self.metric("relayd_journal_torn_lines_total"), 2)
        self.assertEqual(self.metric("relayd_journal_missing_records_total"), 1)
        self.assertEqual(self.metric("relayd_journal_checkpoint_damaged_total"), 1)

    def test_a_deleted_segment_is_named_at_start(self):
        self.start()
        self.send(["one"])
        self.relay.kill()
        self.start()
        self.send(["two"])
        self.relay.kill()
        self.start()
        self.send(["three"])
        self.relay.stop(signal.SIGTERM)
        names = [s.name for s in segments.scan(self.journal)]
        self.assertEqual(len(names), 3)
        os.unlink(os.path.join(self.journal, names[1]))
        os.unlink(os.path.join(self.journal, checkpoint.FILE_NAME))
        self.start()
        self.assertIn(f"segment {names[1]} is missing", self.relay.log())
        self.assertEqual(self.metric("relayd_journal_missing_segments_total"), 1)
        self.assertEqual(self.received(2), ["one", "three"])

    def test_a_second_daemon_on_the_same_journal_stops_at_once(self):
        self.start()
        second = Relayd(self, CONFIG, workdir=self.relay.workdir + "-second",
                        tcp=free_port(), http=free_port())
        second.data_dir = self.relay.data_dir
        with open(second.config, "w") as f:
            f.write(CONFIG.format(data_dir=self.relay.data_dir, **second.ports))
        code, output = second.run_to_exit(timeout=60)
        self.assertNotEqual(code, 0)
        self.assertIn("is in use by another relayd", output)


def flip(path, at):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[at] ^= 0x01
        f.seek(0)
        f.write(data)


class StartOrderTests(unittest.TestCase):
    def test_ports_listen_before_the_journal_is_replayed(self):
        """A connection made during the replay waits in the backlog; it is not refused."""
        from twisted.internet.testing import MemoryReactorClock

        from relayd import config
        from relayd.daemon import build
        data_dir = os.path.abspath(self.mktemp())
        daemon = build(config.parse(f"[relay]\ndata_dir = {data_dir}\n"
                                    f"[tcp]\nlisten = tcp:5555:interface=127.0.0.1\n"),
                       MemoryReactorClock())
        daemon.privilegedStartService()
        self.assertEqual(daemon.reactor.tcpServers[0][0], 5555)
        self.addCleanup(daemon.journal._unlock)
        self.assertIsNone(daemon.journal.report, "the replay comes in startService")


CHECKPOINTING = CONFIG + """
[journal]
checkpoint_bytes = 16KiB
checkpoint_interval = 50ms
"""


class CheckpointCrashTests(unittest.TestCase):
    """kill -9 while checkpoints are written all the time loses no acked message."""
    timeout = 180

    def test_kill_9_during_checkpoints_loses_no_acked_message(self):
        relay = Relayd(self, CHECKPOINTING, tcp=free_port(), http=free_port())
        port = relay.ports["tcp"]
        acked = {}
        total, kills = 300, 3
        for kill in range(kills):
            relay.start(wait_tcp=[port])
            started = threading.Event()
            thread = threading.Thread(target=send_until_killed,
                                      args=(port, kill, total, acked, started))
            thread.start()
            started.wait(10)
            if kill == 0:
                # the last start must find a checkpoint, however slow this machine is
                wait_for_file(relay.data_dir, checkpoint.FILE_NAME, 10)
            time.sleep(0.002 * kill)
            relay.kill()
            thread.join(20)
        relay.start(wait_tcp=[port])
        self.assertIn("after the checkpoint at record", relay.log())
        # Re-send what was not acknowledged, with the same nonces.
        alice = LineClient(port, "alice")
        self.addCleanup(alice.close)
        for kill in range(kills):
            for i in range(total):
                nonce = f"k{kill}n{i}"
                if nonce not in acked:
                    alice.request(type="send", to="bob", body=nonce, nonce=nonce)
                    acked[nonce] = alice.read()["msg_id"]
        bob = LineClient(port, "bob")
        self.addCleanup(bob.close)
        self.assertEqual(bob.welcome["pending"], kills * total)
        received = [bob.read() for _ in range(kills * total)]
        self.assertEqual(sorted(m["msg_id"] for m in received), sorted(acked.values()))
        self.assertEqual(relay.stop(), 0)


def wait_for_file(directory, name, seconds):
    """Wait until a file ``name`` exists somewhere below ``directory``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(name in files for _, _, files in os.walk(directory)):
            return
        time.sleep(0.005)


def send_until_killed(port, kill, total, acked, started):
    """Pipeline ``total`` messages to bob; record every ack until the relay dies;
    ``started`` is set once a third are acked."""
    client = LineClient(port, "alice")
    try:
        for i in range(total):
            client.request(type="send", to="bob", body=f"k{kill}n{i}", nonce=f"k{kill}n{i}")
        for i in range(total):
            ack = client.read()
            acked[ack["nonce"]] = ack["msg_id"]
            if i == total // 3:
                started.set()
    except (EOFError, OSError, ValueError):
        pass
    finally:
        started.set()
        client.close()

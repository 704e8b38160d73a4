"""``twistd --uid/--gid``: a relay started as root that drops to an
unprivileged user (nobody) owns its state and can write its journal, or
refuses to start with one clear line."""
import json
import os
import pwd
import shutil
import socket
import tempfile

from twisted.trial import unittest

from tests.daemon import Relayd, free_port, relay_ini
from tests.test_ops_support import http_json

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None
SKIP = ("needs root to switch users" if os.geteuid() != 0
        else "needs the user nobody" if NOBODY is None else None)

INI = relay_ini("""
[http]
listen = tcp:{http}:interface=127.0.0.1
""")


class DroppingRelayd(Relayd):
    def command(self):
        command = super().command()
        at = command.index("relayd")
        return command[:at] + ["--uid", str(NOBODY.pw_uid), "--gid", str(NOBODY.pw_gid)] + command[at:]


def send(port, peer_id, body):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        sock.sendall(json.dumps({"type": "hello", "id": peer_id}).encode() + b"\n")
        json.loads(reader.readline())
        sock.sendall(json.dumps({"type": "send", "to": "bob", "body": body}).encode() + b"\n")
        return json.loads(reader.readline())


class PrivilegeDropTests(unittest.TestCase):
    timeout = 120
    skip = SKIP

    def workdir(self, mode):
        path = tempfile.mkdtemp(prefix="relayd-uid-")
        self.addCleanup(shutil.rmtree, path, True)
        os.chmod(path, mode)
        return path

    def test_the_dropped_relay_owns_its_state_and_writes_its_journal(self):
        ports = {"tcp": free_port(), "http": free_port()}
        relay = DroppingRelayd(self, INI, workdir=self.workdir(0o755), **ports)
        relay.start(wait_tcp=list(ports.values()))
        self.assertEqual(send(ports["tcp"], "alice", "first")["type"], "ack")
        self.assertEqual(http_json(ports["http"], "/health")[0], 200)
        for root, dirs, files in os.walk(relay.data_dir):
            for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                self.assertEqual(os.stat(name).st_uid, NOBODY.pw_uid, name)
        relay.stop()
        relay.start(wait_tcp=list(ports.values()))        # again, over the state it wrote
        self.assertEqual(send(ports["tcp"], "alice", "second")["type"], "ack")
        with socket.create_connection(("127.0.0.1", ports["tcp"]), timeout=10) as bob:
            reader = bob.makefile("rb")
            bob.sendall(b'{"type": "hello", "id": "bob"}\n')
            self.assertEqual(json.loads(reader.readline())["pending"], 2)

    def test_a_data_dir_the_user_cannot_reach_is_refused_clearly(self):
        ports = {"tcp": free_port(), "http": free_port()}
        relay = DroppingRelayd(self, INI, workdir=self.workdir(0o700), **ports)
        code, output = relay.run_to_exit()
        self.assertNotEqual(code, 0)
        self.assertIn(f"relayd cannot run: [relay] data_dir: {relay.data_dir} is not writable "
                      f"by user nobody", output)

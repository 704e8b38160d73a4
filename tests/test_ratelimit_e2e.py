"""The per-IP rate limit as a scripting user meets it: relay-chat in a loop
against the real daemon (twistd) with the shipped [ratelimit] settings."""
import json
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import REPO, Relayd, free_port, relay_ini
from tests.test_client_e2e import COMMAND, ENV

INI = relay_ini("""
[ratelimit]
messages = 10
per_seconds = 10
ban_after = 5
ban_window = 60
ban_duration = 10m
""")


class ObedientLoopTests(SynchronousTestCase):
    def chat(self, *args):
        done = subprocess.run(COMMAND + ["--server", f"127.0.0.1:{self.port}", *args],
                              cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout, done.stderr

    def test_a_send_loop_that_honours_retry_after_is_not_banned(self):
        """25 sends, each waiting for its ack (relay-chat waits out every
        retry_after): all are accepted, the address is never banned, and the
        recipient then reads all 25 from its mailbox."""
        self.port = free_port()
        relay = Relayd(self, INI, tcp=self.port).start(wait_tcp=[self.port])
        for i in range(25):
            code, _, err = self.chat("--id", "alice", "send", "--to", "bob", f"message {i}")
            self.assertEqual(code, 0, f"send {i}: {err}")
        code, out, err = self.chat("--id", "bob", "listen", "--count", "25", "--timeout", "20",
                                   "--json")
        self.assertEqual(code, 0, err)
        bodies = [json.loads(line)["body"] for line in out.splitlines()]
        self.assertEqual(bodies, [f"message {i}" for i in range(25)])
        self.assertNotIn("banned", relay.log())

"""OPERATIONS.md's admin console steps, run verbatim on the shipped config:
make a key, authorize it, enable [admin], then the console and relayd admin."""
import os
import re

from twisted.trial.unittest import SynchronousTestCase

from tests.doccommands import DocSandbox, shell_blocks
from tests.test_ops_support import NO_SSH
from tests.test_shipped_config import START, ctrl_c


def enable_admin(path):
    """What the doc's "uncomment [admin]" step means in etc/relay.ini."""
    with open(path) as f:
        text = f.read()
    text = re.sub(r"^;(\[admin\]|listen = tcp:2222\S*|authorized_keys = \S+)$", r"\1", text,
                  flags=re.M)
    with open(path, "w") as f:
        f.write(text)


class AdminConsoleDocTests(SynchronousTestCase):
    skip = NO_SSH

    def test_admin_console_steps(self):
        [[keygen, authorize, login], [admin_stats, admin_ban, ssh_bans]] = shell_blocks(
            "docs/OPERATIONS.md", "The admin console (`[admin]`)")
        sandbox = DocSandbox(self)
        for line in (keygen, authorize):
            code, output = sandbox.run(line)
            self.assertEqual(code, 0, f"{line}: {output}")
        enable_admin(os.path.join(sandbox.dir, "etc", "relay.ini"))
        relay = sandbox.start(START)
        sandbox.wait_output(relay, "SIGTERM stops")
        code, output = sandbox.run(admin_stats)
        self.assertEqual(code, 0, output)
        self.assertIn("\nuptime: ", output)
        code, output = sandbox.run(admin_ban)
        self.assertEqual((code, output), (0, "banned 203.0.113.9 for 60 minutes\n"))
        # ssh asks once to accept the console's host key; the reader says yes:
        with open(os.path.join(sandbox.dir, "var", "ssh_host_ed25519_key.pub")) as f:
            host_key = " ".join(f.read().split()[:2])
        with open(os.path.join(sandbox.dir, ".ssh", "known_hosts"), "a") as f:
            f.write(f"[127.0.0.1]:2222 {host_key}\n")
        code, output = sandbox.run(ssh_bans)
        self.assertEqual(code, 0, output)
        self.assertIn("203.0.113.9", output)
        _, output = sandbox.run_on_a_terminal(login, b"bans()\r\x04")
        self.assertIn("203.0.113.9  ", output)
        ctrl_c(self, sandbox, relay)

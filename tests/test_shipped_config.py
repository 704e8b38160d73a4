"""The shipped etc/relay.ini (as committed, never the reader's edited copy)
starts a relay that the README's quick tour and OPERATIONS.md's monitoring
commands, run verbatim, find working."""
import json

from twisted.trial.unittest import SynchronousTestCase

from tests.doccommands import DocSandbox, shell_blocks

START = ".venv/bin/twistd -n relayd --config etc/relay.ini"     # what `make run` runs


class ShippedConfigTests(SynchronousTestCase):
    def test_shipped_config_starts_and_serves_the_documented_commands(self):
        [[listen, send], *_] = shell_blocks("README.md", "Quick tour")
        [[health, stats, metrics]] = shell_blocks("docs/OPERATIONS.md",
                                                  "Monitoring over HTTP (`[http]`)")
        sandbox = DocSandbox(self)
        relay = sandbox.start(START)
        sandbox.wait_output(relay, "SIGTERM stops")
        bob = sandbox.start(listen)
        sandbox.wait_output(bob, "connected as bob")
        code, output = sandbox.run(send)
        self.assertEqual(code, 0, output)
        sandbox.wait_output(bob, "alice -> bob: hi")
        code, output = sandbox.run(health)
        self.assertEqual((code, json.loads(output)["status"]), (0, "ok"), output)
        self.assertLessEqual({"http", "journal", "libp2p", "tcp", "udp"},
                             set(json.loads(output)["services"]))
        code, output = sandbox.run(stats)
        self.assertEqual(json.loads(output)["relay"], "relay1")
        code, output = sandbox.run(metrics)
        self.assertIn("relayd_messages_received_total", output)
        self.assertEqual(sandbox.stop(relay), 0, sandbox.output(relay))

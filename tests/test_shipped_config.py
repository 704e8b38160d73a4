"""The shipped etc/relay.ini (as committed, never the reader's edited copy)
starts a relay that the README's quick tour (relay-chat and the seed-000
client), its relay-chat key lines and OPERATIONS.md's monitoring commands,
run verbatim, find working."""
import json

from twisted.trial.unittest import SynchronousTestCase

from tests.doccommands import DocSandbox, shell_blocks

START = ".venv/bin/twistd -n relayd --config etc/relay.ini"     # what `make run` runs


class ShippedConfigTests(SynchronousTestCase):
    def test_shipped_config_starts_and_serves_the_documented_commands(self):
        [[listen, send], seed_client] = shell_blocks("README.md", "Quick tour")
        [chat] = shell_blocks("README.md", "relay-chat")
        peers = next(line for line in chat if line.startswith("relay-chat peers "))
        genkey, signed_send, publish = (line for line in chat if "~/.relay-alice.pem" in line)
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
        code, output = sandbox.run("\n".join(seed_client))
        self.assertEqual((code, json.loads(output)["status"]), (0, "ok"), output)
        sandbox.wait_output(bob, "carol -> bob: hello from the seed client")
        code, output = sandbox.run(peers)
        self.assertEqual(code, 0, output)
        self.assertIn("bob", output.split())
        for line in (genkey, signed_send):
            code, output = sandbox.run(line)
            self.assertEqual(code, 0, output)
        sandbox.wait_output(bob, "alice -> bob: it is really me")
        code, output = sandbox.run(publish)
        self.assertEqual(code, 0, output)
        self.assertIn("one-time prekeys on the relay: ", output)
        code, output = sandbox.run(health)
        self.assertEqual((code, json.loads(output)["status"]), (0, "ok"), output)
        self.assertLessEqual({"http", "journal", "libp2p", "tcp", "udp"},
                             set(json.loads(output)["services"]))
        code, output = sandbox.run(stats)
        self.assertEqual(json.loads(output)["relay"], "relay1")
        code, output = sandbox.run(metrics)
        self.assertIn("relayd_messages_received_total", output)
        self.assertEqual(sandbox.stop(relay), 0, sandbox.output(relay))

"""The README's three-relay federation example, its commands run verbatim."""
import signal

from twisted.trial.unittest import SynchronousTestCase

from tests.doccommands import DocSandbox, shell_blocks


class ReadmeFederationTests(SynchronousTestCase):
    def test_three_relays_as_the_readme_runs_them(self):
        start, chat, while_down = shell_blocks("README.md", "Federation")
        [keys, *relay_commands] = start
        [listen, send_one] = chat
        [send_two] = while_down
        self.assertEqual(len(relay_commands), 3)
        sandbox = DocSandbox(self)
        code, output = sandbox.run(keys)
        self.assertEqual(code, 0, output)
        relays = [sandbox.start(command) for command in relay_commands]
        for relay in relays:
            sandbox.wait_output(relay, "SIGTERM stops")
        for relay in relays[:2]:
            sandbox.wait_output(relay, "link to relay2 up" if relay is not relays[1] else "link to relay3 up")
        bob = sandbox.start(listen)
        sandbox.wait_output(bob, "connected as bob")
        code, output = sandbox.run(send_one)
        self.assertEqual(code, 0, output)
        sandbox.wait_output(bob, "one")

        sandbox.stop(relays[1], signal.SIGKILL)
        code, output = sandbox.run(send_two)
        self.assertEqual(code, 0, output)
        self.assertNotIn("two, while relay2 is down", sandbox.output(bob))
        relays[1] = sandbox.start(relay_commands[1])
        sandbox.wait_output(bob, "two, while relay2 is down", timeout=60)
        self.assertEqual(sandbox.output(bob).count("two, while relay2 is down"), 1)
        for relay in relays:
            self.assertEqual(sandbox.stop(relay), 0, sandbox.output(relay))

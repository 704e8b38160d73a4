"""The console's pieces without sockets: command evaluation, exec sessions,
terminal resizes, host key creation."""
import os

from twisted.conch import interfaces as iconch
from twisted.internet import defer, error, protocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from relayd.ops.commands import Text
from relayd.ops.manhole import ConsoleRealm, evaluate, load_or_create_host_key


class EvaluateTests(unittest.TestCase):
    def test_expression_statement_and_print(self):
        namespace = {"hello": lambda: Text("hi there")}
        self.assertEqual(self.successResultOf(evaluate(namespace, "hello()")),
                         ("hi there\n", True))
        self.assertEqual(self.successResultOf(evaluate(namespace, "x = 2; print(x * 21)")),
                         ("42\n", True))
        self.assertEqual(self.successResultOf(evaluate(namespace, "x")), ("2\n", True))

    def test_deferred_results_are_waited_for(self):
        d = defer.Deferred()
        result = evaluate({"later": lambda: d}, "later()")
        self.assertNoResult(result)
        d.callback(Text("done"))
        self.assertEqual(self.successResultOf(result), ("done\n", True))

    def test_errors_give_the_traceback(self):
        text, ok = self.successResultOf(evaluate({}, "undefined_name"))
        self.assertFalse(ok)
        self.assertIn("NameError: name 'undefined_name' is not defined", text)
        text, ok = self.successResultOf(evaluate({}, "def ("))
        self.assertFalse(ok)
        self.assertIn("SyntaxError", text)
        self.assertNotIn("During handling", text)
        failing = evaluate({"later": lambda: defer.fail(ValueError("nope"))}, "later()")
        text, ok = self.successResultOf(failing)
        self.assertEqual((ok, text.strip().splitlines()[-1]), (False, "ValueError: nope"))


class ProcessEnd(protocol.ProcessProtocol):
    """Stands in for conch's SSHSessionProcessProtocol."""

    def __init__(self):
        self.out, self.err, self.ended = b"", b"", None

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended = reason


class Channel(protocol.Protocol):
    """The SSH channel side of an interactive session."""

    session = None

    def __init__(self):
        self.screen = b""

    def write(self, data):
        self.screen += data


class SessionTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        realm = ConsoleRealm(lambda: {"answer": 42}, self.clock)
        _, user, _ = realm.requestAvatar(b"operator", None, iconch.IConchUser)
        self.session = user.original.getComponent(iconch.ISession)

    def test_exec_writes_output_then_the_exit_status(self):
        end = ProcessEnd()
        self.session.execCommand(end, b"answer + 1")
        self.assertIsNone(end.ended, "the exec request is answered first")
        self.clock.advance(0)
        self.assertEqual(end.out, b"43\n")
        end.ended.trap(error.ProcessDone)
        failed = ProcessEnd()
        self.session.execCommand(failed, b"answer / 0")
        self.clock.advance(0)
        self.assertIn(b"ZeroDivisionError", failed.err)
        self.assertEqual(failed.ended.value.exitCode, 1)

    def test_interactive_prompt_follows_window_size(self):
        self.session.getPty(b"xterm", (24, 80, 0, 0), [])
        channel = Channel()
        self.session.openShell(channel)
        self.assertIn(b">>> ", channel.screen)
        console = self.session.terminal.chainedProtocol.terminalProtocol
        self.assertEqual((console.width, console.height), (80, 24))
        self.session.windowChanged((40, 132, 0, 0))
        self.assertEqual((console.width, console.height), (132, 40))
        self.session.eofReceived()


class HostKeyTests(unittest.TestCase):
    def test_created_once_with_its_public_half(self):
        path = os.path.join(self.mktemp(), "ssh_host_ed25519_key")
        key = load_or_create_host_key(path)
        self.assertEqual(key.sshType(), b"ssh-ed25519")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path + ".pub", "rb") as f:
            self.assertEqual(f.read().split()[:2], key.public().toString("openssh").split())
        self.assertEqual(load_or_create_host_key(path), key)

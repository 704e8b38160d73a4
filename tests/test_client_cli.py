"""relay-chat's command line: options, exit codes, key files, and the real
CLI run as a subprocess against a scripted relay on a loopback port."""
import base64
import datetime
import fcntl
import json
import os
import pty
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, protocol, reactor, ssl, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relayd.client import cli, keys
from relayd.client.testing import FakeRelay
from tests.daemon import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "relay-chat")


def command():
    """How a user runs relay-chat: the console script, if installed."""
    if os.path.exists(SCRIPT):
        return [SCRIPT]
    return [sys.executable, "-m", "relayd.client"]


class _Collect(protocol.ProcessProtocol):
    def __init__(self, stdin):
        self.stdin = stdin
        self.out, self.err = [], []
        self.done = defer.Deferred()

    def connectionMade(self):
        if self.stdin is not None:
            self.transport.write(self.stdin)
            self.transport.closeStdin()

    def outReceived(self, data):
        self.out.append(data)

    def errReceived(self, data):
        self.err.append(data)

    def processEnded(self, reason):
        self.done.callback((b"".join(self.out).decode(), b"".join(self.err).decode(),
                            reason.value.exitCode))


def spawn(testcase, args, stdin=None):
    """Run relay-chat with ``args``; a Deferred of (out, err, code).

    The Deferred's ``process`` is the ProcessProtocol.  The process is killed
    at cleanup if it is still running (a failed test).
    """
    proc = _Collect(stdin)
    argv = command() + list(args)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    reactor.spawnProcess(proc, argv[0], argv, env=env, path=REPO)

    def reap():
        if not proc.done.called:
            proc.transport.signalProcess("KILL")
            return proc.done
    testcase.addCleanup(reap)
    proc.done.process = proc
    return proc.done


class OptionTests(SynchronousTestCase):
    def parse(self, *argv):
        parser = cli.build_parser()
        args = parser.parse_args(list(argv))
        cli.check(parser, args)
        return args

    def exit_code(self, *argv):
        self.patch(sys, "stderr", open(os.devnull, "w"))
        self.addCleanup(sys.stderr.close)
        with self.assertRaises(SystemExit) as caught:
            self.parse(*argv)
        return caught.exception.code

    def test_servers(self):
        self.assertEqual(cli.parse_server("relay.example:7000"), ("relay.example", 7000))
        self.assertEqual(cli.parse_server("[::1]:7000"), ("::1", 7000))
        self.assertEqual(cli.parse_server("relay.example"), ("relay.example", cli.DEFAULT_PORT))

    def test_connection_options_before_or_after_the_command(self):
        before = self.parse("--server", "h:1", "--id", "alice",
                            "send", "--to", "bob", "hi", "there")
        after = self.parse("send", "--server", "h:1", "--id", "alice", "--to", "bob", "hi", "there")
        for args in (before, after):
            self.assertEqual((args.server, args.id, args.to, args.text),
                             (("h", 1), "alice", "bob", ["hi", "there"]))

    def test_default_is_chat(self):
        self.assertIs(self.parse().run, cli.cmd_chat)

    def test_chat_peer_command_uses_the_udp_relay(self):
        """/peer goes to --udp-relay, by default the --server host on port 8000."""
        relays = []
        self.patch(cli.udp_peer, "open_peer", lambda reactor, identity, name, target, relay, show:
                   relays.append((name, target, relay)) or defer.succeed(None))

        def relay_for(*argv):
            opener = cli.peer_opener(None, self.parse(*argv))
            return opener and (opener("bob", print), relays.pop())[1][2]
        self.assertEqual(relay_for("--server", "192.0.2.1:1234"), "192.0.2.1:8000")
        self.assertEqual(relay_for("--server", "[2001:db8::1]:1234", "chat"), "[2001:db8::1]:8000")
        self.assertEqual(relay_for("chat", "--udp-relay", "192.0.2.9:9000"), "192.0.2.9:9000")
        self.assertIsNone(relay_for("--endpoint", "tcp:host=192.0.2.1:port=1"))
        self.assertEqual(relay_for("--id", "alice"), "127.0.0.1:8000")

    def test_usage_errors_exit_1(self):
        self.assertEqual(self.exit_code("send", "hi"), 1)                     # no --to/--room
        self.assertEqual(self.exit_code("--server", "h:notaport", "peers"), 1)
        self.assertEqual(self.exit_code("--tls", "--endpoint", "tcp:h:1", "peers"), 1)
        self.assertEqual(self.exit_code("--tls", "--cert", "c.pem", "peers"), 1)
        self.assertEqual(self.exit_code("--ca", "ca.pem", "peers"), 1)
        self.assertEqual(self.exit_code("listen", "--count", "0"), 1)
        self.assertEqual(self.exit_code("frobnicate"), 1)


class KeyFileTests(SynchronousTestCase):
    def test_genkey_writes_a_private_file_and_never_overwrites(self):
        path = self.mktemp()
        identity = keys.generate(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            self.assertIn(b"BEGIN PRIVATE KEY", f.read())
        self.assertEqual(len(base64.b64decode(identity.public_b64)), 32)
        self.assertEqual(keys.load(path, "alice").public_b64, identity.public_b64)
        self.assertRaises(keys.KeyFileError, keys.generate, path)

    def test_unusable_key_files(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("not a key")
        self.assertRaises(keys.KeyFileError, keys.load, path, "alice")
        self.assertRaises(keys.KeyFileError, keys.load, path + ".missing", "alice")


class TerminalTests(SynchronousTestCase):
    """StandardIO's non-blocking mode must not leak into the user's shell."""

    def run_on_a_terminal(self, args):
        """Run relay-chat with stdin on a new pty; its exit code, once the pty is checked.

        stdout goes elsewhere: Twisted makes its own stdout blocking again at
        exit, which would hide a stdin left non-blocking on a shared pty.
        """
        master, slave = pty.openpty()
        self.addCleanup(os.close, master)
        self.addCleanup(os.close, slave)
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run(command() + args, stdin=slave, stdout=subprocess.DEVNULL,
                              stderr=slave, env=env, cwd=REPO, timeout=60)
        self.assertFalse(fcntl.fcntl(slave, fcntl.F_GETFL) & os.O_NONBLOCK)
        return done.returncode

    def test_the_terminal_is_left_blocking(self):
        self.assertEqual(self.run_on_a_terminal(
            ["--server", f"127.0.0.1:{free_port()}", "chat"]), 2)

    def test_peer_chat_leaves_the_terminal_blocking(self):
        self.assertEqual(self.run_on_a_terminal(
            ["peer", "--relay", f"127.0.0.1:{free_port()}", "--to", "bob", "--timeout", "1"]), 4)


class SubprocessTests(TestCase):
    """The installed relay-chat against a scripted relay on 127.0.0.1."""

    timeout = 120

    def setUp(self):
        self.relay = FakeRelay()
        self.port = reactor.listenTCP(0, self.relay, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(lambda: defer.ensureDeferred(self.close_connections()))
        self.server = f"127.0.0.1:{self.port.getHost().port}"

    async def close_connections(self):
        """Leave no server side of a client connection behind."""
        for proto in list(self.relay.connections):
            proto.transport.abortConnection()
        await self.wait_for(lambda: not self.relay.connections)

    def relay_chat(self, *args, stdin=None):
        return spawn(self, args, stdin)

    def chat(self, *args, **kw):
        return self.relay_chat("--server", self.server, *args, **kw)

    async def wait_for(self, predicate):
        for _ in range(400):
            if predicate():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail("condition not reached")

    @defer.inlineCallbacks
    def test_send_exits_0_once_acked_and_prints_the_msg_id(self):
        out, err, code = yield self.chat("--id", "alice", "send", "--to", "bob", "hi", "there")
        self.assertEqual(code, 0, err)
        [stored] = self.relay.stored
        self.assertEqual((stored["from"], stored["to"], stored["body"]),
                         ("alice", "bob", "hi there"))
        self.assertEqual(out.strip(), stored["msg_id"])
        self.assertEqual(len(self.relay.sent("send")[0]["nonce"]), 32)

    @defer.inlineCallbacks
    def test_send_to_a_room_and_to_everyone(self):
        for target in (["--room", "#general"], ["--to", "*"]):
            out, err, code = yield self.chat("--id", "alice", "send", *target, "x")
            self.assertEqual(code, 0, err)
        self.assertEqual([m["to"] for m in self.relay.stored], ["#general", "*"])

    @defer.inlineCallbacks
    def test_listen_prints_json_and_exits_after_count(self):
        done = self.chat("--id", "bob", "listen", "--count", "2", "--json", "--timeout", "60")
        yield defer.ensureDeferred(self.wait_for(lambda: "bob" in self.relay.sessions))
        session = self.relay.sessions["bob"]
        msg = {"type": "message", "from": "alice", "to": "bob", "body": "one",
               "timestamp": 1.0, "seen_by": ["relay1"], "msg_id": "a" * 64}
        session.push(msg)
        session.push(msg)                                   # a redelivery: shown once
        session.push(dict(msg, body="two", msg_id="b" * 64))
        out, err, code = yield done
        self.assertEqual(code, 0, err)
        self.assertEqual([json.loads(line)["body"] for line in out.splitlines()], ["one", "two"])

    @defer.inlineCallbacks
    def test_listen_reconnects_and_ends_with_3_when_replaced(self):
        done = self.chat("--id", "bob", "listen", "--timeout", "60")
        yield defer.ensureDeferred(self.wait_for(lambda: "bob" in self.relay.sessions))
        first = self.relay.sessions["bob"]
        first.transport.loseConnection()                # the relay goes away: reconnect
        yield defer.ensureDeferred(self.wait_for(
            lambda: self.relay.sessions.get("bob") not in (None, first)))
        second = self.relay.sessions["bob"]
        second.error(None, "session_replaced")
        second.transport.loseConnection()
        out, err, code = yield done
        self.assertEqual(code, 3, err)
        self.assertIn("reconnecting", err)
        self.assertIn("refused by the relay: session_replaced", err)

    @defer.inlineCallbacks
    def test_listen_ends_quietly_when_its_reader_goes(self):
        done = self.chat("--id", "bob", "listen", "--timeout", "60")
        yield defer.ensureDeferred(self.wait_for(lambda: "bob" in self.relay.sessions))
        done.process.transport.closeChildFD(1)          # like `relay-chat listen | head -0`
        msg = {"type": "message", "from": "a", "to": "bob", "body": "x", "msg_id": "c" * 64}
        self.relay.sessions["bob"].push(msg)
        out, err, code = yield done
        self.assertEqual((code, err.count("Error")), (0, 0), err)

    @defer.inlineCallbacks
    def test_listen_timeout(self):
        out, err, code = yield self.chat("--id", "bob", "listen", "--timeout", "0.5")
        self.assertEqual((code, out), (0, ""), err)
        out, err, code = yield self.chat("--id", "bob", "listen", "--count", "1",
                                         "--timeout", "0.5")
        self.assertEqual(code, 4, err)

    @defer.inlineCallbacks
    def test_chat_from_stdin(self):
        out, err, code = yield self.chat(
            "--id", "alice", "chat",
            stdin=b"hello?\n/to bob first\nsecond\n/join general\n/peers\n")
        self.assertEqual(code, 0, err)
        self.assertEqual([(m["to"], m["body"]) for m in self.relay.stored],
                         [("bob", "first"), ("bob", "second")])
        self.assertIn("*** no target yet", out)
        self.assertIn("*** joined #general; members: alice", out)

    @defer.inlineCallbacks
    def test_endpoint_strings(self):
        port = self.port.getHost().port
        out, err, code = yield self.relay_chat(
            "--endpoint", f"tcp:host=127.0.0.1:port={port}", "--id", "eve", "peers")
        self.assertEqual((code, out.split()), (0, ["eve"]), err)
        out, err, code = yield self.relay_chat("--endpoint", "nonsense:1", "peers")
        self.assertEqual(code, 1, err)
        self.assertIn("bad --endpoint", err)

    @defer.inlineCallbacks
    def test_cannot_connect_exits_2(self):
        port = self.port.getHost().port
        yield self.port.stopListening()
        out, err, code = yield self.relay_chat("--server", f"127.0.0.1:{port}", "peers")
        self.assertEqual(code, 2)
        self.assertIn("cannot connect", err)

    @defer.inlineCallbacks
    def test_refused_exits_3_with_the_code(self):
        self.relay.refuse = "bad_id"
        out, err, code = yield self.chat("--id", "alice", "peers")
        self.assertEqual(code, 3)
        self.assertIn("bad_id", err)

    @defer.inlineCallbacks
    def test_no_ack_exits_4(self):
        self.relay.swallow_acks = 1
        out, err, code = yield self.chat("--id", "alice", "send", "--timeout", "0.5",
                                         "--to", "bob", "x")
        self.assertEqual(code, 4)
        self.assertIn("no ack", err)

    @defer.inlineCallbacks
    def test_genkey_then_prove_the_id(self):
        path = os.path.abspath(self.mktemp())
        out, err, code = yield self.relay_chat("genkey", path)
        self.assertEqual(code, 0, err)
        public = out.strip()
        out, err, code = yield self.chat("--id", "carol", "--key", path, "peers")
        self.assertEqual(code, 0, err)
        self.assertEqual(base64.b64encode(self.relay.owners["carol"]).decode(), public)
        self.assertIn("key proved", err)
        out, err, code = yield self.relay_chat("genkey", path)
        self.assertEqual(code, 1)
        self.assertIn("refusing to overwrite", err)

    @defer.inlineCallbacks
    def test_a_relay_that_does_not_name_itself_needs_the_relay_id(self):
        self.relay.relay_id, self.relay.name_in_challenge = "relayX", False
        path = os.path.abspath(self.mktemp())
        keys.generate(path)
        out, err, code = yield self.chat("--id", "carol", "--key", path, "peers")
        self.assertEqual(code, 3)
        self.assertIn("auth_failed", err)
        self.assertIn("is --relay-id right?", err)
        out, err, code = yield self.chat("--id", "carol", "--key", path,
                                         "--relay-id", "relayX", "peers")
        self.assertEqual((code, out.split()), (0, ["carol"]), err)

    @defer.inlineCallbacks
    def test_mutual_tls(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca, key, cert = make_certificates(directory)
        with open(ca, "rb") as f:
            authority = ssl.Certificate.loadPEM(f.read())
        with open(cert, "rb") as c, open(key, "rb") as k:
            server = ssl.PrivateCertificate.loadPEM(c.read() + k.read())
        options = ssl.CertificateOptions(privateKey=server.privateKey.original,
                                         certificate=server.original, verify=True,
                                         caCerts=[authority.original], requireCertificate=True)
        port = reactor.listenSSL(0, self.relay, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        server_arg = f"localhost:{port.getHost().port}"
        out, err, code = yield self.relay_chat("--server", server_arg, "--tls", "--ca", ca,
                                               "--cert", cert, "--client-key", key,
                                               "--id", "tls-user", "peers")
        self.assertEqual((code, out.split()), (0, ["tls-user"]), err)
        out, err, code = yield self.relay_chat("--server", server_arg, "--tls", "--ca", ca,
                                               "--id", "tls-user", "peers")
        self.assertEqual(code, 2, err)                 # no client certificate


def make_certificates(directory):
    """A CA and a server certificate for localhost it signed: (ca, key, cert) paths."""
    now = datetime.datetime.now(datetime.timezone.utc)

    def build(subject, issuer, public, signer, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay-chat test CA")])
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    ca_cert = build(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    server_cert = build(server_name, ca_name, server_key.public_key(), ca_key, False)
    paths = [os.path.join(directory, name) for name in ("ca.pem", "server.key", "server.pem")]
    for path, data in zip(paths, (
            ca_cert.public_bytes(serialization.Encoding.PEM),
            server_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()),
            server_cert.public_bytes(serialization.Encoding.PEM))):
        with open(path, "wb") as f:
            f.write(data)
    return paths

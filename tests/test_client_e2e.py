"""relay-chat against the real daemon (twistd subprocess), run as a user would."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

from twisted.internet import defer, reactor
from twisted.protocols import portforward
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.daemon import REPO, Relayd, free_port
from tests.test_client_cli import make_certificates, spawn

SCRIPT = os.path.join(os.path.dirname(sys.executable), "relay-chat")
COMMAND = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "relayd.client"]
ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
WAIT = 90

INI = """
[relay]
id = relayT
data_dir = {data_dir}
[tcp]
listen = %s
[ratelimit]
messages = 1000
per_seconds = 1
"""
PLAIN = "tcp:{tcp}:interface=127.0.0.1"


class RelayChatE2E(SynchronousTestCase):
    def daemon(self, listen=PLAIN, **extra):
        self.port = free_port()
        relay = Relayd(self, INI % listen, tcp=self.port, **extra)
        return relay.start(wait_tcp=[self.port])

    def args(self, *args):
        return COMMAND + ["--server", f"127.0.0.1:{self.port}", "--relay-id", "relayT"] + list(args)

    def run_chat(self, *args, server=True):
        argv = self.args(*args) if server else COMMAND + list(args)
        done = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True,
                              timeout=WAIT)
        return done.returncode, done.stdout, done.stderr

    def start_chat(self, *args, stdin=False):
        process = subprocess.Popen(self.args(*args), cwd=REPO, env=ENV, text=True,
                                   stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(self.reap, process)
        return process

    def reap(self, process):
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    def wait_line(self, stream, text):
        """Read ``stream`` until a line contains ``text``; the lines read."""
        lines = []
        for line in stream:
            lines.append(line)
            if text in line:
                return lines
        self.fail(f"{text!r} never came; got {lines!r}")

    def test_send_and_listen_between_two_processes(self):
        self.daemon()
        bob = self.start_chat("--id", "bob", "listen", "--json", "--count", "3",
                              "--join", "#general", "--timeout", str(WAIT))
        self.wait_line(bob.stderr, "connected as bob")
        acks = []
        for target, text in ((["--to", "bob"], ["hi", "bob"]), (["--to", "*"], ["hi all"]),
                             (["--room", "general"], ["hi room"])):
            code, out, err = self.run_chat("--id", "alice", "send", *target, *text)
            self.assertEqual(code, 0, err)
            acks.append(out.strip())
        out, err = bob.communicate(timeout=WAIT)
        self.assertEqual(bob.returncode, 0, err)
        got = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([(m["from"], m["to"], m["body"]) for m in got],
                         [("alice", "bob", "hi bob"), ("alice", "*", "hi all"),
                          ("alice", "#general", "hi room")])
        self.assertEqual([m["msg_id"] for m in got], acks)

    def test_sigterm_closes_the_connection_without_reconnecting(self):
        self.daemon()
        bob = self.start_chat("--id", "bob", "listen")
        self.wait_line(bob.stderr, "connected as bob")
        bob.send_signal(signal.SIGTERM)
        out, err = bob.communicate(timeout=WAIT)
        self.assertNotIn("connection lost", err)
        self.assertNotIn("reconnecting", err)

    def test_a_seed_000_client_and_relay_chat_talk(self):
        self.daemon()
        bob = self.start_chat("--id", "bob", "listen", "--count", "1", "--timeout", str(WAIT))
        self.wait_line(bob.stderr, "connected as bob")
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as seed:
            seed.sendall(b"dan")                              # the seed's registration
            time.sleep(0.2)
            seed.sendall(b'bob||{"from": "dan", "text": "from the seed"}')
            reader = seed.makefile()
            ack = json.loads(reader.readline())
            self.assertEqual(ack["status"], "ok")
            out, err = bob.communicate(timeout=WAIT)
            self.assertEqual(bob.returncode, 0, err)
            self.assertRegex(out, r"^\[\d\d:\d\d:\d\d\] dan -> bob: from the seed\n$")
            code, out, err = self.run_chat("--id", "bob", "send", "--to", "dan", "hi seed")
            self.assertEqual(code, 0, err)
            delivered = json.loads(reader.readline())
            self.assertEqual((delivered["from"], delivered["body"]), ("bob", "hi seed"))

    def test_key_proof_and_exit_codes(self):
        self.daemon()
        key = os.path.abspath(self.mktemp())
        code, public, err = self.run_chat("genkey", key, server=False)
        self.assertEqual(code, 0, err)
        code, out, err = self.run_chat("--id", "carol", "--key", key, "peers")
        self.assertEqual((code, out.split()), (0, ["carol"]), err)
        self.assertIn("(key proved)", err)
        code, out, err = self.run_chat("--id", "carol", "peers")          # no proof
        self.assertEqual(code, 3)
        self.assertIn("id_owned", err)
        code, out, err = self.run_chat("--id", "bob", "listen", "--count", "1",
                                       "--timeout", "1")
        self.assertEqual(code, 4, err)
        closed = free_port()
        code, out, err = self.run_chat("--server", f"127.0.0.1:{closed}", "peers", server=False)
        self.assertEqual(code, 2, err)

    def test_a_message_in_flight_survives_a_relay_crash_once(self):
        relay = self.daemon()
        bob = self.start_chat("--id", "bob", "listen", "--json", "--count", "1",
                              "--timeout", str(WAIT))
        self.wait_line(bob.stderr, "connected as bob")
        alice = self.start_chat("--id", "alice", "chat", stdin=True)
        self.wait_line(alice.stdout, "connected as alice")
        # The relay freezes with the message unread in its socket, then dies.
        os.kill(relay.process.pid, signal.SIGSTOP)
        alice.stdin.write("/to bob survives a crash\n")
        alice.stdin.flush()
        time.sleep(0.5)
        relay.kill()
        relay.start(wait_tcp=[self.port])
        out, err = bob.communicate(timeout=WAIT)
        self.assertEqual(bob.returncode, 0, err)
        [msg] = [json.loads(line) for line in out.splitlines()]
        self.assertEqual(msg["body"], "survives a crash")
        alice.stdin.close()                       # end of input: exits once acked
        self.assertEqual(alice.wait(WAIT), 0)
        self.assertIn("reconnecting", alice.stdout.read())
        code, out, err = self.run_chat("--id", "bob", "history", "--with", "alice", "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual([json.loads(line)["body"] for line in out.splitlines()],
                         ["survives a crash"])

    def raw_room_send(self, body):
        """Send ``body`` to #general as a raw JSON-lines client named alice."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as raw:
            reader = raw.makefile("rb")
            raw.sendall(b'{"type": "hello", "id": "alice"}\n')
            self.assertEqual(json.loads(reader.readline())["type"], "welcome")
            raw.sendall(json.dumps({"type": "send", "room": "general", "body": body}).encode()
                        + b"\n")
            ack = json.loads(reader.readline())
            self.assertEqual(ack["type"], "ack", ack)
            return ack["msg_id"]

    def test_an_offline_room_member_gets_the_room_later_once_across_restarts(self):
        relay = self.daemon()
        code, out, err = self.run_chat("--id", "bob", "listen", "--join", "general",
                                       "--timeout", "1")
        self.assertEqual(code, 0, err)
        sent = [self.raw_room_send("while bob was away")]
        relay.kill()                                  # a crash: rebuilt from the journal
        relay.start(wait_tcp=[self.port])
        code, out, err = self.run_chat("--id", "alice", "send", "--room", "general",
                                       "after the crash")
        self.assertEqual(code, 0, err)
        sent.append(out.strip())
        relay.stop()                                  # a graceful stop: from the checkpoint
        relay.start(wait_tcp=[self.port])
        code, out, err = self.run_chat("--id", "bob", "listen", "--json", "--count", "2",
                                       "--timeout", str(WAIT))
        self.assertEqual(code, 0, err)
        self.assertIn("2 stored message(s) follow", err)
        got = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([(m["from"], m["room"], m["body"], m["msg_id"]) for m in got],
                         [("alice", "general", "while bob was away", sent[0]),
                          ("alice", "general", "after the crash", sent[1])])
        code, out, err = self.run_chat("--id", "bob", "listen", "--timeout", "1")
        self.assertEqual((code, out), (0, ""), "delivered once")
        self.assertNotIn("stored message", err)
        code, out, err = self.run_chat("--id", "bob", "leave", "general")
        self.assertEqual(code, 0, err)
        self.raw_room_send("after bob left")
        code, out, err = self.run_chat("--id", "bob", "listen", "--timeout", "1")
        self.assertEqual((code, out), (0, ""), "nothing kept after leave")

    def test_tls_with_a_private_ca(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        ca, key, cert = make_certificates(workdir)
        self.daemon(listen="ssl:{tcp}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
                    key=key, cert=cert)
        code, out, err = self.run_chat("--server", f"localhost:{self.port}", "--tls",
                                       "--ca", ca, "--id", "dave", "peers", server=False)
        self.assertEqual((code, out.split()), (0, ["dave"]), err)
        code, out, err = self.run_chat("--server", f"localhost:{self.port}", "--tls",
                                       "--id", "dave", "peers", server=False)
        self.assertEqual(code, 2, err)                # not trusted by the system store


class _AckEatingClient(portforward.ProxyClient):
    def dataReceived(self, data):
        proxy = self.peer.factory
        if proxy.hungry and b'"type": "ack"' in data:
            proxy.hungry -= 1
            proxy.eaten += 1
            self.transport.abortConnection()
            self.peer.transport.abortConnection()
            return
        super().dataReceived(data)


class _AckEatingClientFactory(portforward.ProxyClientFactory):
    protocol = _AckEatingClient


class _AckEatingServer(portforward.ProxyServer):
    clientProtocolFactory = _AckEatingClientFactory


class AckEater(portforward.ProxyFactory):
    """A TCP proxy to the relay that loses the first ack with its connection."""

    protocol = _AckEatingServer

    def __init__(self, host, port):
        super().__init__(host, port)
        self.hungry = 1
        self.eaten = 0


class LostAckE2E(TestCase):
    timeout = 2 * WAIT

    @defer.inlineCallbacks
    def test_an_ack_lost_with_its_connection_is_resent_and_stored_once(self):
        port = free_port()
        Relayd(self, INI % PLAIN, tcp=port).start(wait_tcp=[port])
        proxy = AckEater("127.0.0.1", port)
        listening = reactor.listenTCP(0, proxy, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        out, err, code = yield spawn(self, [
            "--server", f"127.0.0.1:{listening.getHost().port}", "--id", "alice",
            "send", "--json", "--to", "bob", "exactly once"])
        self.assertEqual((code, proxy.eaten), (0, 1), err)
        self.assertIn("reconnecting", err)
        ack = json.loads(out)
        self.assertTrue(ack["duplicate"])            # the relay had it: same nonce, same id
        out, err, code = yield spawn(self, [
            "--server", f"127.0.0.1:{port}", "--id", "bob", "history", "--with", "alice",
            "--json"])
        self.assertEqual(code, 0, err)
        self.assertIn("1 stored message(s) follow", err)
        self.assertEqual([json.loads(line)["msg_id"] for line in out.splitlines()],
                         [ack["msg_id"]])

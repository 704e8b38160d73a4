"""TLS: a private CA and certificates made with the ``relayd`` command, real
loopback TLS to the relay with and without required client certificates, and
certificate reload (SIGHUP) without a restart."""
import hashlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial import unittest

from relayd import config, tls_ca
from relayd.listeners import stream_service
from relayd.tls import Material, ServerTLS, TLSConfigError
from tests.daemon import REPO, Relayd, free_port, relay_ini
from tests.test_ops_support import InlinePool, http_json


def relayd_command(*args):
    """Run the ``relayd`` console script's main as a user would; (code, output)."""
    done = subprocess.run([sys.executable, "-m", "relayd.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def make_pki(directory):
    """A CA, a relay certificate and a client certificate, made with ``relayd``."""
    for args in (["ca", "init", "--dir", directory],
                 ["cert", "issue", "relay1", "--ca-dir", directory],
                 ["cert", "issue", "alice", "--client", "--ca-dir", directory]):
        code, output = relayd_command(*args)
        assert code == 0, output
    return {name: os.path.join(directory, name) for name in os.listdir(directory)}


def read(path):
    with open(path, "rb") as f:
        return f.read()


class CATests(unittest.TestCase):
    def test_ca_and_certificates(self):
        directory = os.path.abspath(self.mktemp())
        files = make_pki(directory)
        self.assertEqual(sorted(files), ["alice.key", "alice.pem", "ca.key", "ca.pem",
                                         "relay1.key", "relay1.pem"])
        for key in ("ca.key", "relay1.key", "alice.key"):
            self.assertEqual(os.stat(files[key]).st_mode & 0o777, 0o600)
        ca = x509.load_pem_x509_certificate(read(files["ca.pem"]))
        relay = x509.load_pem_x509_certificate(read(files["relay1.pem"]))
        relay.verify_directly_issued_by(ca)
        names = relay.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(len(names.get_values_for_type(x509.IPAddress)), 2)

    def test_refusals_are_clear(self):
        directory = os.path.abspath(self.mktemp())
        code, output = relayd_command("cert", "issue", "relay1", "--ca-dir", directory)
        self.assertEqual(code, 2)
        self.assertIn("relayd ca init --dir", output)
        make_pki(directory)
        code, output = relayd_command("ca", "init", "--dir", directory)
        self.assertEqual(code, 2)
        self.assertIn("already exists; not overwriting it", output)


    def test_an_existing_certificate_leaves_no_new_key_behind(self):
        directory = os.path.abspath(self.mktemp())
        tls_ca.init_ca(directory)
        with open(os.path.join(directory, "relay2.pem"), "w") as f:
            f.write("kept")
        with self.assertRaises(tls_ca.CAError):
            tls_ca.issue(directory, "relay2")
        self.assertFalse(os.path.exists(os.path.join(directory, "relay2.key")))
        self.assertEqual(read(os.path.join(directory, "relay2.pem")), b"kept")


class MaterialTests(unittest.TestCase):
    def setUp(self):
        self.files = make_pki(os.path.abspath(self.mktemp()))

    def test_clients_offering_alpn_complete_the_handshake(self):
        """Browsers offer h2 and http/1.1 (wss: http/1.1 only): Twisted's ALPN
        callback answered an empty choice and OpenSSL failed the handshake."""
        from OpenSSL import SSL
        material = Material(read(self.files["relay1.pem"]), read(self.files["relay1.key"]))
        for offered, chosen in (([b"h2", b"http/1.1"], b"http/1.1"), ([b"h2"], b""),
                                ([], b"")):
            server = SSL.Connection(material.options.getContext(), None)
            server.set_accept_state()
            client_context = SSL.Context(SSL.TLS_METHOD)
            if offered:
                client_context.set_alpn_protos(offered)
            client = SSL.Connection(client_context, None)
            client.set_connect_state()
            for _ in range(4):
                for one, other in ((client, server), (server, client)):
                    try:
                        one.do_handshake()
                    except SSL.WantReadError:
                        pass
                    try:
                        other.bio_write(one.bio_read(65536))
                    except SSL.WantReadError:
                        pass
            self.assertEqual(server.get_alpn_proto_negotiated(), chosen)
            client.do_handshake()                                  # done, no alert

    def test_key_must_match_the_certificate(self):
        e = self.assertRaises(TLSConfigError, Material, read(self.files["relay1.pem"]),
                              read(self.files["alice.key"]))
        self.assertIn("[tls] key does not match [tls] cert", str(e))

    def test_a_key_tls_cannot_use_is_a_config_error(self):
        key = X25519PrivateKey.generate().private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        e = self.assertRaises(TLSConfigError, Material, read(self.files["relay1.pem"]), key)
        self.assertIn("[tls] key: cannot sign for TLS", str(e))

    def test_required_client_certs_need_a_ca(self):
        e = self.assertRaises(TLSConfigError, Material, read(self.files["relay1.pem"]),
                              read(self.files["relay1.key"]), require_client_cert=True)
        self.assertIn("[tls] require_client_cert needs [tls] client_ca", str(e))

    def settings(self, **extra):
        lines = [f"cert = {self.files['relay1.pem']}", f"key = {self.files['relay1.key']}"]
        lines += [f"{k} = {v}" for k, v in extra.items()]
        return config.parse("[tls]\n" + "\n".join(lines) + "\n")

    def test_a_failed_reload_keeps_the_current_certificate(self):
        tls = ServerTLS(self.settings().tls, MemoryReactorClock(), InlinePool())
        tls.startService()
        self.addCleanup(tls.stopService)
        before = tls.material
        self.assertEqual(self.successResultOf(tls.reload()), "TLS certificate unchanged")
        shutil.copy(self.files["alice.key"], self.files["relay1.key"])
        result = self.successResultOf(tls.reload())
        self.assertTrue(result.startswith("TLS reload refused: [tls] key does not match"))
        self.assertIs(tls.material, before)
        self.assertEqual(tls.stats()["client_certs"], "not asked")

    def test_a_tls_section_that_wraps_nothing_is_logged(self):
        tls = ServerTLS(self.settings(listeners="tpc").tls, MemoryReactorClock(), InlinePool())
        with capturedLogs() as events:
            tls.startService()
        tls.stopService()
        self.assertIn("[tls] listeners = tpc: no listener of this daemon uses TLS",
                      [formatEvent(e) for e in events])

    def test_reload_interval_picks_up_new_files(self):
        clock = MemoryReactorClock()
        tls = ServerTLS(self.settings(reload_interval="1h").tls, clock, InlinePool())
        tls.startService()
        self.addCleanup(tls.stopService)
        before = tls.material.fingerprint
        pki = os.path.dirname(self.files["ca.pem"])
        tls_ca.issue(pki, "relay1b")
        os.replace(os.path.join(pki, "relay1b.key"), self.files["relay1.key"])
        os.replace(os.path.join(pki, "relay1b.pem"), self.files["relay1.pem"])
        clock.advance(3599)
        self.assertEqual(tls.material.fingerprint, before)
        clock.advance(1)
        self.assertNotEqual(tls.material.fingerprint, before)
        self.assertEqual((tls.stats()["subject"], tls.stats()["reloads"]), ("CN=relay1b", 1))

    def test_listeners_named_in_tls_are_wrapped(self):
        settings = self.settings(listeners="tcp")
        settings._sections["tcp"] = config.parse("[tcp]\n").tcp
        daemon = type("D", (), {"settings": settings, "reactor": MemoryReactorClock()})()
        daemon.tls = ServerTLS(settings.tls, daemon.reactor, InlinePool())
        wrapped = stream_service(daemon, settings.tcp.listen, object())
        plain = stream_service(daemon, "tcp:9999:interface=127.0.0.1", object())
        self.assertIsInstance(wrapped.factory.tls, TLSMemoryBIOFactory)
        self.assertIsNone(plain.factory.tls)
        self.assertEqual(daemon.tls.listeners, [settings.tcp.listen])
        daemon.tls = None
        self.assertRaises(ValueError, stream_service, daemon, "tcp:1", object(), tls=True)


INI = relay_ini("""
[tls]
cert = {workdir}/pki/relay1.pem
key = {workdir}/pki/relay1.key
""")


class LoopbackTLSTests(unittest.TestCase):
    """The relay's TCP listener behind TLS, in a real twistd process."""

    timeout = 120

    def start(self, extra=""):
        workdir = os.path.abspath(self.mktemp())
        self.files = make_pki(os.path.join(workdir, "pki"))
        self.port, self.http = free_port(), free_port()
        self.relay = Relayd(self, INI + extra, workdir=workdir, tcp=self.port, http=self.http)
        return self.relay.start(wait_tcp=[self.port])

    def connect(self, client_cert=False):
        context = ssl.create_default_context(cafile=self.files["ca.pem"])
        if client_cert:
            context.load_cert_chain(self.files["alice.pem"], self.files["alice.key"])
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=10),
                                   server_hostname="localhost")
        self.addCleanup(sock.close)
        return sock

    def hello(self, sock, peer_id="alice"):
        sock.sendall(json.dumps({"type": "hello", "id": peer_id}).encode() + b"\n")
        return json.loads(sock.makefile("rb").readline())

    def test_clients_speak_the_protocol_over_tls(self):
        self.start()
        sock = self.connect()
        self.assertEqual(self.hello(sock)["type"], "welcome")
        self.assertEqual(sock.version() in ("TLSv1.2", "TLSv1.3"), True)
        plain = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(plain.close)
        plain.sendall(b'{"type": "hello", "id": "bob"}\n')
        try:
            answer = plain.recv(4096)
        except ConnectionError:
            answer = b""
        self.assertNotIn(b"welcome", answer, "plain text is not accepted")

    def test_stored_mail_goes_out_and_is_settled_over_tls(self):
        self.start("[ratelimit]\nmessages = 100000\n")
        alice = self.connect()
        self.hello(alice)
        count = 300                     # several chunks of stored mail
        alice.sendall(b"".join(json.dumps({"type": "send", "to": "zed", "body": "%03d" % i + "x" * 1000}
                                          ).encode() + b"\n" for i in range(count)))
        acks = alice.makefile("rb")
        for _ in range(count):
            self.assertEqual(json.loads(acks.readline())["type"], "ack")
        zed = self.connect()
        lines = zed.makefile("rb")
        zed.sendall(b'{"type": "hello", "id": "zed"}\n')
        self.assertEqual(json.loads(lines.readline())["pending"], count)
        bodies = [json.loads(lines.readline())["body"][:3] for _ in range(count)]
        self.assertEqual(bodies, ["%03d" % i for i in range(count)])
        zed.sendall(b'{"type": "ping"}\n')
        self.assertEqual(json.loads(lines.readline())["type"], "pong")
        zed.close()
        again = self.connect()
        self.assertEqual(self.hello(again, "zed")["pending"], 0, "all settled once handed over")

    def test_monitoring_over_https(self):
        self.start("listeners = tcp http\n[http]\nlisten = tcp:{http}:interface=127.0.0.1\n")
        context = ssl.create_default_context(cafile=self.files["ca.pem"])
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"https://localhost:{self.http}/health",
                                            context=context, timeout=10) as response:
                    self.assertEqual(json.load(response)["status"], "ok")
                    break
            except urllib.error.URLError:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.2)
        _, stats = http_json(self.http, "/stats", scheme="https", context=context)
        self.assertEqual(sorted(stats["tls"]["listeners"]),
                         sorted([f"tcp:{self.port}:interface=127.0.0.1",
                                 f"tcp:{self.http}:interface=127.0.0.1"]))

    def test_required_client_certificate(self):
        self.start("client_ca = {workdir}/pki/ca.pem\nrequire_client_cert = yes\n")
        self.assertEqual(self.hello(self.connect(client_cert=True))["type"], "welcome")
        sock = self.connect(client_cert=False)
        with self.assertRaises((ssl.SSLError, json.JSONDecodeError, ConnectionError)):
            self.hello(sock, "mallory")

    def test_certificate_reload_on_sighup(self):
        self.start()
        first = self.connect()
        old = hashlib.sha256(first.getpeercert(binary_form=True)).hexdigest()
        pki = os.path.dirname(self.files["ca.pem"])
        code, output = relayd_command("cert", "issue", "relay1b", "--ca-dir", pki)
        self.assertEqual(code, 0, output)
        os.replace(os.path.join(pki, "relay1b.key"), self.files["relay1.key"])
        os.replace(os.path.join(pki, "relay1b.pem"), self.files["relay1.pem"])
        self.relay.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        new = old
        while new == old and time.monotonic() < deadline:
            time.sleep(0.1)
            new = hashlib.sha256(self.connect().getpeercert(binary_form=True)).hexdigest()
        self.assertNotEqual(new, old)
        self.assertEqual(self.hello(first)["type"], "welcome", "open connections keep working")
        self.assertIn("TLS certificate reloaded: CN=relay1b", self.relay.log())

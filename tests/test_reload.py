"""Reload (SIGHUP, admin reload()): what can be applied is, and the rest is
reported as "[section] key: needs a restart", never as reloaded."""
import json
import os
import signal
import socket
import ssl
import time

from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from relayd import tap
from tests.daemon import Relayd, free_port, wait_for_port
from tests.test_tls import make_pki

BASE = """
[relay]
data_dir = {data_dir}
[tcp]
listen = tcp:{tcp}:interface=127.0.0.1
"""


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def hello(sock, peer_id="alice"):
    sock.sendall(json.dumps({"type": "hello", "id": peer_id}).encode() + b"\n")
    return json.loads(sock.makefile("rb").readline())


class ReloadSummaryTests(unittest.TestCase):
    """The text reload() returns (the admin console shows it), in process."""

    def daemon(self, text, reactor=None):
        self.path = os.path.abspath(self.mktemp())
        self.data_dir = os.path.abspath(self.mktemp())
        self.write(text)
        options = tap.Options()
        options.parseOptions(["--config", self.path])
        return tap.makeService(options, reactor or MemoryReactorClock())

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(f"[relay]\ndata_dir = {self.data_dir}\n" + text)

    def test_settings_that_need_a_restart_are_named(self):
        daemon = self.daemon("[tcp]\nlisten = tcp:0\n[journal]\nfsync = batch\n")
        self.write("[tcp]\nlisten = tcp:0\nmax_connections = 7\n[journal]\nfsync = always\n"
                   "[dedup]\nwindow = 1h\n")
        summary = daemon.reload()
        self.assertNotIn("reloaded", summary)
        self.assertIn("[journal] fsync: needs a restart", summary.splitlines())
        self.assertIn("[dedup] window: needs a restart", summary.splitlines())
        self.assertIn("[tcp] max_connections: applied", summary.splitlines())
        self.assertEqual(daemon.getServiceNamed("tcp").max_connections, 7)

    def test_a_new_section_that_cannot_start_at_runtime_needs_a_restart(self):
        daemon = self.daemon("[tcp]\nlisten = tcp:0\n")
        self.write("[tcp]\nlisten = tcp:0\n[udp]\nlisten = 0\n")
        summary = daemon.reload()
        self.assertIn("[udp]: needs a restart", summary.splitlines())
        self.assertNotIn("reloaded", summary)

    def test_a_cluster_nodes_federation_listener_moves_at_a_restart(self):
        # it listens only while the node leads the cluster's federation
        cluster = "[cluster]\nengine = nats://127.0.0.1:1\nnode = a\n"
        daemon = self.daemon(cluster + "[federation]\nlisten = tcp:0:interface=127.0.0.1\n")
        self.write(cluster + "[federation]\nlisten = tcp:0:interface=127.0.0.2\n")
        summary = daemon.reload()
        self.assertIn("[federation] listen: needs a restart", summary.splitlines())

    def test_http_and_federation_listeners_move_too(self):
        old, new = [free_port() for _ in range(2)], [free_port() for _ in range(2)]
        daemon = self.daemon(f"[tcp]\nlisten = tcp:0\n[http]\nlisten = tcp:{old[0]}\n"
                             f"[federation]\nlisten = tcp:{old[1]}\n", reactor)
        daemon.privilegedStartService()
        daemon.startService()
        self.addCleanup(daemon.stopService)
        self.write(f"[tcp]\nlisten = tcp:0\n[http]\nlisten = tcp:{new[0]}\n"
                   f"[federation]\nlisten = tcp:{new[1]}\n")
        summary = daemon.reload().splitlines()
        self.assertEqual(summary[0], f"reloaded {self.path}")
        self.assertIn(f"[http] listen: now tcp:{new[0]} (without TLS)", summary)
        self.assertIn(f"[federation] listen: now tcp:{new[1]} (without TLS)", summary)
        self.assertEqual({section: listener.description
                          for section, listener in daemon.listeners.items()},
                         {"tcp": "tcp:0", "http": f"tcp:{new[0]}",
                          "federation": f"tcp:{new[1]}"})
        listening = [daemon.listeners[s].service._waitingForPort.result.getHost().port
                     for s in ("http", "federation")]
        self.assertEqual(listening, new)

    def test_only_applied_changes_say_reloaded(self):
        daemon = self.daemon("[tcp]\nlisten = tcp:0\n")
        self.assertEqual(daemon.reload(), f"reloaded {self.path}: no changes")
        self.write("[tcp]\nlisten = tcp:0\n[ratelimit]\nmessages = 99\n")
        self.assertEqual(daemon.reload(),
                         f"reloaded {self.path}\n[ratelimit] messages: applied")


class ReloadDaemonTests(unittest.TestCase):
    """SIGHUP to a real twistd relayd."""
    timeout = 120

    def start(self, ini, **ports):
        self.relay = Relayd(self, ini, **ports)
        self.relay.start(wait_tcp=[p for k, p in ports.items() if k != "new"])
        return self.relay

    def rewrite(self, old, new):
        with open(self.relay.config) as f:
            text = f.read()
        with open(self.relay.config, "w") as f:
            f.write(text.replace(old, new))

    def sighup(self, expect):
        before = len(self.relay.log())
        self.relay.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while expect not in self.relay.log()[before:]:
            self.assertLess(time.monotonic(), deadline, self.relay.log()[before:])
            time.sleep(0.05)
        return self.relay.log()[before:]

    def test_a_moved_listener_is_bound_again(self):
        old, new = free_port(), free_port()
        self.start(BASE, tcp=old)
        kept = socket.create_connection(("127.0.0.1", old), timeout=10)
        self.addCleanup(kept.close)
        self.assertEqual(hello(kept)["type"], "welcome")
        self.rewrite(f"tcp:{old}:", f"tcp:{new}:")
        log = self.sighup("configuration reloaded")
        self.assertIn(f"[tcp] listen: now tcp:{new}:interface=127.0.0.1", log)
        self.assertTrue(wait_for_port(new, 10))
        self.assertTrue(refused(old))
        fresh = socket.create_connection(("127.0.0.1", new), timeout=10)
        self.addCleanup(fresh.close)
        self.assertEqual(hello(fresh, "bob")["type"], "welcome")
        kept.sendall(b'{"type": "ping"}\n')       # a connection made before stays
        self.assertEqual(json.loads(kept.makefile("rb").readline())["type"], "pong")
        self.assertNotIn("Address already in use", self.relay.log())   # bound once

    def test_a_listener_that_cannot_move_stays_and_says_so(self):
        old, busy = free_port(), free_port()
        self.start(BASE, tcp=old)
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", busy))
        blocker.listen()
        self.addCleanup(blocker.close)
        self.rewrite(f"tcp:{old}:", f"tcp:{busy}:")
        log = self.sighup("applied in part")
        self.assertIn(f"[tcp] listen: cannot listen on tcp:{busy}", log)
        self.assertFalse(refused(old))

    def tls_connect(self, port, client_cert):
        pki = os.path.join(self.relay.workdir, "pki")
        context = ssl.create_default_context(cafile=os.path.join(pki, "ca.pem"))
        if client_cert:
            context.load_cert_chain(os.path.join(pki, "alice.pem"), os.path.join(pki, "alice.key"))
        sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                   server_hostname="localhost")
        self.addCleanup(sock.close)
        return sock

    def test_require_client_cert_takes_effect_for_new_connections(self):
        workdir = os.path.abspath(self.mktemp())
        make_pki(os.path.join(workdir, "pki"))
        port = free_port()
        self.relay = Relayd(self, BASE + "[tls]\ncert = {workdir}/pki/relay1.pem\n"
                            "key = {workdir}/pki/relay1.key\nclient_ca = {workdir}/pki/ca.pem\n"
                            "require_client_cert = no\n", workdir=workdir, tcp=port)
        self.relay.start(wait_tcp=[port])
        before = self.tls_connect(port, client_cert=False)
        self.assertEqual(hello(before)["type"], "welcome")
        self.rewrite("require_client_cert = no", "require_client_cert = yes")
        log = self.sighup("client certificates required")
        self.assertIn("[tls] require_client_cert: applied", log)
        with self.assertRaises((ssl.SSLError, json.JSONDecodeError, ConnectionError)):
            hello(self.tls_connect(port, client_cert=False), "mallory")
        self.assertEqual(hello(self.tls_connect(port, client_cert=True), "carol")["type"],
                         "welcome")

    def test_new_tls_and_admin_sections_start(self):
        workdir = os.path.abspath(self.mktemp())
        make_pki(os.path.join(workdir, "pki"))
        open(os.path.join(workdir, "admin_keys"), "w").close()
        port, admin = free_port(), free_port()
        self.relay = Relayd(self, BASE, workdir=workdir, tcp=port)
        self.relay.start(wait_tcp=[port])
        with open(self.relay.config, "a") as f:
            f.write(f"[tls]\ncert = {workdir}/pki/relay1.pem\nkey = {workdir}/pki/relay1.key\n"
                    f"listeners = tcp\n[admin]\nlisten = tcp:{admin}:interface=127.0.0.1\n"
                    f"authorized_keys = {workdir}/admin_keys\n")
        log = self.sighup("configuration reloaded")
        self.assertIn("[tls]: started", log)
        self.assertIn("[admin]: started", log)
        self.assertIn("[tcp] TLS: on for new connections", log)
        self.assertNotIn("no listener of this daemon uses TLS", log)
        self.assertEqual(hello(self.tls_connect(port, client_cert=False))["type"], "welcome")
        with socket.create_connection(("127.0.0.1", admin), timeout=10) as ssh:
            self.assertTrue(ssh.recv(64).startswith(b"SSH-2.0-"))

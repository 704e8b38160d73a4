"""js-libp2p in a real headless Chromium, reaching relayd over /ws and /tls/ws.

The page (tests/interop/browser.mjs, bundled by esbuild) reserves a slot on
relayd over WebSocket; a Node js-libp2p peer connected to relayd over TCP
(``peers.mjs browser-host``, which also serves the page) dials it through the
circuit and they chat both ways; the page posts what it received back to its
host, which prints both sides' findings.
"""
import json
import os
import shutil
import subprocess
import tempfile

from twisted.trial import unittest

from relayd import tls_ca
from tests.daemon import free_port
from tests.test_libp2p_interop import INTEROP, NODE, SCRIPT, RelaydMixin, ensure_packages

CHROMIUM = shutil.which("chromium")
CERTUTIL = shutil.which("certutil")
BUNDLE = os.path.join(INTEROP, "build", "browser.js")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def trusting_home(ca_pem):
    """A fresh $HOME whose NSS database (where Chromium on Linux looks) trusts ``ca_pem``."""
    home = tempfile.mkdtemp(prefix="relayd-chromium-home-")
    nssdb = "sql:" + os.path.join(home, ".pki", "nssdb")
    os.makedirs(os.path.join(home, ".pki", "nssdb"))
    subprocess.run([CERTUTIL, "-d", nssdb, "-N", "--empty-password"], check=True)
    subprocess.run([CERTUTIL, "-d", nssdb, "-A", "-t", "C,,", "-n", "relayd test CA",
                    "-i", ca_pem], check=True)
    return home


class BrowserTests(RelaydMixin, unittest.TestCase):
    timeout = 180

    def setUp(self):
        if CHROMIUM is None:
            raise unittest.SkipTest("needs Chromium (Debian package chromium)")
        ensure_packages()
        subprocess.run([NODE, SCRIPT, "bundle"], cwd=INTEROP, check=True, timeout=120,
                       stdout=subprocess.DEVNULL)

    def chat(self, relay_ws, relay_tcp, home=None):
        """Run the page against relayd (Chromium with ``home`` as $HOME); returns
        the host's findings."""
        host = subprocess.Popen([NODE, SCRIPT, "browser-host", relay_ws, relay_tcp], cwd=INTEROP,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(_stop, host)
        url = json.loads(host.stdout.readline())["url"]
        profile = tempfile.mkdtemp(prefix="relayd-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        env = dict(os.environ, HOME=home) if home else None
        browser = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", url], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.addCleanup(_stop, browser)
        try:
            out, err = host.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            _stop(host)
            out, err = host.communicate()
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if host.returncode != 0 or not lines:
            _stop(browser)
            raise AssertionError(f"browser-host failed ({host.returncode}):\n{out}\n{err[-3000:]}"
                                 f"\nchromium:\n{browser.stderr.read()[-3000:]}")
        return json.loads(lines[-1])

    def check(self, got, relay, ws_addr):
        self.assertEqual(got["node_received"], [{"from": got["browser_peer"],
                                                 "message": f"browser got: {got['node_sent']}"}])
        self.assertEqual(got["browser_received"], [{"from": got["node_peer"],
                                                    "message": got["node_sent"], "limited": True}])
        self.assertIn(ws_addr, got["browser_relay_conns"])      # the browser reached relayd on /ws
        self.assertIn(f"{ws_addr}/p2p-circuit/p2p/{got['browser_peer']}", got["browser_addrs"])
        log = relay.log()
        self.assertIn(f"reservation accepted: peer {got['browser_peer']}", log)
        self.assertIn(f"opened: {got['node_peer']} -> {got['browser_peer']}", log)

    def test_browser_reserves_over_ws_and_chats_with_a_tcp_peer(self):
        ws_port = free_port()
        relay, tcp_addr, peer_id = self.start(f"ws_listen = tcp:{ws_port}:interface=127.0.0.1\n")
        ws_addr = f"/ip4/127.0.0.1/tcp/{ws_port}/ws/p2p/{peer_id}"
        self.assertIn(f"listening on {tcp_addr} {ws_addr} ", relay.log())
        self.check(self.chat(ws_addr, tcp_addr), relay, ws_addr)

    def test_browser_over_tls_ws_trusting_a_test_ca(self):
        pki = os.path.abspath(self.mktemp())
        tls_ca.init_ca(pki)
        tls_ca.issue(pki, "relay1", hosts=["127.0.0.1", "localhost"])
        wss_port = free_port()
        relay, tcp_addr, peer_id = self.start(
            f"wss_listen = tcp:{wss_port}:interface=127.0.0.1\n"
            f"[tls]\ncert = {pki}/relay1.pem\nkey = {pki}/relay1.key\n")
        wss_addr = f"/ip4/127.0.0.1/tcp/{wss_port}/tls/ws/p2p/{peer_id}"
        if CERTUTIL is None:
            raise unittest.SkipTest("needs certutil (Debian libnss3-tools) to make Chromium trust a CA")
        home = trusting_home(os.path.join(pki, "ca.pem"))
        self.addCleanup(shutil.rmtree, home, True)
        got = self.chat(wss_addr, tcp_addr, home)
        self.check(got, relay, wss_addr)


def _stop(process):
    if process.poll() is None:
        process.kill()
        process.wait()

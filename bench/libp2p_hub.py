"""The libp2p hub: relayd's [gossipsub] and [kad] side by side with a js-libp2p
node running @libp2p/gossipsub and @libp2p/kad-dht as the same hub.

For each hub, the load generator (bench/libp2p_hub_load.py, its own process)
measures
  * GossipSub: messages/s from one publisher through the hub to N
    subscribers that each know only the hub (every message reaches all N),
    and the hub's resident memory per subscribed peer;
  * DHT: FIND_NODE/GET_PROVIDERS requests answered per second.

    python -m bench.libp2p_hub [--subscribers 10,100] [--messages 2000] [--seconds 5]

The js hub needs ``npm install --no-save`` in tests/interop (without it, relayd alone is
measured and the reference is reported missing).  Both hubs
use the shipped mesh degrees for a hub (d = 64, d_hi = 1024), so that every
subscriber is in the mesh.
"""
import argparse
import json
import os
import subprocess
import sys

from bench import targets
from bench.libp2p_circuits import LIBP2P, NODE, SCRIPT, JsRelay, Libp2pRelayd
from bench.relay import REPO
from bench.report import emit, machine
from bench.server import ServerError

TOPIC = "bench"
D, D_HI = 64, 1024
CONFIG = LIBP2P + """\

[kad]
request_rate = 1000000

[gossipsub]
topics = %s
d = %d
d_hi = %d
""" % (TOPIC, D, D_HI)


class HubRelayd(Libp2pRelayd):
    name = "relayd-hub"
    config = CONFIG


class JsHub(JsRelay):
    name = "js-libp2p-hub"

    def command(self):
        return [NODE, SCRIPT, "hub-server", str(self.port), TOPIC, str(D), str(D_HI)]


def load(*args, timeout=600):
    done = subprocess.run([sys.executable, "-m", "bench.libp2p_hub_load", *map(str, args)],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=REPO))
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise ServerError(f"load generator failed:\n{done.stderr.decode()[-3000:]}")
    return json.loads(lines[-1])


def run(make_server, subscribers, messages, seconds, timeout):
    """The figures of one hub: ``{N: gossip figures, "dht": DHT figures}``."""
    found = {}
    for n in subscribers:               # a fresh hub each time: memory and backlog start empty
        with make_server() as server:
            got = load("gossip", server.multiaddrs()["tcp"], "--pid", server.pid, "--topic", TOPIC,
                       "--subscribers", n, "--messages", messages, "--timeout", timeout)
            found[n] = dict(
                size=got["size"], msgs_per_s=float(got["msgs_per_s"]),
                deliveries_per_s=float(got["deliveries_per_s"]),
                delivered=got["deliveries"], expected=got["expected"],
                kib_per_subscriber=(got["rss_subscribed_kib"] - got["rss_before_kib"]) / n,
                hub_cpu_pct=float(got["hub_cpu_pct"]),
                loadgen_cpu_pct=float(got["loadgen_cpu_pct"]))
            emit("libp2p_gossipsub", hub=server.name, subscribers=n, messages=messages, **found[n])
    with make_server() as server:
        got = load("dht", server.multiaddrs()["tcp"], "--pid", server.pid, "--seconds", seconds)
        found["dht"] = dict(connections=got["connections"], depth=got["depth"],
                            lookups_per_s=float(got["lookups_per_s"]),
                            hub_cpu_pct=float(got["hub_cpu_pct"]),
                            loadgen_cpu_pct=float(got["loadgen_cpu_pct"]))
        emit("libp2p_kad", hub=server.name, **found["dht"])
    return found


def record(ours, theirs):
    """The issue-12 rows: relayd's figures, the js hub's beside them."""
    def ref(key, field):
        return theirs[key][field] if key in theirs else None
    for n in (10, 100):
        if n in ours:
            targets.record(f"gossip_{n}", ours[n]["msgs_per_s"], ref(n, "msgs_per_s"),
                           note=f"{ours[n]['delivered']:,} of {ours[n]['expected']:,} delivered"
                                + (f"; js hub {theirs[n]['delivered']:,}" if n in theirs else ""))
    if "dht" in ours:
        targets.record("dht_lookups", ours["dht"]["lookups_per_s"], ref("dht", "lookups_per_s"))
    largest = max((n for n in ours if n != "dht"), default=None)
    if largest is not None:
        targets.record("gossip_memory", ours[largest]["kib_per_subscriber"],
                       ref(largest, "kib_per_subscriber"), note=f"N = {largest}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench.libp2p_hub")
    parser.add_argument("--subscribers", default="10,100",
                        type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--timeout", type=float, default=30,
                        help="give up waiting for the messages after this long (default 30)")
    parser.add_argument("--systems", default="relayd,js",
                        help="hubs to measure: relayd, js (comma separated)")
    args = parser.parse_args(argv)
    systems = args.systems.split(",")
    emit("machine", when="start", **machine())
    if "js" in systems and not os.path.exists(NODE):
        # relayd's figures still count; the reference is said to be missing
        emit("libp2p_hub", hub="js-libp2p-hub", skipped="run_npm_install_--no-save_in_tests/interop")
        systems.remove("js")
    hubs = {"relayd": HubRelayd, "js": JsHub}
    found = {}
    for name in systems:
        if name in hubs:            # other benchmarks' systems (mosquitto) have no hub
            found[name] = run(hubs[name], args.subscribers, args.messages, args.seconds,
                              args.timeout)
    if "relayd" in found:
        record(found["relayd"], found.get("js", {}))
    emit("machine", when="end", **machine())


if __name__ == "__main__":
    main()

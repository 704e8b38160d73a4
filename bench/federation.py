"""Federation figures: messages/s across a line of 3 relays against one
relay alone, added latency per hop, and what flooding costs in link frames
and dedup hits.

Starts real ``twistd relayd`` processes on loopback (keys pinned, rate
limits raised, the journal as shipped: fsync = batch).

* throughput: the fan-out generator (``bench.loadgen.saturate``): one
  sender pipelines broadcasts with up to ``--window`` unacked, never paced
  by the receiver, and one receiver counts them, first both on one relay
  alone (what it accepts and delivers), then sender on relay1 and receiver
  on relay3 (two hops away); delivered messages/s over ``--seconds`` after
  ``--warmup``, ``--repeat`` times alternately, medians.
* latency: one message every 1/``--rate`` s carrying ``monotonic_ns``;
  receivers on relay1 (0 hops), relay2 (1) and relay3 (2) take p50/p99.
  The added latency per hop is (p50 at 2 hops - p50 at 0 hops) / 2.
* flooding: from each relay's ``/stats`` after a run, link frames sent and
  dedup hits per message, for the line of 3 and a full mesh of ``--mesh``.

    python -m bench.federation [--seconds 3] [--window 10000] [--repeat 3]
                               [--rate 200] [--latency-seconds 5] [--mesh 5]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from bench import loadgen, systems, targets
from bench.procstat import cpu_seconds
from bench.relay import Relayd
from bench.report import emit, machine, ratio
from bench.ports import free_port
from bench.server import HOST

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]

CONFIG = """\
[relay]
id = {name}
data_dir = {workdir}/var
[tcp]
listen = tcp:{tcp}:interface={host}
max_connections_per_ip = 10000
[ratelimit]
messages = 100000000
per_seconds = 1
[journal]
fsync = batch
[http]
listen = tcp:{http}:interface={host}
[federation]
listen = tcp:{fed}:interface={host}
"""
PEER = "[peer:{name}]\nendpoint = tcp:{host}:{fed}\nkey_file = {pub}\n"


class Relays:
    """``n`` relayd processes linked along ``edges``; stop() kills and removes them."""

    def __init__(self, n, edges):
        from relayd.federation.keys import write_public
        from relayd.identity import Identity, load_or_create
        self.root = tempfile.mkdtemp(prefix="relayd-fed-bench-")
        self.names = [f"relay{i + 1}" for i in range(n)]
        self.ports = [dict(tcp=free_port(), fed=free_port(), http=free_port()) for _ in range(n)]
        self.processes = []
        pubs = []
        for name in self.names:
            var = os.path.join(self.root, name, "var")
            key, _ = load_or_create(os.path.join(var, "identity.key"))
            pubs.append(write_public(var, Identity(name, key)))
        for i, name in enumerate(self.names):
            workdir = os.path.join(self.root, name)
            text = CONFIG.format(name=name, workdir=workdir, host=HOST, **self.ports[i])
            for a, b in edges:
                if i in (a, b):
                    j = b if i == a else a
                    text += PEER.format(name=self.names[j], host=HOST, pub=pubs[j],
                                        fed=self.ports[j]["fed"])
            config = os.path.join(workdir, "relay.ini")
            with open(config, "w") as f:
                f.write(text)
            self.processes.append(subprocess.Popen(
                TWISTD + ["-n", "--pidfile=", "--logfile", os.path.join(workdir, "twistd.log"),
                          "relayd", "--config", config], cwd=REPO))
        self.expected_links = [sum(1 for e in edges if i in e) for i in range(n)]

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(s["federation"]["links_up"] >= want
                       for s, want in zip(self.stats(), self.expected_links)):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the relays did not link up; logs in " + self.root)

    def stats(self):
        out = []
        for ports in self.ports:
            with urllib.request.urlopen(f"http://{HOST}:{ports['http']}/stats", timeout=5) as r:
                out.append(json.load(r))
        return out

    def stop(self):
        for p in self.processes:
            p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.root, ignore_errors=True)


class Client:
    """A JSON-lines client; a thread collects what arrives."""

    def __init__(self, port, peer_id):
        self.sock = socket.create_connection((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(json.dumps({"type": "hello", "id": peer_id}).encode() + b"\n")
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.acks = 0
        self.received = []          # (receive time ns, body)
        self.lock = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.file:
            now = time.monotonic_ns()
            frame = json.loads(line)
            with self.lock:
                if frame.get("type") == "ack":
                    self.acks += 1
                elif frame.get("type") == "message":
                    self.received.append((now, frame["body"]))
                self.lock.notify_all()

    def send(self, body):
        self.sock.sendall(b'{"type": "send", "to": "*", "body": "' + body.encode() + b'"}\n')

    def wait(self, predicate, timeout):
        with self.lock:
            return self.lock.wait_for(predicate, timeout)

    def close(self):
        self.sock.close()


class Span(Relayd):
    """The client side of relayd for ``loadgen.saturate``, with the sender
    on one relay and the receivers on another (no process of its own)."""

    name = "relayd-span"

    def __init__(self, process, sender_port, receiver_port):
        self.process, self.sender_port, self.receiver_port = process, sender_port, receiver_port

    def address(self, subscribe):
        return HOST, self.receiver_port if subscribe else self.sender_port


def throughput(alone, line, seconds, warmup, window, repeat):
    """Saturate one relay alone (sender and receiver on it) and the line
    (sender on relay1, receiver on relay3), ``repeat`` times alternately;
    the medians of delivered msgs/s, and the line / alone ratio."""
    spans = {"alone": Span(alone.processes[0], alone.ports[0]["tcp"], alone.ports[0]["tcp"]),
             "line": Span(line.processes[0], line.ports[0]["tcp"], line.ports[-1]["tcp"])}
    found = {"alone": [], "line": []}
    for n in range(repeat):
        for name, relays in (("alone", alone), ("line", line)):
            before = [cpu_seconds(p.pid) for p in relays.processes]
            got = loadgen.saturate(spans[name], 1, seconds, warmup, window, settle=30.0)
            # CPU of each relay per message, over the whole run (warm-up and settling too)
            per_msg = {f"relay{i + 1}_cpu_us_per_msg": (cpu_seconds(p.pid) - b) * 1e6 / got["messages"]
                       for i, (p, b) in enumerate(zip(relays.processes, before))}
            found[name].append(got)
            emit("federation_throughput", relays=len(relays.names), hops=len(relays.names) - 1,
                 run=n + 1, window=window,
                 **{k: got[k] for k in ("delivered_per_s", "sent_per_s", "lost", "dropped")},
                 **per_msg)
    medians = {name: systems.median(runs) for name, runs in found.items()}
    lost = max(run["lost"] + run["dropped"] for runs in found.values() for run in runs)
    alone_rate, line_rate = medians["alone"]["delivered_per_s"], medians["line"]["delivered_per_s"]
    emit("federation_throughput", run="median", alone_msgs_per_s=alone_rate,
         line_msgs_per_s=line_rate, ratio=ratio(line_rate, alone_rate), lost=lost)
    targets.record("federation_msgs", line_rate, alone_rate,
                   note=f"median of {repeat}, {window:,} in flight, {lost} lost",
                   valid=lost == 0 and window >= 10000)


def latency(relays, rate, seconds):
    sender = Client(relays.ports[0]["tcp"], "pacer")
    receivers = [Client(p["tcp"], f"watch{i}") for i, p in enumerate(relays.ports)]
    count = int(rate * seconds)
    start = time.monotonic()
    sent = set()
    for k in range(count):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = str(time.monotonic_ns())
        sent.add(body)
        sender.send(body)

    def ours(r):
        """What ``r`` got of this run (a late copy of an earlier one is not)."""
        with r.lock:
            return [(now, body) for now, body in r.received if body in sent]
    for r in receivers:
        r.wait(lambda r=r: len(ours(r)) >= count, 30)        # the lock is reentrant
    p50s = []
    for hops, r in enumerate(receivers):
        samples = sorted((now - int(body)) / 1e6 for now, body in ours(r)[count // 10:])
        p50 = statistics.median(samples)
        p50s.append(p50)
        emit("federation_latency", hops=hops, rate=int(rate), samples=len(samples),
             p50_ms=p50, p99_ms=samples[int(len(samples) * 0.99) - 1])
        r.close()
    sender.close()
    hops = len(receivers) - 1
    added = (p50s[-1] - p50s[0]) / hops
    emit("federation_latency", added_per_hop_p50_ms=added)
    targets.record("federation_hop", added,
                   note=f"p50 {p50s[0]:.3f} ms at 0 hops, {p50s[-1]:.3f} ms at {hops}")


def flooding(relays, topology, count):
    before = relays.stats()
    sender = Client(relays.ports[0]["tcp"], "flooder")
    for k in range(count):
        sender.send(f"f{k}")
    sender.wait(lambda: sender.acks >= count, 30)
    sender.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = relays.stats()
        ins = sum(p["messages_in"] for s in after for p in s["federation"]["by_peer"].values())
        if ins - sum(p["messages_in"] for s in before
                     for p in s["federation"]["by_peer"].values()) >= count * (len(after) - 1):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    after = relays.stats()

    def total(stats, key):
        return sum(p[key] for s in stats for p in s["federation"]["by_peer"].values())
    emit("federation_flood", topology=topology, relays=len(after), messages=count,
         frames_per_msg=(total(after, "messages_out") - total(before, "messages_out")) / count,
         dedup_per_msg=(total(after, "dedup_hits") - total(before, "dedup_hits")) / count)


def run(n, edges, topology, body):
    relays = Relays(n, edges)
    try:
        relays.wait_ready()
        body(relays)
    finally:
        relays.stop()


def on_line(args, alone):
    """What is measured on the line of three (with ``alone`` for reference)."""
    def measure(relays):
        throughput(alone, relays, args.seconds, args.warmup, args.window, args.repeat)
        latency(relays, args.rate, args.latency_seconds)
        flooding(relays, "line", 200)
    return measure


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="measured span of a throughput run")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--window", type=int, default=10000, help="unacked messages in flight")
    p.add_argument("--repeat", type=int, default=3, help="throughput runs, alone and line alternately")
    p.add_argument("--rate", type=float, default=200.0, help="messages a second for latency")
    p.add_argument("--latency-seconds", type=float, default=5.0, help="length of the latency run")
    p.add_argument("--mesh", type=int, default=5, help="relays in the full mesh (0: skip)")
    args = p.parse_args(argv)
    emit("machine", when="start", **machine())
    line = [(i, i + 1) for i in range(2)]
    alone = Relays(1, [])
    try:
        alone.wait_ready()
        run(3, line, "line", on_line(args, alone))
    finally:
        alone.stop()
    if args.mesh >= 2:
        mesh = [(a, b) for a in range(args.mesh) for b in range(a + 1, args.mesh)]
        run(args.mesh, mesh, "mesh", lambda relays: flooding(relays, "mesh", 200))
    emit("machine", when="end", **machine())


if __name__ == "__main__":
    main()

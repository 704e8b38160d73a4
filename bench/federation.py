"""Federation figures: messages/s across a line of 3 relays, added latency
per hop, and what flooding costs in link frames and dedup hits.

Starts real ``twistd relayd`` processes on loopback (keys pinned, rate
limits raised, the journal as shipped: fsync = batch).

* throughput: one sender on relay1 keeps ``--window`` messages unacked;
  a receiver on relay3 (two hops away) counts them: messages/s end to end.
* latency: one message every 1/``--rate`` s carrying ``monotonic_ns``;
  receivers on relay1 (0 hops), relay2 (1) and relay3 (2) take p50/p99.
  The added latency per hop is (p50 at 2 hops - p50 at 0 hops) / 2.
* flooding: from each relay's ``/stats`` after a run, link frames sent and
  dedup hits per message, for the line of 3 and a full mesh of ``--mesh``.

    python -m bench.federation [--messages 5000] [--rate 200] [--seconds 5] [--mesh 5]
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

from bench.report import emit, machine
from bench.server import HOST, free_port

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


def throughput(relays, count, window):
    sender = Client(relays.ports[0]["tcp"], "sender")
    receiver = Client(relays.ports[-1]["tcp"], "receiver")
    start = time.monotonic()
    for k in range(count):
        sender.wait(lambda: k - sender.acks < window, 30)
        sender.send(f"t{k}")
    receiver.wait(lambda: len(receiver.received) >= count, 60)
    elapsed = time.monotonic() - start
    got = len(receiver.received)
    sender.close()
    receiver.close()
    emit("federation_throughput", relays=len(relays.names), hops=len(relays.names) - 1,
         messages=count, received=got, seconds=elapsed, msgs_per_s=got / elapsed)


def latency(relays, rate, seconds):
    sender = Client(relays.ports[0]["tcp"], "pacer")
    receivers = [Client(p["tcp"], f"watch{i}") for i, p in enumerate(relays.ports)]
    count = int(rate * seconds)
    start = time.monotonic()
    for k in range(count):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sender.send(str(time.monotonic_ns()))
    for r in receivers:
        r.wait(lambda r=r: len(r.received) >= count, 30)
    p50s = []
    for hops, r in enumerate(receivers):
        samples = sorted((now - int(body)) / 1e6 for now, body in r.received[count // 10:])
        p50 = statistics.median(samples)
        p50s.append(p50)
        emit("federation_latency", hops=hops, rate=int(rate), samples=len(samples),
             p50_ms=p50, p99_ms=samples[int(len(samples) * 0.99) - 1])
        r.close()
    sender.close()
    hops = len(receivers) - 1
    emit("federation_latency", added_per_hop_p50_ms=(p50s[-1] - p50s[0]) / hops)


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=5000, help="messages for the throughput run")
    p.add_argument("--window", type=int, default=200, help="unacked messages in flight")
    p.add_argument("--rate", type=float, default=200.0, help="messages a second for latency")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the latency run")
    p.add_argument("--mesh", type=int, default=5, help="relays in the full mesh (0: skip)")
    args = p.parse_args(argv)
    emit("machine", when="start", **machine())
    line = [(i, i + 1) for i in range(2)]

    def on_line(relays):
        throughput(relays, args.messages, args.window)
        latency(relays, args.rate, args.seconds)
        flooding(relays, "line", 200)
    run(3, line, "line", on_line)
    if args.mesh >= 2:
        mesh = [(a, b) for a in range(args.mesh) for b in range(a + 1, args.mesh)]
        run(args.mesh, mesh, "mesh", lambda relays: flooding(relays, "mesh", 200))
    emit("machine", when="end", **machine())


if __name__ == "__main__":
    main()

"""Cluster mode: the engine spike, and a 2-node cluster against 1 process.

    python -m bench.cluster engines [--count 2000] [--window 100]
    python -m bench.cluster load [--messages 2000] [--pairs 1000] [--repeat 2]
    python -m bench.cluster connections [--count 25000] [--repeat 2]

``load`` runs, in one go, one relayd process and a cluster of two relayd
nodes on a three-node NATS JetStream engine (all twistd / nats-server
processes on loopback), and for each:
- broadcast: one sender, 100 receivers in a room (half on each node), the
  sender keeping ``--window`` messages unacked; msgs/s until every receiver
  has every message;
- pairs: ``--pairs`` senders each sending ``--per-pair`` messages to its own
  receiver on the *other* node (every message crosses nodes);
with the CPU seconds per message of the relayd processes and of the engine.
Every loop is bounded by its count and by ``--seconds``.

``connections`` opens idle client connections (each says ``hello`` and gets
its ``welcome``) to one relayd process, then to each of two cluster nodes,
until the relay turns them away or ``--count`` per relay is reached, and
reports how many were held at once and each relay's memory.  Clients run in
helper processes (``hold``) of ``--per-client`` connections at most, so that
their own descriptor limit is not what is measured.

The engine spike:

Replicated writes, each acknowledged once a quorum holds it:
- NATS JetStream: an R3 stream on a three-node nats-server cluster, nats-py
  ``js.publish`` (the PubAck comes after the quorum wrote it);
- Redis 7: a primary with one replica, txredisapi ``XADD`` then ``WAIT 1``.
Reports publish->ack latency (one write at a time: p50, p99) and writes/s
with ``--window`` writes in flight.  Every loop is bounded by ``--count``
and by ``--seconds``.
"""
import argparse
import asyncio
import json
import tempfile
import time

from bench.ports import free_port

PAYLOAD = b'{"from":"alice","to":"bob","body":"' + b"x" * 64 + b'"}'


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def bounded(count, deadline):
    """``range(count)``, cut short at ``deadline`` (``time.monotonic()``)."""
    for i in range(count):
        if time.monotonic() > deadline:
            return
        yield i


def summary(latencies, throughput_count, throughput_seconds):
    return {"p50_ms": round(percentile(latencies, 0.5) * 1000, 3),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
            "writes": len(latencies),
            "per_s": round(throughput_count / throughput_seconds)}


async def add_stream(js, deadline):
    """The spike's stream, once the cluster has elected its JetStream meta
    leader (until then requests time out or answer "unavailable")."""
    from nats.errors import Error
    while True:
        try:
            return await js.add_stream(name="SPIKE", subjects=["spike.>"], num_replicas=3)
        except Error:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def nats_run(urls, count, window, seconds):
    import nats
    client = await nats.connect(servers=urls)
    js = client.jetstream()
    await add_stream(js, time.monotonic() + 60)
    latencies = []
    deadline = time.monotonic() + seconds
    for _ in bounded(count, deadline):
        started = time.perf_counter()
        await js.publish("spike.one", PAYLOAD)
        latencies.append(time.perf_counter() - started)
    done, started = 0, time.perf_counter()
    while done < count and time.monotonic() < deadline + seconds:
        await asyncio.gather(*(js.publish("spike.many", PAYLOAD) for _ in range(window)))
        done += window
    elapsed = time.perf_counter() - started
    await client.close()
    return summary(latencies, done, elapsed)


def redis_run(port, count, window, seconds):
    """Deferred[summary], on the running reactor."""
    from twisted.internet import defer
    import txredisapi

    @defer.inlineCallbacks
    def main():
        conn = yield txredisapi.Connection("127.0.0.1", port, reconnect=False)
        for _ in range(100):            # the replica's first sync, at most 10 s
            if (yield conn.execute_command("WAIT", 1, 100)) == 1:
                break
        latencies = []
        deadline = time.monotonic() + seconds
        for _ in bounded(count, deadline):
            started = time.perf_counter()
            yield conn.execute_command("XADD", "spike", "*", "m", PAYLOAD)
            replicas = yield conn.execute_command("WAIT", 1, 1000)
            assert replicas == 1, replicas
            latencies.append(time.perf_counter() - started)
        done, started = 0, time.perf_counter()
        while done < count and time.monotonic() < deadline + seconds:
            writes = [conn.execute_command("XADD", "spike2", "*", "m", PAYLOAD)
                      for _ in range(window)]
            writes.append(conn.execute_command("WAIT", 1, 1000))
            yield defer.gatherResults(writes)
            done += window
        result = summary(latencies, done, time.perf_counter() - started)
        yield conn.disconnect()
        return result

    return main()


def engines(args):
    from tests.engine import NatsCluster, RedisPair
    workdir = tempfile.mkdtemp(prefix="relayd-bench-cluster-")
    out = {}
    nats_cluster = NatsCluster(workdir + "/nats").start()
    try:
        out["nats_jetstream_r3"] = asyncio.run(
            nats_run(nats_cluster.urls, args.count, args.window, args.seconds))
    finally:
        nats_cluster.stop()
    redis = RedisPair(workdir + "/redis").start()

    def report(result):
        from bench.report import emit
        out["redis_replica_wait"] = result
        for engine, figures in out.items():
            emit("cluster_engine", engine=engine, **figures)

    def run(reactor):
        d = redis_run(redis.ports[0], args.count, args.window, args.seconds)
        return d.addCallback(report).addBoth(lambda result: redis.stop() or result)

    from twisted.internet import task
    task.react(run)


RELAY_INI = """\
[relay]
id = bench
data_dir = {data_dir}
[tcp]
listen = tcp:{port}:interface=127.0.0.1
max_connections = 20000
max_connections_per_ip = 20000
[ratelimit]
messages = 1000000000
{cluster}"""
CLUSTER_INI = """\
[cluster]
engine = {urls}
node = {node}
"""


class Relay:
    """One twistd relayd process."""

    def __init__(self, workdir, cluster=None):
        import os
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.port = free_port()
        self.config = os.path.join(workdir, "relay.ini")
        self.logfile = os.path.join(workdir, "relayd.log")
        with open(self.config, "w") as f:
            f.write(RELAY_INI.format(data_dir=os.path.join(workdir, "var"), port=self.port,
                                     cluster=cluster or ""))

    def start(self, ready, timeout=60.0):
        import os
        import subprocess
        from tests.daemon import REPO, TWISTD, wait_for_port
        self.process = subprocess.Popen(
            TWISTD + ["-n", "--pidfile=", "--logfile", self.logfile, "relayd", "--config",
                      self.config], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=REPO))
        if not wait_for_port(self.port, timeout, process=self.process):
            raise RuntimeError("relayd did not start: " + self.log())
        deadline = time.monotonic() + timeout
        while ready not in self.log():
            if time.monotonic() > deadline:
                raise RuntimeError("relayd not ready: " + self.log()[-2000:])
            time.sleep(0.1)
        return self

    def log(self):
        with open(self.logfile, errors="replace") as f:
            return f.read()

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


class Conn:
    """A non-blocking JSON-lines client counting what it reads."""

    def __init__(self, port, peer_id, room=None):
        import socket
        self.peer_id = peer_id
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self._request({"type": "hello", "id": peer_id})
        self._expect("welcome")
        if room is not None:
            self._request({"type": "join", "room": room})
            self._expect("joined")
        self.sock.setblocking(False)
        self.buffer = b""
        self.messages = 0
        self.acks = 0
        self.errors = 0
        self.out = b""

    def _request(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def _expect(self, kind):
        reply = json.loads(self.file.readline())
        if reply.get("type") != kind:
            raise RuntimeError(f"{self.peer_id}: {reply}")

    def queue(self, obj):
        self.out += json.dumps(obj).encode() + b"\n"

    def flush(self):
        if self.out:
            try:
                sent = self.sock.send(self.out)
            except BlockingIOError:
                return
            self.out = self.out[sent:]

    def read(self):
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if b'"type": "message"' in line:
                self.messages += 1
            elif b'"type": "ack"' in line:
                self.acks += 1
            elif b'"error"' in line:
                self.errors += 1

    def close(self):
        self.file.close()
        self.sock.close()


def drive(senders, receivers, per_sender, window, expected_each, seconds):
    """Send ``per_sender`` messages from each sender (``(conn, target)``,
    ``window`` unacked at most) until every receiver has ``expected_each``
    messages; the seconds that took, or None past ``seconds``."""
    import selectors
    sel = selectors.DefaultSelector()
    conns = {c.sock.fileno(): c for c, _ in senders} | {c.sock.fileno(): c for c in receivers}
    for fd, conn in conns.items():
        sel.register(fd, selectors.EVENT_READ, conn)
    sent = {id(c): 0 for c, _ in senders}
    started = time.perf_counter()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for conn, target in senders:
                while sent[id(conn)] < per_sender and sent[id(conn)] - conn.acks < window:
                    conn.queue(dict(target, type="send",
                                    body="%020d" % sent[id(conn)] + "." * 44))
                    sent[id(conn)] += 1
                conn.flush()
            for key, _ in sel.select(0.05):
                key.data.read()
            if all(r.messages >= expected_each for r in receivers):
                return time.perf_counter() - started
        return None
    finally:
        sel.close()


def cpu(processes):
    from bench.procstat import cpu_seconds
    return sum(cpu_seconds(p.pid) for p in processes)


def run_scenarios(name, ports, relay_pids, engine_pids, args):
    """Both scenarios against relayd ``ports`` (clients spread over them)."""
    from bench.report import emit
    results = {}
    n = len(ports)
    # broadcast: 1 sender -> 100 receivers in a room
    receivers = [Conn(ports[i % n], "%s-r%d" % (name, i), room="bench") for i in range(100)]
    sender = Conn(ports[0], name + "-s")
    time.sleep(1.0)                     # room subscriptions and heartbeats settle
    cpu0, engine0 = cpu(relay_pids), cpu(engine_pids)
    elapsed = drive([(sender, {"room": "bench"})], receivers, args.messages, args.window,
                    args.messages, args.seconds)
    relay_cpu, engine_cpu = cpu(relay_pids) - cpu0, cpu(engine_pids) - engine0
    for conn in receivers + [sender]:
        conn.close()
    if elapsed is not None:
        results["broadcast"] = args.messages / elapsed
        emit("cluster_broadcast", system=name, nodes=n, messages=args.messages, receivers=100,
             msgs_per_s=results["broadcast"], deliveries_per_s=results["broadcast"] * 100,
             relay_cpu_ms_per_msg=relay_cpu * 1000 / args.messages,
             engine_cpu_ms_per_msg=engine_cpu * 1000 / args.messages,
             errors=sender.errors)
    else:
        emit("cluster_broadcast", system=name, nodes=n, result="timeout")
    # pairs: sender i on one node -> receiver i on the other
    pairs = args.pairs
    receivers = [Conn(ports[(i + 1) % n], "%s-pr%d" % (name, i)) for i in range(pairs)]
    senders = [(Conn(ports[i % n], "%s-ps%d" % (name, i)), {"to": "%s-pr%d" % (name, i)})
               for i in range(pairs)]
    time.sleep(1.0)
    cpu0, engine0 = cpu(relay_pids), cpu(engine_pids)
    elapsed = drive(senders, receivers, args.per_pair, args.per_pair, args.per_pair,
                    args.seconds)
    relay_cpu, engine_cpu = cpu(relay_pids) - cpu0, cpu(engine_pids) - engine0
    total = pairs * args.per_pair
    for conn in receivers + [c for c, _ in senders]:
        conn.close()
    if elapsed is not None:
        results["pairs"] = total / elapsed
        emit("cluster_pairs", system=name, nodes=n, pairs=pairs, messages=total,
             msgs_per_s=results["pairs"], relay_cpu_ms_per_msg=relay_cpu * 1000 / total,
             engine_cpu_ms_per_msg=engine_cpu * 1000 / total,
             errors=sum(c.errors for c, _ in senders))
    else:
        emit("cluster_pairs", system=name, nodes=n, result="timeout")
    return results


def hold(args):
    """A helper process: hold up to ``--count`` connections to ``--port``; print
    ``held=N`` once no more can be made, then keep them until stdin closes."""
    import socket
    import sys
    from bench.procstat import raise_fd_limit
    raise_fd_limit()
    conns, failures, why = [], 0, "count"
    while len(conns) < args.count:
        peer_id = "%s%d" % (args.prefix, len(conns))
        try:
            sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
        except OSError as e:
            why = "client: " + (e.strerror or str(e))
            break
        try:
            sock.sendall(json.dumps({"type": "hello", "id": peer_id}).encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
            welcomed = b'"welcome"' in reply
        except OSError:
            welcomed = False
        if welcomed:
            conns.append(sock)
            failures = 0
            continue
        sock.close()
        failures += 1
        if failures == 3:
            why = "refused"
            break
    print("held=%d why=%s" % (len(conns), why.replace(" ", "_")), flush=True)
    sys.stdin.read()


def hold_all(ports, count, per_client):
    """Connections held to ``ports`` at once, ``count`` asked per port, by
    helper processes: ``(held, [why each stopped], helpers)``; the helpers
    keep them open until ``release``."""
    import subprocess
    import sys
    from tests.daemon import REPO
    helpers = []
    for i, port in enumerate(ports):
        for j in range(0, count, per_client):
            helpers.append(subprocess.Popen(
                [sys.executable, "-m", "bench.cluster", "hold", "--port", str(port),
                 "--count", str(min(per_client, count - j)), "--prefix", "c%d-%d-" % (i, j)],
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE))
    results = [dict(pair.split("=") for pair in h.stdout.readline().decode().split())
               for h in helpers]
    return sum(int(r.get("held", 0)) for r in results), [r.get("why") for r in results], helpers


def release(helpers):
    for helper in helpers:
        helper.stdin.close()
        helper.wait(60)


def one_then_two(prefix, run, measure):
    """``measure(name, relays, engine_processes)`` on one relayd process, then
    on two cluster nodes on a fresh three-node engine: both results."""
    from tests.engine import NatsCluster
    workdir = tempfile.mkdtemp(prefix=prefix)
    single = Relay(workdir + "/single").start("SIGTERM stops")
    try:
        one = measure("single%d" % run, [single], [])
    finally:
        single.stop()
    engine = NatsCluster(workdir + "/nats").start()
    nodes = []
    try:
        urls = ", ".join(engine.urls)
        for i in range(2):
            nodes.append(Relay(workdir + "/node%d" % i,
                               CLUSTER_INI.format(urls=urls, node="n%d" % i)))
        for node in nodes:
            node.start("accepting messages")
        two = measure("cluster%d" % run, nodes, engine.processes)
    finally:
        for node in nodes:
            node.stop()
        engine.stop()
    return one, two


def connections(args):
    """Connections one process holds against two cluster nodes."""
    from bench.procstat import rss_kib
    from bench.report import emit, machine

    def held(name, relays, _):
        count, why, helpers = hold_all([relay.port for relay in relays], args.count,
                                       args.per_client)
        emit("cluster_connections", system=name, nodes=len(relays), held=count,
             why=",".join(sorted(set(why))),
             relay_rss_kib=max(rss_kib(relay.process.pid) for relay in relays))
        release(helpers)
        return count

    emit("machine", **machine())
    for run in range(args.repeat):
        one, two = one_then_two("relayd-bench-conns-", run, held)
        emit("cluster_connections_ratio", run=run, two_nodes_over_one=two / one if one else 0.0)
    emit("machine", **machine())


def load(args):
    from bench.procstat import raise_fd_limit
    from bench.report import emit, machine
    raise_fd_limit()
    emit("machine", **machine())
    for run in range(args.repeat):
        one, two = one_then_two(
            "relayd-bench-cluster-", run, lambda name, relays, engine: run_scenarios(
                name, [relay.port for relay in relays], [relay.process for relay in relays],
                engine, args))
        for scenario in ("broadcast", "pairs"):
            if scenario in one and scenario in two:
                emit("cluster_ratio", scenario=scenario, run=run,
                     two_nodes_over_one=two[scenario] / one[scenario])
    emit("machine", **machine())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    spike = sub.add_parser("engines", help="replicated write latency and rate, NATS vs Redis")
    spike.add_argument("--count", type=int, default=2000)
    spike.add_argument("--window", type=int, default=100)
    spike.add_argument("--seconds", type=float, default=20.0)
    bench = sub.add_parser("load", help="2 relayd nodes on the engine against 1 process")
    bench.add_argument("--messages", type=int, default=2000, help="broadcast messages")
    bench.add_argument("--window", type=int, default=100, help="broadcast messages unacked")
    bench.add_argument("--pairs", type=int, default=1000)
    bench.add_argument("--per-pair", type=int, default=5)
    bench.add_argument("--seconds", type=float, default=120.0)
    bench.add_argument("--repeat", type=int, default=1)
    conns = sub.add_parser("connections", help="connections held by 2 nodes against 1 process")
    conns.add_argument("--count", type=int, default=25000, help="connections tried per relay")
    conns.add_argument("--per-client", type=int, default=12500,
                       help="connections per helper process")
    conns.add_argument("--repeat", type=int, default=1)
    helper = sub.add_parser("hold", help=argparse.SUPPRESS)
    helper.add_argument("--port", type=int, required=True)
    helper.add_argument("--count", type=int, required=True)
    helper.add_argument("--prefix", default="c")
    args = parser.parse_args(argv)
    {"engines": engines, "load": load, "connections": connections, "hold": hold}[args.mode](args)


if __name__ == "__main__":
    main()

"""Cluster engines: the spike that chose the engine, on loopback.

    python -m bench.cluster engines [--count 2000] [--window 100]

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

PAYLOAD = b'{"from":"alice","to":"bob","body":"' + b"x" * 64 + b'"}'


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def summary(latencies, throughput_count, throughput_seconds):
    return {"p50_ms": round(percentile(latencies, 0.5) * 1000, 3),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
            "writes": len(latencies),
            "per_s": round(throughput_count / throughput_seconds)}


async def nats_run(urls, count, window, seconds):
    import nats
    client = await nats.connect(servers=urls)
    js = client.jetstream()
    await js.add_stream(name="SPIKE", subjects=["spike.>"], num_replicas=3)
    latencies = []
    deadline = time.monotonic() + seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
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
        for _ in range(count):
            if time.monotonic() > deadline:
                break
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
        time.sleep(2.0)                   # the JetStream meta leader election
        out["nats_jetstream_r3"] = asyncio.run(
            nats_run(nats_cluster.urls, args.count, args.window, args.seconds))
    finally:
        nats_cluster.stop()
    redis = RedisPair(workdir + "/redis").start()

    def report(result):
        out["redis_replica_wait"] = result
        print(json.dumps(out, indent=2))

    def run(reactor):
        d = redis_run(redis.ports[0], args.count, args.window, args.seconds)
        return d.addCallback(report).addBoth(lambda result: redis.stop() or result)

    from twisted.internet import task
    task.react(run)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    spike = sub.add_parser("engines", help="replicated write latency and rate, NATS vs Redis")
    spike.add_argument("--count", type=int, default=2000)
    spike.add_argument("--window", type=int, default=100)
    spike.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.mode == "engines":
        engines(args)


if __name__ == "__main__":
    main()

"""Load generator of ``bench.libp2p_hub`` (run as its own process, on the
repo's own libp2p stack): prints one JSON line of figures.

    python -m bench.libp2p_hub_load gossip ADDR --pid PID --subscribers N --messages M
    python -m bench.libp2p_hub_load dht ADDR --connections C --seconds S

gossip: N subscribers (each its own peer id and connection) subscribe and
GRAFT; one publisher sends M signed messages, each in its own RPC, as fast
as the stream's flow control lets it; the clock stops when every subscriber
has every message.  dht: C peers that list the DHT protocol (so they fill
the server's routing table) keep ``--depth`` requests in flight on each of
their streams, FIND_NODE and GET_PROVIDERS alternately.
"""
import argparse
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, task

from relayd.libp2p import protobuf, varint
from relayd.libp2p.gossipsub import messages as gm
from relayd.libp2p.gossipsub.streams import PROTOCOLS as MESHSUB
from relayd.libp2p.host import Host
from relayd.libp2p.kad import messages as km
from relayd.libp2p.kad.server import PROTOCOL_ID as KAD, rendezvous_key
from relayd.libp2p.peerid import KeyPair
from relayd.libp2p.readers import PrefixedMessages
from relayd.libp2p.yamux import StreamHandler

from bench.procstat import cpu_seconds, own_cpu_seconds, rss_kib


def hub_seconds(args):
    return cpu_seconds(args.pid) if args.pid else 0.0


def new_host(reactor):
    return Host(reactor, KeyPair(Ed25519PrivateKey.generate()))


class Counter(PrefixedMessages):
    """The hub's stream to a subscriber: counts the messages in its RPCs."""

    limit = 1 << 24

    def __init__(self, subscriber):
        self.subscriber = subscriber

    def message_received(self, rpc):
        self.subscriber.got(len(protobuf.decode(rpc).get(2, ())))


class Sender(StreamHandler):
    def __init__(self, first):
        self.first = first
        self.opened = defer.Deferred()

    def stream_opened(self, stream):
        self.stream = stream
        stream.write(varint.prefixed(self.first.encode()))
        self.opened.callback(stream)


class Subscriber:
    def __init__(self, expect):
        self.count = 0
        self.expect = expect
        self.done = defer.Deferred()

    def got(self, n):
        self.count += n
        if self.count >= self.expect and not self.done.called:
            self.done.callback(None)


@defer.inlineCallbacks
def gossip(reactor, args):
    topic = args.topic
    rss_before = rss_kib(args.pid) if args.pid else 0
    subscribers = []
    for _ in range(args.subscribers):
        host = new_host(reactor)
        sub = Subscriber(1 + args.messages)
        host.handlers[MESHSUB[0]] = lambda conn, sub=sub: Counter(sub)
        conn = yield host.dial(args.addr)
        sender = Sender(gm.RPC(subscriptions=[(True, topic)], graft=[topic]))
        conn.open_protocol(MESHSUB[0], sender)
        yield sender.opened
        subscribers.append(sub)
    yield task.deferLater(reactor, 2.0)         # the hub's heartbeat sees everyone
    rss_subscribed = rss_kib(args.pid) if args.pid else 0
    publisher = new_host(reactor)
    conn = yield publisher.dial(args.addr)
    body = os.urandom(args.size // 2).hex().encode()
    msgs = [gm.sign(publisher.keypair, topic, body, n.to_bytes(8, "big"))
            for n in range(args.messages + 1)]
    sender = Sender(gm.RPC(publish=[msgs[0]]))             # a first message to warm up
    conn.open_protocol(MESHSUB[0], sender)
    stream = yield sender.opened
    deadline = reactor.seconds() + args.timeout
    while any(s.count < 1 for s in subscribers) and reactor.seconds() < deadline:
        yield task.deferLater(reactor, 0.05)
    started, cpu, hub_cpu = reactor.seconds(), own_cpu_seconds(), hub_seconds(args)
    stream.write(b"".join(varint.prefixed(gm.RPC(publish=[m]).encode()) for m in msgs[1:]))
    all_done = defer.DeferredList([s.done for s in subscribers])
    all_done.addTimeout(args.timeout, reactor)
    try:
        yield all_done
    except defer.TimeoutError:
        pass
    seconds = reactor.seconds() - started
    received = sum(max(s.count - 1, 0) for s in subscribers)
    return {"subscribers": args.subscribers, "messages": args.messages, "size": args.size,
            "seconds": seconds, "deliveries": received,
            "expected": args.messages * args.subscribers,
            "msgs_per_s": args.messages / seconds if received == args.messages * args.subscribers
            else 0.0,
            "deliveries_per_s": received / seconds,
            "loadgen_cpu_pct": (own_cpu_seconds() - cpu) / seconds * 100,
            "hub_cpu_pct": (hub_seconds(args) - hub_cpu) / seconds * 100,
            "rss_before_kib": rss_before, "rss_subscribed_kib": rss_subscribed}


class KadServerStub(PrefixedMessages):
    """Answers the hub's kad requests (e.g. js's PING of a new contact) with an
    empty reply of the same type, so that the hub takes us for a DHT server."""

    limit = 1 << 16

    def __init__(self, connection):
        pass

    def message_received(self, request):
        msg = km.decode(request)
        self.stream.write(varint.prefixed(km.encode(km.KadMessage(msg.type, msg.key))))


class KadPipe(StreamHandler):
    """Keeps ``depth`` requests in flight on one stream until ``state["stop"]``."""

    def __init__(self, requests, depth, state):
        self.requests = requests
        self.depth = depth
        self.state = state
        self.n = 0
        self.buf = b""

    def _next(self):
        self.n += 1
        return varint.prefixed(self.requests[self.n % len(self.requests)])

    def stream_opened(self, stream):
        self.stream = stream
        stream.write(b"".join(self._next() for _ in range(self.depth)))

    def data_received(self, data):
        self.buf += data
        out = []
        while True:
            got = varint.split_prefixed(self.buf, 1 << 20)
            if got is None:
                break
            _, self.buf = got
            self.state["replies"] += 1
            if not self.state["stop"]:
                out.append(self._next())
        if out:
            self.stream.write(b"".join(out))


@defer.inlineCallbacks
def dht(reactor, args):
    conns = []
    for _ in range(args.connections):
        host = new_host(reactor)
        host.handlers[KAD] = KadServerStub
        host.listen_addrs.append("/ip4/127.0.0.1/tcp/1")
        conns.append((yield host.dial(args.addr)))
    key = rendezvous_key("/bench/provided")
    provide = km.encode(km.KadMessage(km.ADD_PROVIDER, key, providers=[
        (conns[0].factory.peer_id, ["/ip4/127.0.0.1/tcp/1"])]))
    conns[0].open_protocol(KAD, KadPipe([provide], 1, {"replies": 0, "stop": True}))
    yield task.deferLater(reactor, 2.0)         # identify done: the table is full
    requests = [km.encode(km.KadMessage(km.FIND_NODE, os.urandom(38))) for _ in range(50)]
    requests += [km.encode(km.KadMessage(km.GET_PROVIDERS, key))] * 50
    state = {"replies": 0, "stop": False}
    started, cpu, hub_cpu = reactor.seconds(), own_cpu_seconds(), hub_seconds(args)
    for conn in conns:
        conn.open_protocol(KAD, KadPipe(requests, args.depth, state))
    yield task.deferLater(reactor, args.seconds)
    state["stop"] = True
    seconds = reactor.seconds() - started
    return {"connections": args.connections, "depth": args.depth, "seconds": seconds,
            "replies": state["replies"], "lookups_per_s": state["replies"] / seconds,
            "loadgen_cpu_pct": (own_cpu_seconds() - cpu) / seconds * 100,
            "hub_cpu_pct": (hub_seconds(args) - hub_cpu) / seconds * 100}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="bench.libp2p_hub_load")
    parser.add_argument("mode", choices=("gossip", "dht"))
    parser.add_argument("addr")
    parser.add_argument("--pid", type=int, default=0, help="the hub's pid (memory figures)")
    parser.add_argument("--topic", default="bench")
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args(argv)

    @defer.inlineCallbacks
    def run(reactor):
        result = yield (gossip if args.mode == "gossip" else dht)(reactor, args)
        print(json.dumps(result), flush=True)
    task.react(run)


if __name__ == "__main__":
    main(sys.argv[1:])

"""``relay-chat p2p``: relay-chat as a libp2p chat peer (seeds 003 and 004).

- ``genkey FILE``: a libp2p identity in seed 003's format (base64 of the
  protobuf private key, ``CAESQ...``); prints the peer id.
- ``listen``: take ``/private-chat/1.0.0`` messages, printed ``<peer>: <text>``;
  with ``--relay`` also through a reservation on the relay, with
  ``--bootstrap`` advertised in the DHT.
- ``dht``: the peers that advertise the rendezvous (``FindPeers``).
- ``find PEER``: a peer's addresses from the DHT.
- ``con PEER``: connect, directly first, then through ``--relay``'s circuit;
  says which, and what the peer supports.
- ``ping ADDR|PEER``: libp2p ping round trips.
- ``send ADDR|PEER TEXT``: one chat message as seed 003 sends it.
- ``room NAME``: seed 004's GossipSub chat through a relay (``"<peer id>: <text>"``).
- ``mdns``: the peers announcing themselves on the local network (``listen --mdns``).
"""
import argparse
import base64
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, endpoints, error, task
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineReceiver

from relayd.client.render import clean
from relayd.libp2p import chat
from relayd.libp2p.gossipsub.router import GossipRouter, Params
from relayd.libp2p.gossipsub.streams import PROTOCOLS as MESHSUB, PubSub
from relayd.libp2p.host import Host, dial_circuit, ping_once, reserve, split_multiaddr
from relayd.libp2p.kad import client as kad
from relayd.libp2p.kad.server import PROTOCOL_ID as KAD_PROTOCOL, rendezvous_key
from relayd.libp2p import identify, mdns
from relayd.libp2p.peerbook import IdentifyRequest, PeerBook
from relayd.libp2p.peerid import PeerId, KeyPair

OK, USAGE, CANNOT_CONNECT, NOT_FOUND, TIMEOUT = 0, 1, 2, 3, 4
RENDEZVOUS = chat.PROTOCOL_ID       # seed 003 advertises its protocol id
RESERVATION_REFRESH = 20 * 60       # the relay's reservations last an hour
DIRECT_TIMEOUT = 3


class Failed(Exception):
    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


# --- identity files ----------------------------------------------------------------
def write_key(path):
    """Create ``path`` (0600, never overwritten) with a new key; the KeyPair."""
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    keypair = KeyPair(key)
    proto = b"\x08\x01\x12\x40" + raw + keypair.public_key[4:]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Failed(USAGE, f"{path} exists; refusing to overwrite it") from None
    except OSError as e:
        raise Failed(USAGE, f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(proto).decode() + "\n")
    return keypair


def read_key(path):
    """The KeyPair in a seed-003 identity file (Ed25519 data of 64 or 96 bytes)."""
    try:
        with open(path) as f:
            proto = base64.b64decode(f.read().strip(), validate=True)
    except OSError as e:
        raise Failed(USAGE, f"cannot read {path}: {e.strerror}") from None
    except ValueError:
        raise Failed(USAGE, f"{path} is not base64") from None
    if proto[:3] != b"\x08\x01\x12" or len(proto) < 5 or proto[4:] == b"" \
            or proto[3] not in (64, 96) or len(proto) != 4 + proto[3]:
        raise Failed(USAGE, f"{path} does not hold an Ed25519 libp2p private key")
    keypair = KeyPair(Ed25519PrivateKey.from_private_bytes(proto[4:36]))
    if proto[36:68] != keypair.public_key[4:]:
        raise Failed(USAGE, f"{path}: the public half does not match the private key")
    return keypair


def out(text):
    print(text, flush=True)


def endpoint_of(multiaddr):
    family, host, port, _ = split_multiaddr(multiaddr)
    kind = "tcp6" if family == "ip6" else "tcp"
    return f"{kind}:{port}:interface={host.replace(':', chr(92) + ':')}"


def without_peer(addr):
    return addr.split("/p2p/")[0]


# --- commands ------------------------------------------------------------------------
async def cmd_listen(reactor, host, args):
    received = defer.Deferred()
    count = [0]

    def show(peer, text):
        out(f"{peer}: {clean(text)}")
        count[0] += 1
        if args.count and count[0] >= args.count and not received.called:
            received.callback(OK)
    host.handlers[chat.PROTOCOL_ID] = lambda conn: chat.ChatReceiver(conn, show)
    addr = await host.listen(endpoints.serverFromString(reactor, endpoint_of(args.listen)))
    out(f"listening on {addr}")
    addrs = [without_peer(addr)]
    if args.relay:
        circuit = await reserve(host, args.relay)
        refresh = task.LoopingCall(reserve, host, args.relay)
        refresh.clock = reactor
        refresh.start(RESERVATION_REFRESH, now=False)
        received.addBoth(lambda result: (refresh.stop(), result)[1])
        out(f"reachable through the relay at {circuit}")
        addrs.append(without_peer(circuit))
    if args.mdns:
        full = [f"{a}/p2p/{host.peer_id}" for a in addrs if "/p2p-circuit" not in a]
        mdns.start(reactor, host.peer_id, lambda: full, lambda peer, addrs: None)
        out("announced on mDNS")
    if args.bootstrap:
        told = await kad.provide(host, args.bootstrap, rendezvous_key(args.rendezvous),
                                 addrs, args.kad_protocol)
        out(f"advertised {args.rendezvous} to {told} peers")
    return await received


async def cmd_dht(reactor, host, args):
    found = await kad.find_providers(host, args.bootstrap, rendezvous_key(args.rendezvous),
                                     args.kad_protocol)
    for peer_id, addrs in found.items():
        if peer_id != host.peer_id:
            out(json.dumps({"peer": str(peer_id), "addrs": addrs}) if args.json
                else " ".join([str(peer_id)] + addrs))
    return OK


async def cmd_mdns(reactor, host, args):
    found = {}
    mdns.start(reactor, host.peer_id, None, found.__setitem__)
    await task.deferLater(reactor, args.wait)
    for peer_id, addrs in found.items():
        out(" ".join([str(peer_id)] + addrs))
    return OK if found else NOT_FOUND


async def cmd_find(reactor, host, args):
    addrs = await kad.find_peer(host, args.bootstrap, args.peer, args.kad_protocol)
    if not addrs:
        raise Failed(NOT_FOUND, f"no address for {args.peer}")
    for addr in addrs:
        out(addr)
    return OK


async def _connect(host, args, target):
    """``(connection, how)``: a multiaddr is dialled; a peer id is dialled at
    the addresses the DHT has for it, then through ``--relay``'s circuit."""
    if target.startswith("/"):
        return await host.dial(target), f"directly via {without_peer(target)}"
    peer = PeerId.from_string(target)
    if not (args.bootstrap or args.relay):
        raise Failed(USAGE, "a peer id without an address needs --bootstrap or --relay")
    addrs = []
    if args.bootstrap:
        addrs = await kad.find_peer(host, args.bootstrap, peer, args.kad_protocol)
    for addr in (without_peer(a) for a in addrs if "/p2p-circuit" not in a):
        try:
            return await host.dial(f"{addr}/p2p/{peer}", DIRECT_TIMEOUT), f"directly via {addr}"
        except (ConnectionError, OSError, ValueError, error.ConnectError):
            continue
    if args.relay:
        return await dial_circuit(host, args.relay, peer), f"through the relay {args.relay}"
    raise Failed(NOT_FOUND, f"no address for {peer}" if not addrs
                 else f"{peer} cannot be reached directly; try --relay")


async def _dial(host, args, target):
    return (await _connect(host, args, target))[0]


async def cmd_con(reactor, host, args):
    connection, how = await _connect(host, args, args.addr)
    out(f"connected to {connection.remote_peer} {how}")
    answer = defer.Deferred()
    connection.open_protocol(identify.PROTOCOL_ID, IdentifyRequest(
        lambda info: answer.called or answer.callback(info)))
    info = await answer
    if info is not None:
        out("remote supports: " + ", ".join(clean(p) for p in info["protocols"]))
    return OK


async def cmd_ping(reactor, host, args):
    connection = await _dial(host, args, args.addr)
    for _ in range(args.count):
        rtt = await ping_once(connection, reactor)
        out(f"pong from {connection.remote_peer}: {rtt * 1000:.2f} ms")
    return OK


async def cmd_send(reactor, host, args):
    connection = await _dial(host, args, args.addr)
    await chat.send(connection, " ".join(args.text))
    return OK


class _Lines(LineReceiver):
    delimiter = b"\n"

    def __init__(self, say):
        self.say = say

    def lineReceived(self, line):
        self.say(line.decode("utf-8", "replace"))


async def cmd_room(reactor, host, args):
    router = GossipRouter(host.keypair, reactor, Params(heartbeat_interval=args.heartbeat))
    pubsub = PubSub(router)
    book = PeerBook()
    book.listeners.append(pubsub)
    host.observers.append(book)
    for protocol in MESHSUB:
        host.handlers[protocol] = pubsub.handler
    heartbeat = task.LoopingCall(router.heartbeat)
    heartbeat.clock = reactor
    heartbeat.start(args.heartbeat, now=False)
    done = defer.Deferred()
    heard = [0]

    def show(topic, msg, via):
        out(clean(msg.data.decode("utf-8", "replace")))
        heard[0] += 1
        if args.count and heard[0] >= args.count and not done.called:
            done.callback(OK)
    router.listeners.append(show)
    router.subscribe(args.name)
    relay = await host.dial(args.relay)
    while relay.remote_peer not in router.topics.get(args.name, ()):
        await task.deferLater(reactor, 0.05)

    def say(text):
        router.publish(args.name, f"{host.peer_id}: {text}".encode("utf-8"))
    for text in args.say:
        say(text)
    if not args.say:
        StandardIO(_Lines(say), reactor=reactor)
    elif not args.count:
        return OK
    return await done


COMMANDS = {"listen": cmd_listen, "dht": cmd_dht, "find": cmd_find, "con": cmd_con,
            "ping": cmd_ping, "send": cmd_send, "room": cmd_room, "mdns": cmd_mdns}


async def run(reactor, args):
    if args.p2p_command == "genkey":
        try:
            keypair = write_key(args.file)
        except Failed as e:
            _warn(str(e))
            raise SystemExit(e.code)
        out(str(keypair.peer_id))
        return
    code = OK
    host = None
    try:
        keypair = read_key(args.key) if args.key else KeyPair(Ed25519PrivateKey.generate())
        host = Host(reactor, keypair)
        work = defer.ensureDeferred(COMMANDS[args.p2p_command](reactor, host, args))
        if args.timeout:
            work.addTimeout(args.timeout, reactor)
        code = await work
    except Failed as e:
        _warn(str(e))
        code = e.code
    except defer.TimeoutError:
        _warn(f"timed out after {args.timeout:g}s")
        code = TIMEOUT
    except (ConnectionError, OSError, ValueError, error.ConnectError) as e:
        _warn(str(e) or type(e).__name__)
        code = CANNOT_CONNECT
    finally:
        if host is not None:
            await _close(reactor, host)
    if code:
        raise SystemExit(code)


async def _close(reactor, host):
    """Close every connection (pending writes go out first)."""
    conns = [c for cs in host.connections.values() for c in cs]
    for conn in conns:
        conn.close()
    if conns:
        await task.deferLater(reactor, 0.1)


def _warn(text):
    print(f"relay-chat p2p: {text}", file=sys.stderr, flush=True)


def _peer_id(text):
    try:
        return PeerId.from_string(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register_command(subparsers):
    """Add ``p2p`` and its subcommands to relay-chat."""
    p = subparsers.add_parser("p2p", help="chat as a libp2p peer (seed 003's /private-chat, "
                                          "seed 004's GossipSub rooms)",
                              description="relay-chat as a libp2p peer: seed 003's chat "
                                          "(one JSON string per /private-chat/1.0.0 stream, peers "
                                          "found through the DHT) and seed 004's GossipSub rooms, "
                                          "with relayd (or any libp2p node) as bootstrap and hub.")
    p.set_defaults(run=run, needs_reactor=True)
    sub = p.add_subparsers(dest="p2p_command", metavar="P2P_COMMAND", required=True)
    g = sub.add_parser("genkey", help="create a libp2p identity file and print its peer id")
    g.add_argument("file", metavar="FILE")

    def command(name, help, bootstrap=False, relay=False):
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--key", metavar="FILE", help="identity file (p2p genkey; seed 003's "
                                                     "PEER_ID format); a throwaway key if omitted")
        c.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 4)")
        c.add_argument("--bootstrap", metavar="MULTIADDR", required=bootstrap,
                       help="a DHT peer to start from, e.g. relayd's /ip4/.../tcp/4001/p2p/12D3KooW...")
        c.add_argument("--kad-protocol", default=KAD_PROTOCOL, metavar="ID",
                       help=f"the DHT's protocol id (default {KAD_PROTOCOL})")
        c.add_argument("--rendezvous", default=RENDEZVOUS, metavar="STRING",
                       help=f"the string peers advertise and look up (default {RENDEZVOUS})")
        if relay:
            c.add_argument("--relay", metavar="MULTIADDR",
                           help="a circuit relay (e.g. relayd) to use when direct fails")
        return c
    c = command("listen", "take chat messages; with --relay also through a reservation there, "
                          "with --bootstrap advertised in the DHT", relay=True)
    c.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0", metavar="MULTIADDR",
                   help="where to listen (default /ip4/127.0.0.1/tcp/0)")
    c.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    c.add_argument("--mdns", action="store_true",
                   help="announce ourselves on the local network (mDNS, _p2p._udp.local)")
    c = command("mdns", "print the peers announcing themselves on the local network")
    c.add_argument("--wait", type=float, default=3.0, metavar="S",
                   help="how long to listen for answers (default 3)")
    c = command("dht", "print the peers advertising the rendezvous", bootstrap=True)
    c.add_argument("--json", action="store_true", help="one JSON object per peer")
    c = command("find", "print a peer's addresses from the DHT", bootstrap=True)
    c.add_argument("peer", type=_peer_id, metavar="PEER")
    c = command("con", "connect to a peer (directly, else through --relay) and show what it "
                       "supports", relay=True)
    c.add_argument("addr", metavar="MULTIADDR|PEER", help="a multiaddr with /p2p/<id>, or a "
                                                          "peer id to look up (with --bootstrap)")
    c = command("ping", "libp2p ping round trips to a peer", relay=True)
    c.add_argument("addr", metavar="MULTIADDR|PEER", help="a multiaddr with /p2p/<id>, or a "
                                                          "peer id to look up (with --bootstrap)")
    c.add_argument("--count", type=int, default=3, metavar="N", help="round trips (default 3)")
    c = command("send", "send one chat message on /private-chat/1.0.0", relay=True)
    c.add_argument("addr", metavar="MULTIADDR|PEER", help="a multiaddr with /p2p/<id>, or a "
                                                          "peer id to look up (with --bootstrap)")
    c.add_argument("text", nargs="+", help="the message (words are joined by spaces)")
    c = command("room", "chat in a GossipSub room through a relay (seed 004)")
    c.add_argument("name", metavar="NAME", nargs="?", default="libp2p-chat",
                   help="the room (topic), default libp2p-chat")
    c.add_argument("--relay", required=True, metavar="MULTIADDR", help="the hub to dial")
    c.add_argument("--say", action="append", default=[], metavar="TEXT",
                   help="say TEXT instead of reading lines from stdin (repeatable)")
    c.add_argument("--count", type=int, metavar="N", help="exit after hearing N messages")
    c.add_argument("--heartbeat", type=float, default=1.0, metavar="S",
                   help="GossipSub heartbeat (default 1)")
    return p

"""``relay-chat peer``: end-to-end encrypted chat over UDP, direct when possible.

The client first proves to the relay that it receives at its address (it
echoes the cookie of a ``pong``: the relay then answers it in full, with no
byte budget), registers with the relay's UDP service (proving its Ed25519
key), asks it to ``connect`` it with the peer, and punches a hole by sending to
the peer's public endpoint while the peer does the same.  Once an encrypted
probe has gone both ways directly the path is ``direct``; until then, or if
it stops answering, frames go through the relay (``relay``/``relayed_packet``).
Every frame is end-to-end encrypted (``relayd.client.e2e``) on either path.
"""
import argparse
import base64
import ipaddress
import json
import os
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet import defer, task
from twisted.internet.error import InvalidAddressError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineReceiver

from relayd.client import keys
from relayd.client.console import restore_at_exit
from relayd.client.e2e import Channel, E2EError, fingerprint, json_object, unb64
from relayd.client.render import clean
from relayd.identity import Identity
from relayd.udp.packets import format_address
from relayd.udp.proof import signed_text

OK, USAGE, REFUSED, TIMEOUT = 0, 1, 3, 4
REGISTER_RETRY = 1.0
KEEPALIVE = 15.0           # as the seed's client: well inside the relay's 60 s
PUNCH_INTERVAL = 0.2
HELLO_INTERVAL = 1.0
DIRECT_CHECK = 5.0
DIRECT_DEAD = 15.0
REGISTER_PAD = 256         # big enough that the relay may answer before we hold a name
COOKIE_TRIES = 3           # cookie pings before registering without one (an older relay)


def parse_address(text):
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class PeerClient(DatagramProtocol):
    """One conversation with ``target`` through the relay at ``relay``.

    ``show(line)`` prints status and messages.  ``expected_key`` pins the
    peer's identity (raw Ed25519 public key); otherwise the key the relay
    vouches for (an authenticated registration) is required, and failing
    that the peer's key is shown as unverified.
    """

    def __init__(self, reactor, identity, name, target, relay, show,
                 expected_key=None, punch_time=4.0):
        self.reactor = reactor
        self.identity, self.name, self.target, self.relay = identity, name, target, relay
        self.show = show
        self.expected_key = expected_key
        self.punch_time = punch_time
        self.channel = Channel(identity, name, target)
        self.relay_key = None          # the peer key the relay vouches for
        self.peer_address = None       # the peer's public endpoint, from connect_peer
        self.path = None               # None, "relay" or ("direct", address)
        self.confirmed = False         # the peer has sent us a valid encrypted frame
        self.last_direct = None
        self.punch_until = None
        self.registered = defer.Deferred()
        self.path_ready = defer.Deferred()
        self.failed = defer.Deferred()
        self.on_text = None
        self.cookie = None             # the relay's address cookie, echoed in register
        self._cookie_tries = 0
        self._loops = []
        self._retry = None             # the pending connect retry, while the peer is away

    # --- life cycle ----------------------------------------------------------

    def startProtocol(self):
        self._every(REGISTER_RETRY, self._register_tick)
        self._every(KEEPALIVE, self._server({"type": "keepalive", "name": self.name}), now=False)
        self._every(HELLO_INTERVAL, self._hello_tick)
        self._every(PUNCH_INTERVAL, self._punch_tick)
        self._every(DIRECT_CHECK, self._direct_tick, now=False)

    def stopProtocol(self):
        for loop in self._loops:
            if loop.running:
                loop.stop()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

    def _every(self, interval, f, now=True):
        loop = task.LoopingCall(f)
        loop.clock = self.reactor
        self._loops.append(loop)
        loop.start(interval, now=now)

    # --- sending -------------------------------------------------------------

    def _write(self, packet, address):
        try:
            self.transport.write(json.dumps(packet).encode("utf-8"), address)
        except (OSError, InvalidAddressError):
            pass                       # unreachable (for now, or from this socket's family)

    def _server(self, packet):
        return lambda: self._write(packet, self.relay)

    def _register(self, challenge=None):
        packet = {"type": "register", "name": self.name, "key": base64.b64encode(
            self.identity.public_bytes).decode("ascii")}
        if self.cookie is not None:
            packet["cookie"] = self.cookie
        if challenge is None:
            if self.cookie is None:
                packet["pad"] = "x" * REGISTER_PAD
        else:
            packet["challenge"] = challenge
            packet["signature"] = base64.b64encode(
                self.identity.sign(signed_text(self.name, challenge))).decode("ascii")
        self._write(packet, self.relay)

    def _to_peer(self, frame, direct=None):
        """Send an end-to-end frame directly to ``direct`` or through the relay."""
        if direct is not None:
            self._write(frame, direct)
        else:
            self._write({"type": "relay", "target": self.target, "source": self.name,
                         "payload": json.dumps(frame)}, self.relay)

    def _current_direct(self):
        return self.path[1] if isinstance(self.path, tuple) else None

    def send_text(self, text):
        if not self.channel.established:
            self.show("*** not connected to the peer yet; message not sent")
            return
        self._to_peer(self.channel.seal({"k": "text", "body": text}), self._current_direct())

    # --- timers --------------------------------------------------------------

    def _register_tick(self):
        if self.registered.called:
            return
        if self.cookie is None and self._cookie_tries < COOKIE_TRIES:
            self._cookie_tries += 1
            self._write({"type": "ping", "cookie": "", "pad": "x" * REGISTER_PAD}, self.relay)
        else:
            self._register()

    def _hello_tick(self):
        if self.peer_address is not None and not self.confirmed:
            self._to_peer(self.channel.hello())

    def _punch_tick(self):
        if self.punch_until is None:
            return
        if self.reactor.seconds() > self.punch_until:
            self.punch_until = None
            if self.path is None and self.channel.established:
                self._set_path("relay")
            return
        self._to_peer(self.channel.hello(), self.peer_address)
        if self.channel.established:
            self._to_peer(self.channel.seal({"k": "probe"}), self.peer_address)

    def _direct_tick(self):
        direct = self._current_direct()
        if direct is None:
            return
        if self.reactor.seconds() - self.last_direct > DIRECT_DEAD:
            self._set_path("relay")
            self._write({"type": "connect", "target": self.target}, self.relay)
            return
        self._to_peer(self.channel.seal({"k": "probe"}), direct)

    def _set_path(self, path):
        if path == self.path:
            return
        self.path = path
        if path == "relay":
            self.show(f"*** path: relay via {format_address(self.relay)}")
        else:
            self.show(f"*** path: direct {format_address(path[1])}")
        if not self.path_ready.called:
            self.path_ready.callback(path)

    # --- receiving -----------------------------------------------------------

    def datagramReceived(self, data, address):
        packet = json_object(data)
        if packet is None:
            return
        if address[:2] == self.relay:
            self._from_relay(packet)
        elif self.peer_address is not None:
            self._frame(packet, address)

    def _from_relay(self, packet):
        kind = packet.get("type")
        if kind == "pong" and self.cookie is None and not self.registered.called:
            if isinstance(packet.get("cookie"), str):
                self.cookie = packet["cookie"]
            self._cookie_tries = COOKIE_TRIES       # a relay without cookies: register as is
            self._register()
        elif kind == "register_ack":
            if isinstance(packet.get("cookie"), str):
                self.cookie = packet["cookie"]      # ours had expired: echo the new one
            if packet.get("authenticated"):
                if not self.registered.called:
                    self.show(f"*** registered as {self.name} (key proven) at "
                              f"{packet.get('your_address')}")
                    self.registered.callback(packet.get("your_address"))
                    self._write({"type": "connect", "target": self.target}, self.relay)
            elif "challenge" in packet:
                self._register(packet["challenge"])
        elif kind == "error":
            self._relay_error(packet)
        elif kind == "connect_peer" and packet.get("peer_name") == self.target:
            self._connect_peer(packet)
        elif kind == "peer_joined" and packet.get("peer_name") == self.target:
            self._write({"type": "connect", "target": self.target}, self.relay)
        elif kind == "relayed_packet" and packet.get("from_peer") == self.target:
            frame = json_object(packet.get("payload"))
            if frame is not None:
                self._frame(frame, None)

    def _relay_error(self, packet):
        code = packet.get("code")
        if code == "name_taken" and "challenge" in packet:
            self._register(packet["challenge"])       # our key may move the name here
        elif code == "unknown_target":
            if self._retry is None or not self._retry.active():
                self._retry = self.reactor.callLater(
                    2.0, self._write, {"type": "connect", "target": self.target}, self.relay)
        elif code in ("name_taken", "auth_failed", "server_full") and not self.registered.called:
            self.failed.callback(f"the relay refused us: {code}")
        else:
            self.show(f"*** relay error: {clean(code)}")

    def _connect_peer(self, packet):
        vouched = packet.get("authenticated") and packet.get("key")
        try:
            host, port = parse_address(str(packet.get("address", "")))
            ip = ipaddress.ip_address(host)
            key = unb64(packet["key"]) if vouched else None
        except ValueError:             # E2EError included
            return
        if ip.version == 4 and ":" in self.relay[0]:
            host = f"::ffff:{ip}"      # an IPv4 peer seen from our dual-stack socket
        self.peer_address = (host, port)
        if vouched:
            if key != self.relay_key and self.channel.peer_id is not None and not self.expected_key:
                verdict = "now vouched for by the relay" if key == self.channel.peer_id else \
                    "NOT the key the relay saw it prove: do not trust this session"
                self.show(f"*** {self.target} is {fingerprint(self.channel.peer_id)} ({verdict})")
            self.relay_key = key
        self.punch_until = self.reactor.seconds() + self.punch_time
        self._hello_tick()

    def _frame(self, frame, direct):
        """An end-to-end frame from the relay (``direct`` None) or from ``direct``."""
        try:
            if frame.get("t") == "hs":
                self._hello(frame, direct)
            elif frame.get("t") == "msg" and frame.get("from") == self.target:
                self._message(self.channel.open(frame), direct)
        except E2EError as e:
            self.show(f"*** ignored a frame: {e}")

    def _hello(self, frame, direct):
        new = self.channel.accept_hello(frame, self.expected_key or self.relay_key)
        if new:
            how = ("pinned" if self.expected_key else
                   "vouched for by the relay" if self.relay_key else "UNVERIFIED")
            self.show(f"*** {self.target} is {fingerprint(self.channel.peer_id)} ({how})")
            self.confirmed = False
        if new or not self.confirmed:
            self._to_peer(self.channel.hello(), direct)
            self._to_peer(self.channel.seal({"k": "ack"}), direct)
        if self.punch_until is None and self.peer_address is not None and self.path is None:
            self._set_path("relay")

    def _message(self, obj, direct):
        self.confirmed = True
        kind = obj.get("k")
        if direct is not None:
            self.last_direct = self.reactor.seconds()
        if kind == "probe" and direct is not None:
            self._to_peer(self.channel.seal({"k": "probe_ack"}), direct)
        elif kind == "probe_ack" and direct is not None:
            self._set_path(("direct", direct))
        elif kind == "text":
            self.show(f"{clean(self.target)}: {clean(obj.get('body', ''))}")
            if self.on_text is not None:
                self.on_text()


class Console(LineReceiver):
    """Interactive input: a line is a message; ``/path`` and ``/quit``."""

    delimiter = b"\n"

    def __init__(self, client, done):
        self.client, self.done = client, done

    def lineReceived(self, line):
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text == "/quit":
            self.done(OK)
        elif text == "/path":
            self.client.show(f"*** path: {self.client.path or 'none yet'}")
        elif text:
            self.client.send_text(text)

    def connectionLost(self, reason):
        self.done(OK)


def load_identity(path, name):
    """The key in ``path`` (as ``relay-chat genkey`` writes it), or a throwaway one."""
    if path is None:
        return Identity(name, Ed25519PrivateKey.generate())
    return keys.load(path, name)


def parse_pin(text):
    """``--peer-key``: base64 raw public key -> bytes."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("not a 32-byte key")
    return raw


def _print(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def open_peer(reactor, identity, name, target, relay, show, bind=None, port=0, **options):
    """A started PeerClient for ``target`` through ``relay`` (``HOST:PORT``): (client, port).

    Raises ValueError for a bad ``relay``, and whatever resolving its host
    or listening raises.  ``options`` go to PeerClient.
    """
    relay_host, relay_port = parse_address(relay)
    try:
        relay_host = str(ipaddress.ip_address(relay_host))
    except ValueError:
        relay_host = await reactor.resolve(relay_host)
    interface = bind or ("::" if ":" in relay_host else "0.0.0.0")
    if interface == "::" and ":" not in relay_host:
        relay_host = "::ffff:" + relay_host
    client = PeerClient(reactor, identity, name, target, (relay_host, relay_port), show, **options)
    return client, reactor.listenUDP(port, client, interface=interface)


async def run(reactor, args):
    try:
        identity = load_identity(args.key, args.id)
        client, port = await open_peer(reactor, identity, args.id, args.to, args.relay, _print,
                                       bind=args.bind, port=args.port,
                                       expected_key=args.peer_key, punch_time=args.punch_time)
    except (keys.KeyFileError, ValueError) as e:
        _fail(USAGE, str(e))
    done = defer.Deferred()

    def finish(code):
        if not done.called:
            done.callback(code)

    client.failed.addCallback(lambda why: (_print(f"*** {why}"), finish(REFUSED)))
    if args.say or args.expect:
        received = [0]

        def maybe_done():
            if received[0] >= args.expect and client.path_ready.called:
                reactor.callLater(0.5, finish, OK)

        def count():
            received[0] += 1
            maybe_done()

        def say(_):
            for text in args.say:
                client.send_text(text)
            maybe_done()

        client.on_text = count
        client.path_ready.addCallback(say)
    else:
        restore_at_exit(reactor, (sys.stdin.fileno(), sys.stdout.fileno()))
        StandardIO(Console(client, finish), reactor=reactor)
    if args.timeout:
        reactor.callLater(args.timeout, finish, TIMEOUT)
    code = await done
    await port.stopListening()
    if code == TIMEOUT:
        _fail(TIMEOUT, "timed out")
    if code != OK:
        raise SystemExit(code)


def _fail(code, text):
    print(f"relay-chat: {text}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def register_command(subparsers):
    """Add ``peer`` to relay-chat's subcommands."""
    p = subparsers.add_parser(
        "peer", help="end-to-end encrypted chat over UDP: direct by hole punching, relay fallback",
        description="Register with the relay's UDP service, find PEER, punch a direct path "
                    "and fall back to the relay; every frame is end-to-end encrypted.")
    p.add_argument("--relay", default="127.0.0.1:8000", metavar="HOST:PORT",
                   help="the relay's UDP rendezvous address (default 127.0.0.1:8000)")
    p.add_argument("--id", default=argparse.SUPPRESS, help="your name at the relay")
    p.add_argument("--key", default=argparse.SUPPRESS, metavar="FILE",
                   help="Ed25519 identity file (relay-chat genkey); a throwaway key if omitted")
    p.add_argument("--to", required=True, metavar="PEER", help="the peer to talk to")
    p.add_argument("--peer-key", type=parse_pin, metavar="BASE64",
                   help="pin the peer's Ed25519 public key (as genkey prints it)")
    p.add_argument("--port", type=int, default=0, help="local UDP port (default: any)")
    p.add_argument("--bind", metavar="ADDR", help="local address (default 0.0.0.0, :: for IPv6)")
    p.add_argument("--punch-time", type=float, default=4.0, metavar="S",
                   help="how long to try a direct path before using the relay (default 4)")
    p.add_argument("--say", action="append", default=[], metavar="TEXT",
                   help="send TEXT once a path is up, instead of reading stdin (repeatable)")
    p.add_argument("--expect", type=int, default=0, metavar="N",
                   help="with --say: exit 0 after receiving N messages")
    p.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds (exit 4)")
    p.set_defaults(run=run, needs_reactor=True)
    return p


def main(argv=None):
    """``python -m relayd.client.udp_peer --id alice --to bob ...`` (same as relay-chat peer)."""
    parser = argparse.ArgumentParser(prog="relay-chat")
    register_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["peer"] + list(sys.argv[1:] if argv is None else argv))
    args.id = getattr(args, "id", None) or os.environ.get("USER", "anonymous")
    args.key = getattr(args, "key", None)
    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    main()

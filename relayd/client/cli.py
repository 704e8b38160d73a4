"""relay-chat: the command-line client of relayd.

Exit codes: 0 done, 1 usage or local error (bad option, key file), 2 cannot
connect to the relay, 3 refused by the relay (its error code is printed),
4 timed out.

Each subcommand is an argparse subparser whose ``run`` default is either
``async def run(reactor, args)`` (run under ``task.react``, raising
``SystemExit(code)`` to fail) or, for commands that need no network,
``def run(args)`` with ``needs_reactor=False``.  A module adds its own
subcommand with a ``register_command(subparsers)`` function listed in
``build_parser``.
"""
import argparse
import getpass
import json
import os
import sys

from twisted.internet import defer, endpoints, ssl, task
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
    textFileLogObserver)

from relayd.client import keys
from relayd.client import p2p, udp_peer
from relayd.client.console import Console, restore_at_exit, room_name
from relayd.client.protocol import ConnectionClosed, ProtocolViolation, ServerError
from relayd.client.render import clean, message_line, rooms_lines
from relayd.client.session import MessageTooLong, Session
from relayd.e2ee import commands as e2ee
from relayd.e2ee.layer import E2EEError

OK, USAGE, CANNOT_CONNECT, REFUSED, TIMEOUT = 0, 1, 2, 3, 4
DEFAULT_PORT = 55665
DEFAULT_UDP_PORT = 8000                 # [udp] listen of the shipped etc/relay.ini
DEFAULT_TIMEOUT = 30.0
DEFAULT_RELAY_ID = "relay1"             # [relay] id of the shipped etc/relay.ini


class Parser(argparse.ArgumentParser):
    """argparse with exit code 1 (not 2) for usage errors."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def warn(text):
    print(f"relay-chat: {text}", file=sys.stderr, flush=True)


def fail(code, text):
    warn(text)
    raise SystemExit(code)


class OutputClosed(Exception):
    """Whoever read our stdout has gone (``relay-chat listen | head -1``)."""


def out(text):
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so that the flush at exit stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise OutputClosed() from None


# -- connecting --------------------------------------------------------

def parse_server(value):
    """``HOST:PORT``, ``[v6]:PORT`` or ``HOST`` -> (host, port)."""
    host, port = value, DEFAULT_PORT
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            port = rest.lstrip(":")
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        port = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {value!r}") from None
    if not host or not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, port


def tls_options(host, args):
    """Client TLS options: --ca or the system trust, optional client certificate."""
    trust = None
    try:
        if args.ca:
            with open(args.ca, "rb") as f:
                trust = ssl.Certificate.loadPEM(f.read())
        client = None
        if args.cert:
            with open(args.cert, "rb") as f:
                pem = f.read()
            with open(args.client_key, "rb") as f:
                pem += b"\n" + f.read()
            client = ssl.PrivateCertificate.loadPEM(pem)
    except OSError as e:
        fail(USAGE, f"cannot read {e.filename}: {e.strerror}")
    except Exception as e:
        fail(USAGE, f"bad TLS certificate or key: {e}")
    return ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)


def make_endpoint(reactor, args):
    if args.endpoint:
        try:
            return endpoints.clientFromString(reactor, args.endpoint)
        except (ValueError, TypeError, KeyError) as e:
            fail(USAGE, f"bad --endpoint {args.endpoint!r}: {e}")
    host, port = args.server
    endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=args.connect_timeout)
    if args.tls:
        endpoint = endpoints.wrapClientTLS(tls_options(host, args), endpoint)
    return endpoint


def describe_server(args):
    return args.endpoint or "{}:{}".format(*args.server)


def open_session(reactor, args, on_message=None, on_status=None):
    """A started Session (not yet identified)."""
    signer = None
    if args.key:
        try:
            signer = keys.load(args.key, args.id)
        except keys.KeyFileError as e:
            fail(USAGE, str(e))
    # End-to-end warnings (a changed key, a refused message) show even with --quiet.
    layer = e2ee.make_layer(args, signer, on_status or warn)
    on_status = on_status if on_status is not None else status_printer(args)
    if layer is not None:
        on_message = layer.incoming(on_message)
    session = Session(reactor, make_endpoint(reactor, args), args.id, signer=signer,
                      relay_id=args.relay_id, handshake_timeout=args.connect_timeout,
                      on_message=on_message, on_status=on_status)
    session.e2ee = layer
    if layer is not None:
        layer.session = session
    session.start()
    # SIGTERM or Ctrl-C: close the connection, rather than have it lost (and "reconnecting").
    reactor.addSystemEventTrigger("before", "shutdown", session.stop)
    return session


async def connected(session, args):
    """Wait for the first identification; exit 2 or 3 if it fails."""
    try:
        await session.ready(fail_after=1)
    except Exception as e:
        await session.stop()
        if isinstance(e, (ServerError, ProtocolViolation)):
            fail(REFUSED, refusal_text(e, args))
        if isinstance(e, ConnectionClosed):
            e = f"connection closed ({e.error or e})"
        fail(CANNOT_CONNECT, f"cannot connect to {describe_server(args)}: {e}")
    return session


def refusal_text(error, args):
    text = f"refused by the relay: {error}"
    if getattr(error, "code", None) == "auth_failed":
        text += f" (the key was proved for relay id {args.relay_id!r}; is --relay-id right?)"
    return text


def end_on_refusal(session, done, args, report):
    """When the relay refuses the session later on: report it, then exit 3."""
    def refused(error):
        if not done.called:
            report(refusal_text(error, args))
            done.callback(REFUSED)
    session.on_fatal = refused


async def connect(reactor, args, on_message=None):
    return await connected(open_session(reactor, args, on_message), args)


def status_printer(args):
    return (lambda text: None) if args.quiet else warn


async def finish(session, code=OK):
    await session.stop()
    if code != OK:
        raise SystemExit(code)


async def answer(reactor, args, session, d, late="no answer within {:g}s"):
    """The result of ``d`` (a query or a send), or exit 1, 3 or 4."""
    if args.timeout:
        d.addTimeout(args.timeout, reactor)
    try:
        return await d
    except (defer.TimeoutError, MessageTooLong, ServerError, E2EEError) as e:
        await session.stop()
        if isinstance(e, defer.TimeoutError):
            fail(TIMEOUT, late.format(args.timeout))
        if isinstance(e, (MessageTooLong, E2EEError)):
            fail(USAGE, str(e))
        fail(REFUSED, refusal_text(e, args))


# -- commands ----------------------------------------------------------

def peer_opener(reactor, args, identity=None):
    """The console's ``open_peer(name, show)`` for ``/peer``, or None without a UDP relay.

    The UDP relay is ``--udp-relay``, by default the --server host on port
    DEFAULT_UDP_PORT; ``identity`` is --key's (None: a throwaway one).
    """
    relay = getattr(args, "udp_relay", None)
    if relay is None and not args.endpoint:
        host = args.server[0]
        relay = f"[{host}]:{DEFAULT_UDP_PORT}" if ":" in host else f"{host}:{DEFAULT_UDP_PORT}"
    if relay is None:
        return None
    identity = identity or udp_peer.load_identity(None, args.id)
    return lambda name, show: defer.ensureDeferred(
        udp_peer.open_peer(reactor, identity, args.id, name, relay, show))


async def cmd_chat(reactor, args):
    done = defer.Deferred()
    console = Console(None, done.callback)
    session = open_session(reactor, args, on_message=console.show_message,
                           on_status=console.status)
    console.session = e2ee.secure(session)
    console.open_peer = peer_opener(reactor, args, session.signer)
    restore_at_exit(reactor, (sys.stdin.fileno(), sys.stdout.fileno()))
    StandardIO(console, reactor=reactor)
    await connected(session, args)
    e2ee.publish(session)
    end_on_refusal(session, done, args, console.status)
    code = await done
    await finish(session, code)


async def cmd_send(reactor, args):
    session = await connect(reactor, args)
    target = {"room": room_name(args.room)} if args.room else {"to": args.to}
    sending = e2ee.secure(session).send(" ".join(args.text), **target)
    ack = await answer(reactor, args, session, sending,
                       late="no ack within {:g}s (the message may still be delivered)")
    out(json.dumps(ack) if args.json else ack.get("msg_id", ""))
    await finish(session)


async def cmd_listen(reactor, args):
    done = defer.Deferred()
    received = 0

    def show(msg):
        nonlocal received
        if done.called:
            return
        try:
            out(json.dumps(msg) if args.json else message_line(msg))
        except OutputClosed:
            done.callback(OK)
            return
        received += 1
        if args.count and received >= args.count:
            done.callback(OK)

    if args.timeout:
        timer = reactor.callLater(args.timeout, lambda: done.called or done.callback(
            TIMEOUT if args.count else OK))
        done.addBoth(lambda result: (timer.active() and timer.cancel(), result)[1])
    session = await connect(reactor, args, on_message=show)
    e2ee.publish(session)
    end_on_refusal(session, done, args, warn)
    for room in args.join:
        await answer(reactor, args, session, session.join(room_name(room), persist=True))
    code = await done
    if code == TIMEOUT:
        warn(f"{received} of {args.count} message(s) within {args.timeout:g}s")
    await finish(session, code)


async def cmd_leave(reactor, args):
    session = await connect(reactor, args)
    await answer(reactor, args, session, session.leave(room_name(args.room)))
    await finish(session)


async def cmd_peers(reactor, args):
    session = await connect(reactor, args)
    response = await answer(reactor, args, session, session.request({"type": "peers"}))
    peers = response.get("peers", [])
    if args.json or peers:
        out(json.dumps(peers) if args.json else "\n".join(map(clean, peers)))
    await finish(session)


async def cmd_rooms(reactor, args):
    session = await connect(reactor, args)
    response = await answer(reactor, args, session, session.request({"type": "rooms"}))
    rooms = response.get("rooms", {})
    if args.json or rooms:
        out(json.dumps(rooms) if args.json else "\n".join(rooms_lines(rooms)))
    await finish(session)


async def cmd_history(reactor, args):
    request = {"type": "history", "limit": args.limit}
    session = await connect(reactor, args)
    if args.room:
        request["room"] = room_name(args.room)
        await answer(reactor, args, session, session.join(request["room"]))
    else:
        request["with"] = args.with_
    response = await answer(reactor, args, session, session.request(request))
    for msg in response.get("messages", []):
        out(json.dumps(msg) if args.json else message_line(msg))
    await finish(session)


def cmd_genkey(args):
    try:
        identity = keys.generate(args.file)
    except keys.KeyFileError as e:
        fail(USAGE, str(e))
    out(identity.public_b64)


# -- options -----------------------------------------------------------

def add_connection_options(parser, defaults):
    """The options every networked command takes, before or after its name.

    On subparsers ``defaults`` is False: their defaults are suppressed so
    that a value given before the subcommand is kept.
    """
    def default(value):
        return value if defaults else argparse.SUPPRESS
    group = parser.add_argument_group("connection")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--server", type=parse_server, metavar="HOST:PORT",
                       default=default(("127.0.0.1", DEFAULT_PORT)),
                       help=f"relay address (default 127.0.0.1:{DEFAULT_PORT})")
    where.add_argument("--endpoint", metavar="STR", default=default(None),
                       help="a Twisted client endpoint string instead, e.g. "
                            "tls:host=relay.example:port=55665")
    group.add_argument("--id", default=default(_default_id()),
                       help="peer id to use (default: your user name)")
    group.add_argument("--key", metavar="FILE", default=default(None),
                       help="Ed25519 identity file (see genkey) proving the id")
    group.add_argument("--relay-id", default=default(DEFAULT_RELAY_ID),
                       help="with --key: the relay's [relay] id, signed into the proof "
                            "when the relay does not name itself in its challenge "
                            f"(default {DEFAULT_RELAY_ID})")
    group.add_argument("--tls", action="store_true", default=default(False),
                       help="use TLS (system trust unless --ca)")
    group.add_argument("--ca", metavar="FILE", default=default(None),
                       help="trust only this CA certificate (PEM)")
    group.add_argument("--cert", metavar="FILE", default=default(None),
                       help="client certificate (PEM), with --client-key")
    group.add_argument("--client-key", metavar="FILE", default=default(None),
                       help="private key (PEM) of --cert")
    group.add_argument("--connect-timeout", type=float, metavar="S", default=default(10.0),
                       help="give up a connection attempt (TCP, TLS and hello) after S seconds "
                            "(default 10)")
    group.add_argument("-q", "--quiet", action="store_true", default=default(False),
                       help="no status lines on stderr")


def _default_id():
    try:
        return getpass.getuser()
    except Exception:
        return "anonymous"


def _command(subparsers, name, run, help, timeout=DEFAULT_TIMEOUT, json_help=None):
    p = subparsers.add_parser(name, help=help, description=help)
    add_connection_options(p, defaults=False)
    p.set_defaults(run=run, needs_reactor=True)
    p.add_argument("--timeout", type=float, metavar="S", default=timeout,
                   help="give up after S seconds" + (f" (default {timeout:g})" if timeout
                                                     else ""))
    if json_help:
        p.add_argument("--json", action="store_true", help=json_help)
    return p


def build_parser():
    parser = Parser(prog="relay-chat", description="Chat through a relayd relay.",
                    epilog="exit codes: 0 ok, 1 usage or local error, 2 cannot connect, "
                           "3 refused by the relay, 4 timeout")
    add_connection_options(parser, defaults=True)
    parser.set_defaults(run=cmd_chat, needs_reactor=True, timeout=None, command=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = _command(sub, "chat", cmd_chat, "interactive chat on stdin/stdout (the default)",
                 timeout=None)
    p.add_argument("--udp-relay", metavar="HOST:PORT",
                   help="the relay's UDP rendezvous, for /peer (default: the --server host, "
                        f"port {DEFAULT_UDP_PORT})")

    p = _command(sub, "send", cmd_send, "send one message; exit 0 once the relay acks it",
                 json_help="print the whole ack, not just the msg_id")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", metavar="PEER", help="a peer id, or * for everyone")
    to.add_argument("--room", metavar="ROOM", help="a room (#name or name)")
    p.add_argument("text", nargs="+", help="the message (words are joined by spaces)")

    p = _command(sub, "listen", cmd_listen, "print incoming messages, one per line",
                 timeout=None, json_help="print each message object as one JSON line")
    p.add_argument("--count", type=int, metavar="N",
                   help="exit 0 after N messages (4 if --timeout passes first)")
    p.add_argument("--join", action="append", default=[], metavar="ROOM",
                   help="join ROOM first and stay a member while offline, its messages "
                        "kept for you, until `leave ROOM` (repeatable)")

    p = _command(sub, "leave", cmd_leave, "stop being a member of a room joined with "
                 "listen --join or /join")
    p.add_argument("room", metavar="ROOM", help="the room (#name or name)")

    _command(sub, "peers", cmd_peers, "list connected peers", json_help="print a JSON list")
    _command(sub, "rooms", cmd_rooms, "list rooms and their member counts",
             json_help="print a JSON object")

    p = _command(sub, "history", cmd_history, "print stored messages of a room or a peer",
                 json_help="print each message object as one JSON line")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--room", metavar="ROOM")
    which.add_argument("--with", dest="with_", metavar="PEER")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="at most N (default 50)")

    p = sub.add_parser("genkey", help="create an Ed25519 identity file and print its public key",
                       description="Create FILE (PEM PKCS8, mode 0600; never overwritten) "
                                   "and print the raw public key in base64.")
    p.add_argument("file", metavar="FILE")
    p.set_defaults(run=cmd_genkey, needs_reactor=False)
    udp_peer.register_command(sub)
    e2ee.register_command(sub, _command)
    p2p.register_command(sub)
    return parser


def check(parser, args):
    if args.command not in ("genkey", "p2p"):
        if args.tls and args.endpoint:
            parser.error("--tls goes with --server; give a tls: endpoint string instead")
        if bool(args.cert) != bool(args.client_key):
            parser.error("--cert and --client-key go together")
        if (args.ca or args.cert) and not args.tls:
            parser.error("--ca and --cert need --tls")
    if getattr(args, "count", None) is not None and args.count < 1:
        parser.error("--count must be at least 1")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check(parser, args)
    if not args.needs_reactor:
        args.run(args)
        return
    # Only warnings and errors (a bug, an unhandled failure) reach stderr.
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])], redirectStandardIO=False)
    task.react(lambda reactor: defer.ensureDeferred(args.run(reactor, args)))

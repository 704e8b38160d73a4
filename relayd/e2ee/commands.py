"""relay-chat's end-to-end encryption: the layer each session gets with
``--key``, and the subcommands ``keys``, ``verify``, ``room-invite``,
``room-remove`` and ``room-leave``.

The store is the key file's path + ``.e2ee``.
"""

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred

from relayd.client.protocol import ServerError
from relayd.e2ee import wire
from relayd.e2ee.layer import E2EE, fingerprint, safety_number
from relayd.e2ee.store import Store, StoreError

STORE_SUFFIX = ".e2ee"


class SecureSession:
    """A Session whose ``send`` encrypts (for the interactive console).

    A message counts as unacked from the moment it is given, while its
    recipient's keys are fetched, not only once it is in the outbox.
    """

    def __init__(self, session, layer):
        self._session = session
        self._layer = layer
        self._sending = []

    def send(self, body, to=None, room=None):
        d = self._layer.send(body, to=to, room=room)
        if not d.called:
            self._sending.append(d)
            d.addBoth(self._settled, d)
        return d

    def _settled(self, result, d):
        self._sending.remove(d)
        return result

    @property
    def unacked(self):
        return len(self._sending)

    def drained(self):
        pending = []
        for d in self._sending:
            waiter = Deferred()
            d.addBoth(lambda result, w=waiter: (w.callback(None), result)[1])
            pending.append(waiter)
        return DeferredList(pending).addCallback(lambda _: self._session.drained())

    def __getattr__(self, name):
        return getattr(self._session, name)


def make_layer(args, signer, report):
    """The E2EE layer for a session with ``--key``, or None without one."""
    if signer is None:
        return None
    try:
        store = Store.open(args.key + STORE_SUFFIX)
    except StoreError as e:
        raise SystemExit(f"relay-chat: {e}") from None
    return E2EE(signer, args.id, store, report)


def secure(session):
    """What to send through: the session's layer, else the session itself."""
    layer = getattr(session, "e2ee", None)
    return session if layer is None else SecureSession(session, layer)


def publish(session):
    """Publish keys in the background once connected (listen, chat)."""
    layer = getattr(session, "e2ee", None)
    if layer is not None:
        layer.top_up()


def _layer(session):
    layer = getattr(session, "e2ee", None)
    if layer is None:
        raise SystemExit("relay-chat: end-to-end encryption needs --key (an identity file)")
    return layer


async def cmd_keys(reactor, args, cli):
    session = await cli.connect(reactor, args)
    layer = _layer(session)
    count = await cli.answer(reactor, args, session, layer.publish())
    cli.out(f"{args.id} {fingerprint(layer.identity.public_bytes)} "
            f"one-time prekeys on the relay: {count if count is not None else 'none'}")
    await cli.finish(session)


async def cmd_verify(reactor, args, cli):
    session = await cli.connect(reactor, args)
    layer = _layer(session)
    pinned = layer.store.pinned(args.peer)
    try:
        record = await session.request({"type": "keys_fetch", "id": args.peer, "opk": False})
        current = wire.unb64(record.get("ik"), 32, "ik")
    except (ServerError, wire.BadEnvelope):
        current = None
    key = current or pinned
    if key is None:
        await cli.finish(session)
        cli.fail(cli.REFUSED, f"no key known for {args.peer}")
    if args.accept and current is not None:
        layer.store.pin(args.peer, current)
        layer.store.save()
        pinned = current
    elif pinned is None:
        layer.check_pin(args.peer, current)
        pinned = current
    cli.out(f"{args.id}: {fingerprint(layer.identity.public_bytes)}")
    cli.out(f"{args.peer}: {fingerprint(pinned)} (pinned)")
    cli.out("safety number: " + safety_number(args.id, layer.identity.public_bytes,
                                              args.peer, pinned))
    code = cli.OK
    if current is not None and current != pinned:
        cli.warn(f"!!! the relay now gives {args.peer} ANOTHER key: {fingerprint(current)}; "
                 f"compare the safety number out of band, then relay-chat verify {args.peer} "
                 f"--accept")
        code = cli.REFUSED
    await cli.finish(session, code)


async def _room_command(reactor, args, cli, action):
    session = await cli.connect(reactor, args)
    layer = _layer(session)
    # Our own keys too: members send their leave notices to them.
    await cli.answer(reactor, args, session, layer.publish())
    await cli.answer(reactor, args, session, action(layer))
    await cli.answer(reactor, args, session, session.drained())
    await cli.finish(session)


async def cmd_room_invite(reactor, args, cli):
    await _room_command(reactor, args, cli, lambda layer: layer.invite(
        cli.room_name(args.room), args.peers, history=args.history))


async def cmd_room_remove(reactor, args, cli):
    await _room_command(reactor, args, cli, lambda layer: layer.remove(
        cli.room_name(args.room), args.peer))


async def cmd_room_leave(reactor, args, cli):
    async def leave(layer):
        room = cli.room_name(args.room)
        await layer.leave(room)
        try:
            await layer.session.leave(room)
        except ServerError:
            pass
    await _room_command(reactor, args, cli, lambda layer: ensureDeferred(leave(layer)))


def register_command(sub, command):
    """Add the subcommands; ``command`` is cli's ``_command`` helper."""
    from relayd.client import cli

    def run(f):
        return lambda reactor, args: f(reactor, args, cli)

    p = command(sub, "keys", run(cmd_keys), "publish end-to-end encryption keys (with --key) "
                "and print the key's fingerprint")
    p = command(sub, "verify", run(cmd_verify), "print a peer's key fingerprint and the safety "
                "number to compare out of band; --accept pins a changed key")
    p.add_argument("peer", metavar="PEER")
    p.add_argument("--accept", action="store_true",
                   help="pin the key the relay gives now (after comparing safety numbers)")
    p = command(sub, "room-invite", run(cmd_room_invite), "make ROOM private (end-to-end "
                "encrypted) and share its key with PEERs")
    p.add_argument("room", metavar="ROOM")
    p.add_argument("peers", nargs="+", metavar="PEER")
    p.add_argument("--history", action="store_true",
                   help="share the keys of earlier epochs too (the room's history)")
    p = command(sub, "room-remove", run(cmd_room_remove), "remove PEER from your private ROOM "
                "and rotate its key")
    p.add_argument("room", metavar="ROOM")
    p.add_argument("peer", metavar="PEER")
    p = command(sub, "room-leave", run(cmd_room_leave), "leave a private ROOM (its owner "
                "rotates the key)")
    p.add_argument("room", metavar="ROOM")

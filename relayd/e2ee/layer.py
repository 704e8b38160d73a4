"""The client side of end-to-end encryption, between relay-chat and its Session.

``E2EE.send`` has ``Session.send``'s signature and encrypts on the way: a
direct message to an id that published keys is sealed to its prekeys, a
message to a private room (one this client holds a key for) under the room
key.  ``E2EE.incoming`` wraps ``on_message``: it opens encrypted bodies
(refusing forged, tampered and replayed ones, and senders whose key changed),
handles room key shares and leave notices, and passes plain bodies through.
"""
import hashlib
import os
import secrets
import time

from twisted.internet.defer import CancelledError, ensureDeferred

from relayd.client.protocol import ConnectionClosed, ServerError
from relayd.client.render import clean
from relayd.e2ee import seal, wire
from relayd.e2ee.wire import BadEnvelope

OPK_LOW, OPK_TARGET = 20, 50    # publish more one-time prekeys below LOW, up to TARGET
TOP_UP_EVERY = 10               # one-time prekeys used between two checks of the relay's supply


class E2EEError(Exception):
    """A message that cannot be sent encrypted (the text says why)."""


class KeyChanged(E2EEError):
    def __init__(self, peer, pinned, offered):
        self.peer, self.pinned, self.offered = peer, pinned, offered
        super().__init__(
            f"!!! THE KEY OF {peer} HAS CHANGED !!! pinned {fingerprint(pinned)}, now "
            f"{fingerprint(offered)}. Someone may be impersonating {peer}, or {peer} has a "
            f"new key: compare safety numbers (relay-chat verify {peer}) and accept the new key "
            f"with relay-chat verify {peer} --accept")


def fingerprint(key):
    return "sha256:" + hashlib.sha256(key).hexdigest()[:32]


def safety_number(a, key_a, b, key_b):
    """Twelve groups of five digits, the same whoever computes it."""
    (x, kx), (y, ky) = sorted(((a, key_a), (b, key_b)))
    digest = hashlib.sha512(wire.context(b"relayd-e2ee/1 safety", x, kx, y, ky)).digest()
    return " ".join(f"{int.from_bytes(digest[i:i + 5], 'big') % 100000:05d}"
                    for i in range(0, 60, 5))


class E2EE:
    def __init__(self, identity, peer_id, store, report, clock=time.time):
        self.identity = identity
        self.me = peer_id
        self.store = store
        # report(text): status and warnings for the person; names in them come
        # from peers, so control characters are escaped
        self.report = lambda text: report(clean(text))
        self.clock = clock
        self.session = None
        self._used = 0              # one-time prekeys used since the last top-up

    # -- keys ---------------------------------------------------------------

    def publish(self):
        """Publish a signed prekey and one-time prekeys as needed; a Deferred
        of the relay's count, or None when the relay keeps no keys for us."""
        return ensureDeferred(self._publish())

    async def _publish(self):
        try:
            status = await self.session.request({"type": "keys_status"})
            spk = self.store.signed_prekey()
            raw = spk.public_key().public_bytes_raw()
            have = status.get("opks") if isinstance(status.get("opks"), int) else 0
            fresh = self.store.new_one_time(OPK_TARGET - have) if have < OPK_LOW else []
            if status.get("spk") == wire.b64(raw) and not fresh:
                return have
            self.store.save()           # the private halves exist before the public ones go out
            answer = await self.session.request({
                "type": "keys_publish",
                "spk": wire.prekey_record(self.identity, wire.SPK_LABEL, self.me, raw),
                "opks": [wire.prekey_record(self.identity, wire.OPK_LABEL, self.me,
                                            k.public_key().public_bytes_raw()) for k in fresh]})
            return answer.get("opks")
        except ServerError as e:
            if e.code != "unknown_type":        # a relay without a key directory: say nothing
                self.report(f"end-to-end keys not published ({e}); messages to you stay "
                            f"unencrypted")
            return None

    def top_up(self):
        """``publish`` in the background (at start, and as prekeys get used)."""
        self._used = 0
        self.publish().addErrback(self._unpublished)

    def _unpublished(self, failure):
        if not failure.check(CancelledError, ConnectionClosed):     # not the session ending
            self.report(f"end-to-end keys not published: {failure.getErrorMessage()}")

    async def bundle(self, peer, take_opk=True):
        """The peer's verified keys: (identity key, prekey, SPK or OPK).

        Pins the identity key on first use; KeyChanged if it differs from the pin.
        """
        try:
            record = await self.session.request({"type": "keys_fetch", "id": peer,
                                                 "opk": take_opk})
        except ServerError as e:
            if e.code not in ("no_keys", "unknown_type"):
                raise
            if self.store.pinned(peer) is not None:
                raise E2EEError(f"{peer} has published no keys on the relay, but its key is "
                                f"pinned: not sending it in the clear") from None
            return None
        try:
            ik = wire.unb64(record.get("ik"), 32, "ik")
            self.check_pin(peer, ik)
            spk = wire.check_prekey(record.get("spk"), wire.SPK_LABEL, peer, ik)
            if record.get("opk") is not None:
                return ik, wire.check_prekey(record["opk"], wire.OPK_LABEL, peer, ik), seal.OPK
        except BadEnvelope as e:
            raise E2EEError(f"the keys the relay gave for {peer} do not verify: {e}") from None
        return ik, spk, seal.SPK

    def check_pin(self, peer, key):
        pinned = self.store.pinned(peer)
        if pinned is None:
            self.store.pin(peer, key)
            self.store.save()
            self.report(f"pinned the key of {peer} on first use: {fingerprint(key)} "
                        f"(compare with relay-chat verify {peer})")
        elif pinned != key:
            raise KeyChanged(peer, pinned, key)

    # -- sending --------------------------------------------------------------

    def send(self, body, to=None, room=None):
        """``Session.send``, encrypting where the recipient can read it."""
        return ensureDeferred(self._send(body, to, room))

    async def _send(self, body, to, room):
        if room is not None:
            state = self.store.rooms.get(room)
            if state is not None:
                body = self._seal_room(room, state, {"k": "text", "body": body})
            return await self.session.send(body, room=room)
        if to != "*":
            sealed = await self.seal_dm(to, {"k": "text", "body": body})
            if sealed is None:
                self.report(f"{to} has published no encryption keys: sent unencrypted")
            else:
                body = sealed
        return await self.session.send(body, to=to)

    async def seal_dm(self, to, content):
        """The sealed body of ``content`` for ``to``, or None if it has no keys."""
        keys = await self.bundle(to)
        if keys is None:
            return None
        _, prekey, which = keys
        content = dict(content, mid=secrets.token_hex(16), ts=self.clock())
        return seal.seal_dm(self.identity, self.me, to, prekey, which, content)

    def _seal_room(self, room, state, content):
        epoch = state["epoch"]
        key = wire.unb64(state["keys"][str(epoch)], 32, "room key")
        content = dict(content, mid=secrets.token_hex(16), ts=self.clock())
        return seal.seal_room(self.identity, self.me, room, epoch, key, content)

    # -- receiving ------------------------------------------------------------

    def incoming(self, show):
        """An ``on_message`` that opens what is encrypted, then calls ``show``."""
        def on_message(msg):
            opened = self.open(msg)
            if opened is not None and show is not None:
                show(opened)
        return on_message

    def open(self, msg):
        """The message as it should be shown, or None (refused or handled)."""
        body, sender = msg.get("body"), msg.get("from")
        if not wire.is_encrypted(body):
            return msg
        try:
            kind, envelope = wire.parse_body(body)
            if kind == wire.DM:
                content = self._open_dm(envelope, sender, msg.get("to"))
            else:
                content = self._open_room(envelope, sender, msg.get("room"))
        except KeyChanged as e:
            self.report(f"refused a message from {sender}: {e}")
            return None
        except (BadEnvelope, E2EEError) as e:
            self.report(f"refused an encrypted message from {sender!r}: {e}")
            return None
        what = content.get("k")
        if what == "text" and isinstance(content.get("body"), str):
            return dict(msg, body=content["body"], e2ee=True)
        if what == "roomkey" and kind == wire.DM:
            self._room_key(sender, content)
        elif what == "roomleave" and kind == wire.DM:
            self._member_left(sender, content.get("room"))
        else:
            self.report(f"ignored an encrypted message of unknown kind from {sender!r}")
        return None

    def _open_dm(self, envelope, sender, to):
        if to != self.me:
            raise BadEnvelope("a direct message not addressed to this id")
        which, kid = seal.dm_key(envelope)
        if which == seal.OPK:
            private = self.store.one_time_for(kid)
        else:
            private = self.store.signed_prekey_for(kid)
        if private is None:
            raise BadEnvelope("sealed to a prekey this client does not hold (a one-time prekey "
                              "already used: a replay, or a store that was replaced)")
        content = seal.open_dm(envelope, sender, self.me, private)
        self._accept(sender, content)
        if which == seal.OPK:
            self.store.forget_one_time(kid)
            self._used += 1
        self.store.save()
        if self._used >= TOP_UP_EVERY and self.session is not None:
            self.top_up()
        return content

    def _open_room(self, envelope, sender, room):
        state = self.store.rooms.get(room) if isinstance(room, str) else None
        epoch, _ = seal.room_epoch(envelope)
        key = state["keys"].get(str(epoch)) if state is not None else None
        if key is None:
            raise BadEnvelope(f"no key for epoch {epoch} of #{room} (a member can share it)")
        content = seal.open_room(envelope, sender, room, wire.unb64(key, 32, "room key"))
        member = state["members"].get(sender)
        if member is None or wire.unb64(member, 32, "member key") != content["ik"]:
            raise BadEnvelope(f"{sender!r} is not a member of #{room} with that key")
        self._accept(sender, content)
        self.store.save()
        return content

    def _accept(self, sender, content):
        self.check_pin(sender, content["ik"])
        if not self.store.first_time(content["mid"]):
            raise BadEnvelope("a replayed message (its id was opened before)")

    # -- private rooms ----------------------------------------------------------

    def invite(self, room, peers, history=False):
        """Make ``room`` private (if it is not) and share its key with ``peers``."""
        return ensureDeferred(self._invite(room, peers, history))

    async def _invite(self, room, peers, history):
        state = self.store.rooms.get(room)
        if state is None:
            state = self.store.rooms[room] = {
                "owner": self.me, "epoch": 1, "keys": {"1": wire.b64(os.urandom(32))},
                "members": {self.me: self.identity.public_b64}}
        elif state["owner"] != self.me:
            raise E2EEError(f"#{room} belongs to {state['owner']}: only it adds members")
        for peer in peers:
            keys = await self.bundle(peer, take_opk=False)
            if keys is None:
                raise E2EEError(f"{peer} has published no encryption keys")
            state["members"][peer] = wire.b64(keys[0])
        self.store.save()
        for peer in peers:
            await self._share(room, state, peer, history)

    def remove(self, room, peer):
        """Remove ``peer`` and rotate the key (shared with those who remain)."""
        return ensureDeferred(self._rotate(room, peer))

    async def _rotate(self, room, gone):
        state = self.store.rooms.get(room)
        if state is None or state["owner"] != self.me:
            raise E2EEError(f"#{room} is not a private room of yours")
        state["members"].pop(gone, None)
        state["epoch"] += 1
        state["keys"][str(state["epoch"])] = wire.b64(os.urandom(32))
        self.store.save()
        for peer in sorted(state["members"]):
            if peer != self.me:
                await self._share(room, state, peer, history=False)
        self.report(f"#{room}: {gone} removed; key rotated to epoch {state['epoch']}")

    async def _share(self, room, state, peer, history):
        current = str(state["epoch"])
        keys = state["keys"] if history else {current: state["keys"][current]}
        body = await self.seal_dm(peer, {"k": "roomkey", "room": room, "epoch": state["epoch"],
                                         "keys": keys, "members": state["members"],
                                         "owner": state["owner"]})
        await self.session.send(body, to=peer)

    def leave(self, room):
        """Tell the room's owner we left (it rotates the key) and forget the room."""
        return ensureDeferred(self._leave(room))

    async def _leave(self, room):
        state = self.store.forget_room(room)
        self.store.save()
        if state is not None and state["owner"] != self.me:
            body = await self.seal_dm(state["owner"], {"k": "roomleave", "room": room})
            if body is not None:
                await self.session.send(body, to=state["owner"])

    def _room_key(self, sender, content):
        room, epoch, keys = content.get("room"), content.get("epoch"), content.get("keys")
        members = content.get("members")
        if not (isinstance(room, str) and type(epoch) is int and isinstance(keys, dict)
                and isinstance(members, dict) and content.get("owner") == sender
                and str(epoch) in keys):
            self.report(f"ignored a malformed room key from {sender!r}")
            return
        state = self.store.rooms.get(room)
        if state is not None and state["owner"] != sender:
            self.report(f"ignored a room key for #{room} from {sender!r}, not its owner")
            return
        if state is None:
            state = self.store.rooms[room] = {"owner": sender, "epoch": 0, "keys": {},
                                              "members": {}}
        for e, k in keys.items():
            wire.unb64(k, 32, "room key")
            state["keys"].setdefault(e, k)
        if epoch >= state["epoch"]:
            state["epoch"], state["members"] = epoch, members
        self.store.save()
        self.report(f"#{room}: key of epoch {epoch} from {sender}; members "
                    + ", ".join(sorted(state["members"])))

    def _member_left(self, sender, room):
        state = self.store.rooms.get(room) if isinstance(room, str) else None
        if state is None or state["owner"] != self.me or sender not in state["members"]:
            return
        d = self.remove(room, sender)
        d.addErrback(lambda f: self.report(f"#{room}: could not rotate the key: {f.value}"))

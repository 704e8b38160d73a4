"""A relay session that outlives its connections.

``Session`` connects, identifies, and keeps doing so after every loss with a
backoff (twisted's ``backoffPolicy`` on the injected reactor clock), until
it is stopped or the relay refuses it.  Around that it keeps what must not
be lost or repeated:

* an outbox: every message gets a random nonce when it is written and stays
  in the outbox, nonce and all, until the relay acks it; after a reconnect
  the outbox is sent again in order, so the relay (which dedups by nonce)
  stores each message once whatever happened to the acks;
* a bounded set of the msg_ids already handed to ``on_message``, so a
  redelivery (a message sent again after a reconnect because its ack was
  lost, or a relay replaying its journal after a crash) is dropped; every
  message, repeats included, is acked to the relay once handled;
* the rooms joined, joined again after a reconnect (a persistent join keeps
  the id a member while offline, its room messages stored, until ``leave``).

It does not use ``ClientService``: that state machine raises
``NoTransition`` when a connection drops while ``prepareConnection`` (here
the hello) is still running (Twisted 26.10).
"""
import secrets
from collections import OrderedDict

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall

from relayd.client.protocol import (
    ConnectionClosed, ProtocolViolation, RelayClientProtocol, ServerError, encode)

# Error codes after which connecting again cannot help.
REFUSALS = frozenset({"bad_id", "id_owned", "auth_required", "auth_failed", "banned",
                      "too_many_connections", "session_replaced"})
# Refusals an established session waits out instead.
BUSY = frozenset({"too_many_connections", "banned"})
# Error codes answering a send that mean "the same message, later".
TRY_LATER = frozenset({"rate_limited", "journal_unavailable", "shutting_down"})
# Room for the "req" key the protocol adds to every request line.
REQ_ALLOWANCE = 32


class MessageTooLong(ValueError):
    """The message would not fit in one line of the relay's max_line."""


class RecentIds:
    """The last ``limit`` ids seen, in arrival order."""

    def __init__(self, limit):
        self.limit = limit
        self._ids = OrderedDict()

    def add(self, key):
        """False if ``key`` was already there."""
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True


class _Outgoing:
    """A message in the outbox: the request (nonce included) and its ack."""

    def __init__(self, request, canceller):
        self.request = request
        self.acked = Deferred(lambda _: canceller(self))
        self.in_flight = False


class _SessionFactory(Factory):
    def __init__(self, session):
        self.session = session

    def buildProtocol(self, addr):
        return self.session._new_protocol()


def _server_error(failure):
    """The relay's error behind a failed attempt, if any."""
    error = failure.value
    if failure.check(ConnectionClosed):
        error = error.error
    return error if isinstance(error, ServerError) else None


def _is_final(error, established):
    """Whether ``error`` ends the session.

    A relay that is full or has banned this address refuses a new session
    for good, but an established one waits it out: after a relay restart
    every client comes back at once.
    """
    return (error is not None and error.code in REFUSALS
            and not (established and error.code in BUSY))


class Session:
    """A reconnecting, identified session with a relay.

    ``endpoint`` is any ``IStreamClientEndpoint`` (TLS included).  ``signer``
    proves ``peer_id`` (see ``RelayClientProtocol.identify``).  Callbacks:
    ``on_message(msg)`` for each new message, ``on_status(text)`` for one-line
    human status, ``on_fatal(error)`` when the relay refuses the session (it
    then stops; ``fatal`` holds the error).
    """

    def __init__(self, reactor, endpoint, peer_id, signer=None, relay_id=None,
                 on_message=None, on_status=None, on_fatal=None, keepalive=60.0,
                 handshake_timeout=10.0, retry_policy=None, max_line=65536, remember=65536):
        self.reactor = reactor
        self.endpoint = endpoint
        self.peer_id = peer_id
        self.signer = signer
        self.relay_id = relay_id
        self.on_message = on_message
        self.on_status = on_status
        self.on_fatal = on_fatal
        self.keepalive = keepalive              # seconds between pings (0: none)
        self.handshake_timeout = handshake_timeout
        self.max_line = max_line
        self._policy = retry_policy or backoffPolicy(initialDelay=0.5, maxDelay=10.0, factor=2.0)
        self.protocol = None            # the identified connection, if any
        self.welcome = None
        self.fatal = None
        self.rooms = {}         # room -> persist, joined again after a reconnect
        self.connections = 0            # successful identifications so far
        self.duplicates = 0             # redelivered messages dropped
        self._running = False
        self._attempts = 0               # consecutive failed attempts
        self._last_failure = None
        self._connecting = None
        self._candidate = None          # connected, still saying hello
        self._retry = None
        self._hold = None               # sends paused until this call fires
        self._waiters = []              # (Deferred, fail_after)
        self._drain_waiters = []
        self._stop_waiters = []
        self._outbox = OrderedDict()    # nonce -> _Outgoing
        self._seen = RecentIds(remember)
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor

    # -- lifecycle ------------------------------------------------------

    def start(self):
        self._running = True
        self._connect()

    def stop(self):
        """Stop reconnecting and close; a Deferred fired once closed."""
        self._running = False
        for call in (self._retry, self._hold):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._hold = None
        if self._pinger.running:
            self._pinger.stop()
        self._fail_waiters(CancelledError(), everyone=True)
        if self._candidate is not None:
            self._candidate.close()
        if self._connecting is not None:
            self._connecting.cancel()
        if self.protocol is None:
            return succeed(None)
        d = Deferred()
        self._stop_waiters.append(d)
        self.protocol.close()
        return d

    def ready(self, fail_after=None):
        """A Deferred of the identified protocol.

        With ``fail_after=n`` it fails once ``n`` consecutive attempts have
        failed (1: the first failure); it fails with the refusal if the
        relay refuses the session, and with ``CancelledError`` on stop.
        """
        if self.protocol is not None and self.protocol.is_open:
            return succeed(self.protocol)
        if self.fatal is not None:
            return fail(self.fatal)
        if not self._running:
            return fail(CancelledError())
        if fail_after is not None and self._attempts >= fail_after:
            return fail(self._last_failure)
        d = Deferred()
        self._waiters.append((d, fail_after))
        return d

    @property
    def unacked(self):
        """How many written messages the relay has not acked yet."""
        return len(self._outbox)

    def drained(self):
        """A Deferred fired when the outbox is empty."""
        if not self._outbox:
            return succeed(None)
        d = Deferred()
        self._drain_waiters.append(d)
        return d

    # -- requests -------------------------------------------------------

    def send(self, body, to=None, room=None):
        """Queue a message to ``to`` (a peer id or ``*``) or ``room``.

        Returns a Deferred of the ack; it survives reconnects and fails only
        with the relay's final ``ServerError``.  Cancelling it (a timeout)
        stops sending the message again; the relay may still have it.
        """
        request = {"type": "send", "body": body, "nonce": secrets.token_hex(16)}
        if room is not None:
            request["room"] = room
        else:
            request["to"] = to
        if len(encode(request)) + 1 + REQ_ALLOWANCE > self.max_line:
            return fail(MessageTooLong(f"the message does not fit in {self.max_line} bytes"))
        item = _Outgoing(request, self._settle)
        self._outbox[request["nonce"]] = item
        self._transmit(item)
        return item.acked

    def request(self, obj):
        """Send a query (peers, rooms, history, ping...) once connected.

        If the connection drops before the answer, it is asked again on the
        next connection: use it only for requests that are safe to repeat.
        """
        return Deferred.fromCoroutine(self._request(obj))

    async def _request(self, obj):
        while True:
            proto = await self.ready()
            try:
                return await proto.request(obj)
            except ConnectionClosed:
                continue

    def join(self, room, persist=False):
        """Join ``room`` (again after every reconnect); with ``persist`` the
        id stays a member while offline until it leaves.  A Deferred of
        the answer."""
        def joined(response):
            self.rooms[room] = persist
            return response
        return self.request(_join_request(room, persist)).addCallback(joined)

    def leave(self, room):
        """Leave ``room``, a persistent membership too."""
        self.rooms.pop(room, None)
        return self.request({"type": "leave", "room": room})

    # -- connecting -----------------------------------------------------

    def _new_protocol(self):
        proto = RelayClientProtocol(on_message=self._message, acks=True)
        proto.on_error = lambda error: self._error(proto, error)
        proto.on_lost = lambda reason: self._lost(proto, reason)
        return proto

    def _connect(self):
        self._retry = None
        d = self.endpoint.connect(_SessionFactory(self))
        d.addCallback(self._handshake)
        d.addCallbacks(self._identified, self._attempt_failed)
        self._connecting = d

    def _handshake(self, proto):
        self._candidate = proto
        d = proto.identify(self.peer_id, self.signer, self.relay_id)
        d.addTimeout(self.handshake_timeout, self.reactor)

        def failed(failure):
            proto.abort()
            return failure
        return d.addCallbacks(lambda welcome: (proto, welcome), failed)

    def _identified(self, result):
        proto, welcome = result
        self._connecting = self._candidate = None
        if not self._running:
            proto.close()
            return
        self.protocol, self.welcome = proto, welcome
        self._attempts = 0
        self.connections += 1
        pending = welcome.get("pending") or 0
        self._status(f"connected as {welcome.get('id', self.peer_id)} to relay "
                     f"{welcome.get('relay', '?')}"
                     + (" (key proved)" if welcome.get("authenticated") else "")
                     + (f"; {pending} stored message(s) follow" if pending else ""))
        if self.keepalive:
            self._pinger.start(self.keepalive, now=False)
        for room, persist in sorted(self.rooms.items()):
            proto.request(_join_request(room, persist)).addErrback(
                self._rejoin_failed, room)
        self._flush()
        waiters, self._waiters = self._waiters, []
        for d, _ in waiters:
            d.callback(proto)

    def _attempt_failed(self, failure):
        self._connecting = self._candidate = None
        if not self._running:
            return None
        error = _server_error(failure)
        if failure.check(ProtocolViolation) or _is_final(error, self.connections > 0):
            self._give_up(error or failure.value)
            return None
        self._attempts += 1
        self._last_failure = failure.value
        self._fail_waiters(failure.value)
        if not self._running:           # a waiter gave up and stopped the session
            return None
        delay = self._delay(self._attempts, error)
        self._status(f"cannot connect ({_describe(failure)}); retrying in {delay:.1f}s")
        self._retry = self.reactor.callLater(delay, self._connect)
        return None

    def _lost(self, proto, reason):
        if proto is not self.protocol:
            return
        self.protocol = None
        if self._pinger.running:
            self._pinger.stop()
        if not self._running:
            waiters, self._stop_waiters = self._stop_waiters, []
            for d in waiters:
                d.callback(None)
            return
        if _is_final(proto.last_error, True):
            self._give_up(proto.last_error)
            return
        delay = self._delay(0, proto.last_error)
        self._status(f"connection lost ({proto.last_error or reason.getErrorMessage()}); "
                     f"reconnecting in {delay:.1f}s")
        self._retry = self.reactor.callLater(delay, self._connect)

    def _delay(self, attempt, error):
        """The backoff delay, or longer if the relay said when to come back."""
        delay = self._policy(attempt)
        if error is not None and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return delay

    def _give_up(self, error):
        self.fatal = error
        self._running = False
        self._fail_waiters(error, everyone=True)
        if self.on_fatal is not None:
            self.on_fatal(error)

    def _fail_waiters(self, error, everyone=False):
        failing = [d for d, fail_after in self._waiters
                   if everyone or (fail_after is not None and fail_after <= self._attempts)]
        self._waiters = [w for w in self._waiters if w[0] not in failing]
        for d in failing:
            d.errback(error)

    def _rejoin_failed(self, failure, room):
        if not failure.check(ConnectionClosed):
            self._status(f"could not join #{room} again: {failure.value}")

    # -- the outbox -----------------------------------------------------

    def _transmit(self, item):
        proto = self.protocol
        if proto is None or self._hold is not None or item.in_flight:
            return
        item.in_flight = True
        proto.request(item.request).addCallbacks(
            self._acked, self._send_failed, callbackArgs=(item,), errbackArgs=(item,))

    def _flush(self):
        for item in list(self._outbox.values()):
            self._transmit(item)

    def _acked(self, ack, item):
        item.in_flight = False
        self._settle(item)
        if not item.acked.called:
            item.acked.callback(ack)

    def _send_failed(self, failure, item):
        item.in_flight = False
        if failure.check(ConnectionClosed):
            return None                 # stays queued; sent again after reconnecting
        if failure.check(ServerError) and failure.value.code in TRY_LATER:
            self._pause(failure.value.retry_after or 1.0, failure.value.code)
            return None
        self._settle(item)
        if not item.acked.called:
            item.acked.errback(failure)
        return None

    def _settle(self, item):
        self._outbox.pop(item.request["nonce"], None)
        if not self._outbox:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    def _pause(self, delay, why):
        if self._hold is None:
            self._status(f"relay says {why}; sending again in {delay:.1f}s")
            self._hold = self.reactor.callLater(delay, self._resume)

    def _resume(self):
        self._hold = None
        self._flush()

    # -- incoming -------------------------------------------------------

    def _message(self, msg):
        msg_id = msg.get("msg_id")
        if isinstance(msg_id, str) and not self._seen.add(msg_id):
            self.duplicates += 1
            return
        if self.on_message is not None:
            self.on_message(msg)

    def _error(self, proto, error):
        if not _is_final(error, True):
            self._status(f"relay: {error}")

    def _ping(self):
        proto = self.protocol
        if proto is None:
            return
        d = proto.request({"type": "ping"})
        d.addTimeout(self.keepalive, self.reactor)

        def unanswered(failure):
            if failure.check(TimeoutError) and proto is self.protocol:
                self._status("the relay stopped answering; reconnecting")
                proto.abort()
        d.addErrback(unanswered)

    def _status(self, text):
        if self.on_status is not None:
            self.on_status(text)


def _join_request(room, persist):
    request = {"type": "join", "room": room}
    if persist:
        request["persist"] = True
    return request


def _describe(failure):
    if failure.check(ConnectionClosed) and failure.value.error is not None:
        return str(failure.value.error)
    return failure.getErrorMessage() or failure.type.__name__

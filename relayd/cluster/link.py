"""The link to the cluster engine (NATS with JetStream), as Deferreds.

nats-py runs on asyncio; the daemon keeps its default reactor.  The link
runs nats-py on an event loop of its own, in one thread: each operation is a
coroutine started there and a Deferred fired back on the reactor, and every
callback from the engine (a subscribed message) is handed to the reactor.
Both ways go through a queue (``_Handoff``) that wakes the other thread
once for everything queued since its last wake-up, not once per item: under
load a wake-up (a pipe write, and the GIL changing hands) costs more than
the operation.  Nothing here blocks the reactor thread.

Like ``ClientService``, the link keeps trying: the first connection is
retried with ``backoffPolicy`` delays, and once connected nats-py reconnects
across the engine's servers by itself; ``state`` says where it is
("connecting", "connected", "disconnected", "stopped") and ``watch`` tells a
callable of each change.
"""
import asyncio
import threading

from twisted.application import service
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

CONNECTING, CONNECTED, DISCONNECTED, STOPPED = "connecting", "connected", "disconnected", "stopped"


# JetStream's err_codes for a sequence not in the stream (10043 for the last one)
GONE = (10057, 10043)
WRONG_LAST_SEQUENCE = (10071, 10164)     # its err_codes for a write whose expected revision is not the key's


class EngineLink(service.Service):
    log = Logger()

    def __init__(self, reactor, urls, name, timeout=5.0, backoff=backoffPolicy(0.5, 15.0)):
        self.reactor = reactor
        self.urls = list(urls)
        self.client_name = name
        self.timeout = timeout
        self.backoff = backoff
        self.state = STOPPED
        self.server = None              # the URL of the server connected to
        self.connects = 0               # connections made (first ones and reconnects)
        self._watchers = []
        self._loop = None
        self._thread = None
        self._nc = None
        self._js = None
        self._kv = {}
        self._attempt = 0
        self._retry = None
        self._inflight = set()          # Deferreds of operations not finished yet

    # --- lifecycle ------------------------------------------------------------

    def startService(self):
        super().startService()
        self._loop = asyncio.new_event_loop()
        self._to_loop = _Handoff(self._loop.call_soon_threadsafe)
        self._to_reactor = _Handoff(self.reactor.callFromThread)
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="relayd-cluster-engine", daemon=True)
        self._thread.start()
        self._connect()

    def stopService(self):
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._set_state(STOPPED)
        # what the services stopped before this one still asked (a node
        # leaving the cluster) ends first, or fails within the timeout
        d = defer.DeferredList(list(self._inflight), consumeErrors=True)
        d.addTimeout(self.timeout, self.reactor)
        d.addBoth(lambda _: self._run(self._close))
        d.addErrback(lambda f: self.log.warn("cluster engine close: {error}",
                                             error=f.getErrorMessage()))
        d.addBoth(self._stop_loop)
        return d

    async def _close(self):
        if self._nc is not None:
            await self._nc.close()

    def _stop_loop(self, _):
        # the connection is closed: nothing is left for the loop (a daemon
        # thread) to do, so it is stopped without waiting for it
        self._loop.call_soon_threadsafe(self._loop.stop)

    def watch(self, callback):
        """Call ``callback(state)`` on the reactor at each change of state."""
        self._watchers.append(callback)

    def _set_state(self, state):
        if state != self.state:
            self.state = state
            for callback in list(self._watchers):
                callback(state)

    def _connect(self):
        self._retry = None
        if not self.running:
            return
        self._set_state(CONNECTING)
        self._run(self._open).addCallbacks(self._opened, self._open_failed)

    async def _open(self):
        import nats

        def to_reactor(state):
            async def callback(*_):
                self._call(self._engine_state, state)
            return callback

        async def error(e):
            self._call(self._engine_error, str(e))

        self._nc = await nats.connect(
            servers=self.urls, name=self.client_name, connect_timeout=self.timeout,
            allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
            disconnected_cb=to_reactor(DISCONNECTED), reconnected_cb=to_reactor(CONNECTED),
            closed_cb=to_reactor(STOPPED), error_cb=error)
        self._js = self._nc.jetstream(timeout=self.timeout)
        return self._nc.connected_url.geturl() if self._nc.connected_url else None

    def _opened(self, url):
        self._attempt = 0
        self.server = url
        self.connects += 1
        self.log.info("cluster engine connected: {url}", url=url)
        self._set_state(CONNECTED)

    def _open_failed(self, failure):
        if not self.running:
            return
        delay = self.backoff(self._attempt)
        self._attempt += 1
        self.log.warn("cluster engine unreachable ({error}); retrying in {delay:.1f} s",
                      error=failure.getErrorMessage()[:200], delay=delay)
        self._set_state(DISCONNECTED)
        self._retry = self.reactor.callLater(delay, self._connect)

    def _engine_state(self, state):
        if not self.running:
            return
        if state == CONNECTED:
            self.connects += 1
            url = self._nc.connected_url
            self.server = url.geturl() if url else None
            self.log.info("cluster engine reconnected: {url}", url=self.server)
        elif state == DISCONNECTED:
            self.log.warn("cluster engine connection lost; reconnecting")
        self._set_state(state)

    def _engine_error(self, error):
        self.log.warn("cluster engine: {error}", error=error[:200])

    # --- the bridge -----------------------------------------------------------

    def _run(self, fn, *args):
        """Run the coroutine ``fn(*args)`` on the engine's loop: Deferred[result]."""
        d = defer.Deferred()
        self._inflight.add(d)
        d.addBoth(self._settled, d)
        self._to_loop.put(self._start, fn, args, d)
        return d

    def _settled(self, result, d):
        self._inflight.discard(d)
        return result

    def _start(self, fn, args, d):
        """On the loop: start ``fn(*args)``; its outcome fires ``d`` on the reactor."""
        task = self._loop.create_task(fn(*args))
        task.add_done_callback(lambda task: self._to_reactor.put(_fire, d, task))

    def _call(self, callback, *args):
        """From the loop: ``callback(*args)`` on the reactor."""
        self._to_reactor.put(callback, *args)

    # --- operations: each returns a Deferred ----------------------------------

    def ensure_stream(self, name, subjects, replicas, max_age, duplicate_window=120.0):
        """Create the stream, or bring its subjects and limits up to date."""
        return self._run(self._ensure_stream, name, subjects, replicas, max_age,
                         duplicate_window)

    async def _ensure_stream(self, name, subjects, replicas, max_age, duplicate_window):
        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError
        config = StreamConfig(name=name, subjects=subjects, num_replicas=replicas,
                              max_age=max_age,
                              duplicate_window=min(duplicate_window, max_age))
        try:
            await self._js.stream_info(name)
        except NotFoundError:
            await self._js.add_stream(config)
        else:
            await self._js.update_stream(config)

    def ensure_kv(self, bucket, replicas, ttl=None):
        return self._run(self._ensure_kv, bucket, replicas, ttl)

    async def _ensure_kv(self, bucket, replicas, ttl):
        from nats.js.errors import BucketNotFoundError
        try:
            self._kv[bucket] = await self._js.key_value(bucket)
        except BucketNotFoundError:
            self._kv[bucket] = await self._js.create_key_value(bucket=bucket, replicas=replicas,
                                                               ttl=ttl, history=1)

    def store(self, subject, data, msg_id=None):
        """Publish to JetStream; fires ``(seq, duplicate)`` once the stream's
        quorum holds it."""
        return self._run(self._store, subject, data, msg_id)

    async def _store(self, subject, data, msg_id):
        headers = None if msg_id is None else {"Nats-Msg-Id": msg_id}
        ack = await self._js.publish(subject, data, headers=headers)
        return ack.seq, bool(ack.duplicate)

    def delete(self, stream, seq):
        """Delete message ``seq``; fires False if it was gone already."""
        return self._run(self._delete, stream, seq)

    async def _delete(self, stream, seq):
        from nats.js.errors import APIError, NotFoundError
        try:
            return await self._js.delete_msg(stream, seq)
        except NotFoundError:
            return False
        except APIError as e:
            if e.err_code in GONE:
                return False
            raise

    def purge(self, stream, subject):
        """Delete every message of ``stream`` on ``subject`` (wildcards allowed)."""
        return self._run(self._purge, stream, subject)

    async def _purge(self, stream, subject):
        return await self._js.purge_stream(stream, subject=subject)

    def messages(self, stream, subject, limit, start=1):
        """The messages of ``stream`` on ``subject`` (wildcards allowed) from
        sequence ``start``, oldest first, at most ``limit``: [(seq, data)]."""
        return self._run(self._messages, stream, subject, limit, start)

    async def _messages(self, stream, subject, limit, start):
        from nats.js.errors import NotFoundError
        found, seq = [], start
        while len(found) < limit:
            try:
                msg = await self._js.get_msg(stream, seq, subject=subject, next=True)
            except NotFoundError:
                break
            found.append((msg.seq, msg.data))
            seq = msg.seq + 1
        return found

    def publish(self, subject, data):
        """Core NATS publish (at most once, to the subscribers of ``subject``)."""
        return self._run(self._publish, subject, data)

    async def _publish(self, subject, data):
        await self._nc.publish(subject, data)

    def subscribe(self, subject, callback):
        """Call ``callback(data)`` on the reactor for each message; fires a
        handle for ``unsubscribe``."""
        return self._run(self._subscribe, subject, callback)

    async def _subscribe(self, subject, callback):
        async def handle(msg):
            self._call(callback, msg.data)
        return await self._nc.subscribe(subject, cb=handle)

    def unsubscribe(self, handle):
        return self._run(handle.unsubscribe)

    def consume(self, stream, subject, durable, callback):
        """A durable JetStream consumer of ``subject``: ``callback(seq, data)``
        on the reactor for each message (``seq`` its stream sequence), acked
        once handed over; it resumes where it was after a reconnect or a
        restart."""
        return self._run(self._consume, stream, subject, durable, callback)

    async def _consume(self, stream, subject, durable, callback):
        from nats.js.api import DeliverPolicy

        async def deliver(msg):
            self._call(callback, msg.metadata.sequence.stream, msg.data)
            await msg.ack()
        return await self._js.subscribe(subject, durable=durable, stream=stream, cb=deliver,
                                        manual_ack=True, deliver_policy=DeliverPolicy.NEW)

    def follow(self, stream, subject, callback):
        """An ordered consumer of the messages stored on ``subject`` from now
        on: ``callback(seq, data)`` on the reactor for each, in stream order;
        fires a handle for ``unsubscribe``."""
        return self._run(self._follow, stream, subject, callback)

    async def _follow(self, stream, subject, callback):
        from nats.js.api import DeliverPolicy

        async def deliver(msg):
            self._call(callback, msg.metadata.sequence.stream, msg.data)
        return await self._js.subscribe(subject, stream=stream, cb=deliver, ordered_consumer=True,
                                        deliver_policy=DeliverPolicy.NEW)

    def last_seq(self, stream):
        """The sequence of the last message stored in ``stream`` (0 if none yet)."""
        return self._run(self._last_seq, stream)

    async def _last_seq(self, stream):
        return (await self._js.stream_info(stream)).state.last_seq

    def kv_put(self, bucket, key, value):
        return self._run(self._kv_put, bucket, key, value)

    async def _kv_put(self, bucket, key, value):
        return await self._kv[bucket].put(key, value)

    def kv_create(self, bucket, key, value):
        """Put ``key`` unless it exists; fires True if it was created."""
        return self._run(self._kv_create, bucket, key, value)

    async def _kv_create(self, bucket, key, value):
        from nats.js.errors import KeyWrongLastSequenceError
        try:
            await self._kv[bucket].create(key, value)
        except KeyWrongLastSequenceError:
            return False
        return True

    def kv_claim(self, bucket, key, value, revision=None):
        """Update ``key`` to ``value`` if its revision is still ``revision``;
        with ``revision`` None, create it, or take it back if it holds
        ``value`` already: fires the new revision, or None if another holds it."""
        return self._run(self._kv_claim, bucket, key, value, revision)

    async def _kv_claim(self, bucket, key, value, revision):
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
        kv = self._kv[bucket]
        try:
            if revision is None:
                try:
                    return await kv.create(key, value)
                except KeyWrongLastSequenceError:
                    try:
                        entry = await kv.get(key)
                    except KeyNotFoundError:
                        return None
                    if entry.value != value:
                        return None
                    revision = entry.revision
            return await kv.update(key, value, last=revision)
        except KeyWrongLastSequenceError:
            return None

    def kv_get(self, bucket, key):
        """The value, or None."""
        d = self.kv_entry(bucket, key)
        d.addCallback(lambda entry: None if entry is None else entry[0])
        return d

    def kv_entry(self, bucket, key):
        """(value, revision), or None."""
        return self._run(self._kv_entry, bucket, key)

    async def _kv_entry(self, bucket, key):
        from nats.js.errors import KeyNotFoundError
        try:
            entry = await self._kv[bucket].get(key)
        except KeyNotFoundError:
            return None
        return entry.value, entry.revision

    def kv_delete(self, bucket, key, revision=None):
        """Delete ``key``; with ``revision``, only if that is still the key's
        revision (nobody wrote it since): fires whether it was deleted."""
        return self._run(self._kv_delete, bucket, key, revision)

    async def _kv_delete(self, bucket, key, revision):
        from nats.js.errors import APIError
        try:
            return await self._kv[bucket].delete(key, last=revision)
        except APIError as e:
            if revision is not None and e.err_code in WRONG_LAST_SEQUENCE:
                return False
            raise

    def kv_items(self, bucket):
        """{key: value} of every live key."""
        return self._run(self._kv_items, bucket)

    async def _kv_items(self, bucket):
        from nats.js.errors import NoKeysError, KeyNotFoundError
        kv = self._kv[bucket]
        try:
            keys = await kv.keys()
        except NoKeysError:
            return {}
        items = {}
        for key in keys:
            try:
                items[key] = (await kv.get(key)).value
            except KeyNotFoundError:
                continue
        return items


class _Handoff:
    """Calls queued by one thread for another: ``wake(run)`` (which makes the
    other thread call ``run``) only when the queue was empty."""

    log = Logger()

    def __init__(self, wake):
        self._wake = wake
        self._lock = threading.Lock()
        self._queue = []

    def put(self, fn, *args):
        with self._lock:
            self._queue.append((fn, args))
            first = len(self._queue) == 1
        if first:
            self._wake(self._run)

    def _run(self):
        with self._lock:
            queue, self._queue = self._queue, []
        for fn, args in queue:
            try:
                fn(*args)
            except Exception:
                self.log.failure("cluster engine: {fn} failed", fn=getattr(fn, "__name__", fn))


def _fire(d, future):
    if future.cancelled():
        d.errback(Failure(defer.CancelledError()))
    elif future.exception() is not None:
        d.errback(Failure(future.exception()))
    else:
        d.callback(future.result())

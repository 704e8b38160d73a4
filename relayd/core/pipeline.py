"""Admission: dedup -> journal append -> a ``DurableEvent``.

A message enters by ``submit`` (a local client) or ``accept_remote``
(federation, bridges).  A new one is routed at once by the ``IDelivery``
(its copies are held until ``flush``, so they may go out before it is
durable; recipients drop repeats by msg_id), then journaled as one record
(with its ``(origin, seq)`` from the ``ISequencer`` and the persistent
members it was stored for).  Once durable: history, the subscribers'
``DurableEvent``, the sender's ack.  The journal tells the pipeline once per
batch (``journaled``), not once per message.  It knows no sessions.
"""
from collections import deque

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relayd.core import message
from relayd.core.interfaces import DurableEvent, IDurableEventSubscriber, IRecorder
from relayd.core.membership import member_record
from relayd.core.metrics import LatencyHistogram
from relayd.ops.ratelog import LogLimiter, repeats


@implementer(IRecorder)
class Pipeline:
    log = Logger()

    def __init__(self, relay_id, clock, dedup, history):
        self.relay_id = relay_id
        self.clock = clock
        self.dedup = dedup
        self.history = history
        self._journal = None           # IJournal, set by the daemon
        self._journaling = deque()     # what _durable needs, per entry being journaled
        self.delivery = None           # IDelivery
        self.sequencer = None          # ISequencer (federation): (origin, seq) in each record
        self.subscribers = []          # IDurableEventSubscriber, in subscription order
        self._waiting = {}             # msg_id -> [done(result)] of a pending message and its retries
        self._last_timestamp = 0.0
        self._log_limiter = LogLimiter(clock)     # a full disk fails every message alike
        self.accepted = {"client": 0, "federation": 0}
        self.received = 0
        self.journal_failures = 0
        self.latency = LatencyHistogram()

    @property
    def journal(self):
        return self._journal

    @journal.setter
    def journal(self, journal):
        journal.listener = self.journaled
        self._journal = journal

    def subscribe(self, subscriber):
        """Tell ``subscriber`` (an ``IDurableEventSubscriber``) of every
        message once durable and every directed message once delivered."""
        if not IDurableEventSubscriber.providedBy(subscriber):
            raise TypeError(f"{subscriber!r} does not provide IDurableEventSubscriber")
        self.subscribers.append(subscriber)

    def holds(self, msg_id):
        """True if ``msg_id`` is in the dedup window (accepted, or being journaled)."""
        return msg_id in self.dedup

    def unsettled(self):
        """The ids of messages admitted but not yet durable (a checkpoint
        leaves them out of the dedup window)."""
        return self._waiting.keys()

    # --- admission --------------------------------------------------------------

    def submit(self, sender, to, body, room=None, nonce=None, done=None):
        """Accept a message from the local client ``sender``: a Deferred
        firing ``(msg_id, duplicate)`` once it is durable (or was known
        already), or failing if the journal failed.  With ``done``, no
        Deferred: ``done`` is called with that result or the Failure."""
        d = None
        if done is None:
            d = defer.Deferred()
            done = d.callback           # a Failure given to callback takes the errback path
        entry, line = message.new_message(sender, to, body, self._timestamp(),
                                          self.relay_id, room=room, nonce=nonce)
        msg_id = entry["msg_id"]
        if self.dedup.admit(msg_id):
            self.accepted["client"] += 1
            self._admit(entry, None, done, (msg_id, False), (msg_id, True), line)
        else:
            waiters = self._waiting.get(msg_id)
            if waiters is None:
                done((msg_id, True))
            else:
                waiters.append(done)
        return d

    def accept_remote(self, entry, source, line=None, done=None):
        """Accept an entry relayed by a peer relay or a bridge (``source``,
        passed on in its ``DurableEvent``; ``line``, the entry's
        ``journal_line`` if the caller has it): a Deferred firing True if it
        was new, False if held already, or failing if the journal failed.
        With ``done``, no Deferred: ``done`` gets that result or the Failure."""
        d = None
        if done is None:
            d = defer.Deferred()
            done = d.callback
        if self.dedup.admit(entry["msg_id"]):
            self.accepted["federation"] += 1
            self._admit(entry, source, done, True, False, line)
        else:
            done(False)
        return d

    def _timestamp(self):
        """The clock, made strictly increasing so that two identical messages
        without a nonce never share a timestamp (and so an id)."""
        now = self.clock.seconds()
        if now <= self._last_timestamp:
            now = self._last_timestamp + 1e-6
        self._last_timestamp = now
        return now

    def _admit(self, entry, source, done, first_result, later_result, line=None):
        """Route and journal a new entry, just admitted to the dedup window
        (``line``: its ``journal_line`` if known).  Once it is durable ``done`` gets ``first_result``, and
        retries that arrived meanwhile ``later_result``, in order; if the
        journal refused it, they get the Failure."""
        msg_id = entry["msg_id"]
        self._waiting[msg_id] = [done]
        if line is None:
            line = message.journal_line(entry)
        held = self.delivery.route(entry, message.delivery_line(line))
        record = message.held_line(line, held) if held else line
        key = None if self.sequencer is None else self.sequencer.message_key(entry)
        if key is not None:
            record = message.sequenced_line(record, key)
        self._journaling.append((entry, line, source, key, self.clock.seconds(),
                                 first_result, later_result))
        try:
            self._journal.add(record)
        except Exception:
            self._journaling.pop()
            self._failed(Failure(), entry)
            self.delivery.flush()

    def journaled(self, count, result):
        """The journal's listener: the next ``count`` entries are durable, or
        ``result`` is the Failure that refused them."""
        pending = self._journaling
        if isinstance(result, Failure):
            for _ in range(count):
                self._failed(result, pending.popleft()[0])
        else:
            now = self.clock.seconds()
            for _ in range(count):
                try:
                    self._durable(now, *pending.popleft())
                except Exception:       # the rest of the batch and the flush go on
                    self._log_limiter.failure(self.log, ("durable",),
                                              "finishing a durable message failed")
        self.delivery.flush()

    def _durable(self, now, entry, line, source, key, started, first_result, later_result):
        self.received += 1
        self.history.add(entry)
        if self.subscribers:
            origin, seq = (entry["seen_by"][0], None) if key is None else key
            event = DurableEvent(entry, line, origin, source, seq)
            for subscriber in self.subscribers:
                try:
                    subscriber.durable(event)
                except Exception:
                    self._subscriber_failed(subscriber, "a durable message")
        self.latency.observe(now - started)
        waiters = self._waiting.pop(entry["msg_id"])
        waiters[0](first_result)
        for done in waiters[1:]:
            done(later_result)

    def _failed(self, failure, entry):
        msg_id = entry["msg_id"]
        self.dedup.discard(msg_id)
        if self.sequencer is not None:
            self.sequencer.refused(entry)
        self.delivery.refused(entry)
        self.journal_failures += 1
        error = failure.getErrorMessage()
        log_it, left_out = self._log_limiter.admit(("message", error))
        if log_it:
            self.log.error("journal write failed for a message from {sender}: {error}{repeats}",
                           sender=entry["from"], error=error, repeats=repeats(left_out))
        for done in self._waiting.pop(msg_id, ()):
            done(failure)

    # --- IRecorder: the other records -------------------------------------------

    def receipt(self, entry, peer):
        now = self.clock.seconds()
        key = None if self.sequencer is None else self.sequencer.receipt_key()
        d = self.journal.append(message.receipt_line(entry["msg_id"], peer, now, key))
        d.addErrback(self._record_failed, "a delivery receipt")
        for subscriber in self.subscribers:
            try:
                subscriber.delivered(entry, peer, now, None if key is None else key[1])
            except Exception:
                self._subscriber_failed(subscriber, "a delivery")

    def _subscriber_failed(self, subscriber, what):
        """A subscriber raised: the others, the acks and the delivery go on,
        so that a bug behind one subscriber cannot hold up the relay."""
        name = type(subscriber).__name__
        self._log_limiter.failure(self.log, ("subscriber", name), "{subscriber} failed on {what}",
                                  subscriber=name, what=what)

    def membership(self, peer, room, joined):
        d = self.journal.append(member_record(peer, room, joined, self.clock.seconds()))
        d.addErrback(self._record_failed, "a room membership")

    def _record_failed(self, failure, what):
        if not failure.check(OSError):
            self.log.failure("could not journal {what}", failure, what=what)
            return
        error = failure.getErrorMessage()
        log_it, left_out = self._log_limiter.admit((what, error))
        if log_it:
            self.log.error("could not journal {what}: {error}{repeats}",
                           what=what, error=error, repeats=repeats(left_out))

    # --- replay -----------------------------------------------------------------

    def restore(self, entry):
        """A message entry read back from the journal."""
        self.dedup.add(entry["msg_id"], entry.get("timestamp"))
        self.history.add(entry)

"""The router: sessions, rooms, dedup, fan-out and store-and-forward.

A message takes one path: ``submit`` (local client) or ``accept_remote``
(federation) -> dedup -> journal -> once durable: history, local delivery,
forwarders.  Sessions are adapters with ``peer_id``, ``address``,
``deliver(line)`` (and optionally ``deliver_lines(lines)``, the same for
several lines at once, and ``writable()``, false while the session's output
is full) and ``close(code, message)``; the router never does I/O.
"""
from twisted.internet import defer
from twisted.logger import Logger

from relayd.core import message
from relayd.core.history import conversation
from relayd.core.metrics import LatencyHistogram, RouterCollector
from relayd.ops.ratelog import LogLimiter, repeats

STORED_CHUNK = 64       # stored messages written at once while a session is writable


class Router:
    log = Logger()

    def __init__(self, relay_id, clock, dedup, mailboxes, history, ownership,
                 retention, registry=None):
        self.relay_id = relay_id
        self.clock = clock
        self.dedup = dedup
        self.mailboxes = mailboxes
        self.history = history
        self.ownership = ownership
        self.retention = retention
        self.journal = None            # set by the daemon: append(line) -> Deferred
        self.forwarders = []           # forward(entry, line, source) after a message is durable
        self.receipt_hooks = []        # hook(entry, peer, timestamp) when a directed message is delivered
        self.sessions = {}             # peer id -> session
        self.members = {}              # room -> set of peer ids
        self._waiting = {}             # msg_id -> [Deferred] for retries of a pending message
        self._held = {}                # session -> [lines] held until its journal batch is done
        self._unsettled = 0            # messages appended to the journal and not yet back
        self.received = 0
        self.delivered = 0
        self._last_timestamp = 0.0
        self._log_limiter = LogLimiter(clock)     # a full disk fails every message alike
        self._metrics(registry)

    def _metrics(self, registry):
        self.accepted = {"client": 0, "federation": 0}
        self.stored = 0
        self.journal_failures = 0
        self.latency = LatencyHistogram()
        if registry is not None:
            registry.register(RouterCollector(self))

    # --- presence ----------------------------------------------------------

    def attach(self, session):
        """Make ``session`` the owner of its id; returns its stored messages
        (still stored: ``deliver_stored`` sends and removes them).

        A previous session with the same id is closed first; its close no
        longer touches the registry (see ``detach``).
        """
        old = self.sessions.get(session.peer_id)
        if old is not None and old is not session:
            self._leave_all(old)
            del self.sessions[session.peer_id]
            old.close("session_replaced", "another connection identified with this id")
        self.sessions[session.peer_id] = session
        return self.mailboxes.peek(session.peer_id)

    def deliver_stored(self, session, stored):
        """Send what ``attach`` returned, in order, with delivery receipts,
        while ``session`` is writable; the rest stays stored, and messages
        directed to the peer are stored behind it, until ``resume``."""
        peer, writable = session.peer_id, getattr(session, "writable", None)
        sent = 0
        while sent < len(stored) and (writable is None or writable()):
            chunk = stored[sent:sent + STORED_CHUNK]
            _deliver(session, [line for _, line in chunk])
            for entry, _ in chunk:
                self.mailboxes.remove(peer, entry["msg_id"])
                self._receipt(entry, peer)
            sent += len(chunk)
        self.delivered += sent

    def resume(self, session):
        """``session`` is writable again: go on with its stored messages."""
        peer = session.peer_id
        if peer in self.mailboxes and self.sessions.get(peer) is session:
            self.deliver_stored(session, self.mailboxes.peek(peer))

    def detach(self, session):
        """Forget ``session`` if (and only if) it still owns its id."""
        self._held.pop(session, None)
        if self.sessions.get(session.peer_id) is session:
            self._leave_all(session)
            del self.sessions[session.peer_id]

    def join(self, session, room):
        self.members.setdefault(room, set()).add(session.peer_id)
        if session.rooms:
            session.rooms.add(room)
        else:
            session.rooms = {room}      # sessions may start with a shared empty frozenset
        return sorted(self.members[room])

    def leave(self, session, room):
        if session.rooms:
            session.rooms.discard(room)
        members = self.members.get(room)
        if members is not None:
            members.discard(session.peer_id)
            if not members:
                del self.members[room]

    def _leave_all(self, session):
        for room in list(session.rooms):
            self.leave(session, room)

    # --- messages ----------------------------------------------------------

    def submit(self, session, to, body, room=None, nonce=None):
        """Accept a message from a local client.

        Returns a Deferred firing ``(msg_id, duplicate)`` once the message is
        durable (or was already known), or failing if the journal failed.
        """
        entry, line = message.new_message(session.peer_id, to, body, self._timestamp(),
                                          self.relay_id, room=room, nonce=nonce)
        msg_id = entry["msg_id"]
        if self.dedup.check(msg_id):
            return self._when_settled(msg_id)
        self.accepted["client"] += 1
        return self._admit(entry, None, (msg_id, False), (msg_id, True), line)

    def unsettled(self):
        """The ids of messages admitted but not yet durable (a checkpoint
        leaves them out of the dedup window)."""
        return self._waiting.keys()

    def _timestamp(self):
        """The clock, made strictly increasing so that two identical messages
        without a nonce never share a timestamp (and so an id)."""
        now = self.clock.seconds()
        if now <= self._last_timestamp:
            now = self._last_timestamp + 1e-6
        self._last_timestamp = now
        return now

    def accept_remote(self, entry, source):
        """Accept an entry relayed by a peer relay; fires True if it was new."""
        msg_id = entry["msg_id"]
        if self.dedup.check(msg_id):
            return defer.succeed(False)
        self.accepted["federation"] += 1
        return self._admit(entry, source, True, False)

    def _when_settled(self, msg_id):
        waiters = self._waiting.get(msg_id)
        if waiters is None:
            return defer.succeed((msg_id, True))
        d = defer.Deferred()
        waiters.append(d)
        return d

    def _admit(self, entry, source, first_result, later_result, line=None):
        """Journal a new entry (``line`` is its ``journal_line`` if known); the
        returned Deferred fires with ``first_result`` once it is durable and
        delivered, and retries that arrive meanwhile get ``later_result``
        after it, in order."""
        msg_id = entry["msg_id"]
        self.dedup.add(msg_id)
        first = defer.Deferred()
        self._waiting[msg_id] = [first]
        if line is None:
            line = message.journal_line(entry)
        self._unsettled += 1
        d = self.journal.append(line)
        d.addCallbacks(self._durable, self._failed,
                       callbackArgs=(entry, line, source, self.clock.seconds(), first_result, later_result),
                       errbackArgs=(entry,))
        return first

    def _durable(self, _, entry, line, source, started, first_result, later_result):
        self._unsettled -= 1
        self.received += 1
        self.history.add(entry)
        self._route(entry, message.delivery_line(line))
        for forwarder in self.forwarders:
            forwarder.forward(entry, line, source)
        self.latency.observe(self.clock.seconds() - started)
        waiters = self._waiting.pop(entry["msg_id"])
        waiters[0].callback(first_result)
        for d in waiters[1:]:
            d.callback(later_result)
        self._release_if_batch_done()

    def _release_if_batch_done(self):
        """Write the held lines once no more messages of this journal batch
        are about to come back.

        The journal calls back a batch's lines one after another in one go;
        holding each session's copies until the last of them turns one
        ``write`` per copy into one per session and batch.  Every line
        appended before the batch went out is back or in this batch, and the
        journal's ``pending`` counts only lines appended since, so
        ``_unsettled - pending`` never exceeds what is left of this batch:
        the lines are written at its end at the latest, and at once when the
        journal answers each line by itself.
        """
        if self._held and self._unsettled <= getattr(self.journal, "pending", 0):
            held, self._held = self._held, {}
            for session, lines in held.items():
                _deliver(session, lines)

    def release(self, session):
        """Write what is held for ``session`` now: call before writing anything
        else to it, so that its stream keeps the order things happened in."""
        lines = self._held.pop(session, None)
        if lines:
            _deliver(session, lines)

    def _hold(self, session, line):
        lines = self._held.get(session)
        if lines is None:
            self._held[session] = [line]
        else:
            lines.append(line)

    def _failed(self, failure, entry):
        self._unsettled -= 1
        self._release_if_batch_done()
        msg_id = entry["msg_id"]
        self.dedup.discard(msg_id)
        self.journal_failures += 1
        error = failure.getErrorMessage()
        log_it, left_out = self._log_limiter.admit(("message", error))
        if log_it:
            self.log.error("journal write failed for a message from {sender}: {error}{repeats}",
                           sender=entry["from"], error=error, repeats=repeats(left_out))
        for d in self._waiting.pop(msg_id, ()):
            d.errback(failure)

    def _route(self, entry, line):
        sender = entry["from"]
        to = entry["to"]
        room = entry.get("room")
        count = 0
        hold = self._hold
        if room is not None:
            sessions = self.sessions
            for peer in self.members.get(room, ()):
                if peer != sender:
                    hold(sessions[peer], line)
                    count += 1
        elif to == message.BROADCAST:
            for peer, session in self.sessions.items():
                if peer != sender:
                    hold(session, line)
                    count += 1
        else:
            session = self.sessions.get(to)
            if session is None or (to in self.mailboxes and to != sender):
                # offline, or what was stored for it is still going out: keep the order
                self.mailboxes.put(to, entry, line)
                self.stored += 1
            elif to != sender:
                hold(session, line)
                self._receipt(entry, to)
                count = 1
        self.delivered += count

    def _receipt(self, entry, peer):
        now = self.clock.seconds()
        d = self.journal.append(message.receipt_line(entry["msg_id"], peer, now))
        d.addErrback(self._receipt_failed)
        for hook in self.receipt_hooks:
            hook(entry, peer, now)

    def _receipt_failed(self, failure):
        if not failure.check(OSError):
            self.log.failure("could not journal a delivery receipt", failure)
            return
        error = failure.getErrorMessage()
        log_it, left_out = self._log_limiter.admit(("receipt", error))
        if log_it:
            self.log.error("could not journal a delivery receipt: {error}{repeats}",
                           error=error, repeats=repeats(left_out))

    # --- journal replay (the journal's consumer) -----------------------------

    def restore(self, record):
        if message.is_message(record):
            self.dedup.add(record["msg_id"], record.get("timestamp"))
            self.history.add(record)
            to = record["to"]
            if "room" not in record and to != message.BROADCAST:
                self.mailboxes.put(to, record, message.delivery_line(message.journal_line(record)))
        elif "receipt" in record:
            self.mailboxes.remove(record.get("to"), record["receipt"])

    def restore_done(self, report):
        self.mailboxes.expire()
        self.log.info("journal replayed: {records} records, {skipped} skipped, "
                      "{stored} messages waiting for {peers} offline peers",
                      records=report.records, skipped=len(report.skipped),
                      stored=self.mailboxes.total(), peers=len(self.mailboxes))

    # --- queries --------------------------------------------------------------

    def visible_history(self, peer_id, room=None, with_peer=None, limit=50):
        """Recent entries ``peer_id`` may read, oldest first, within the
        journal's retention (0: kept forever)."""
        if room is not None:
            key = conversation({"room": room})
        elif with_peer is not None:
            key = conversation({"from": peer_id, "to": with_peer})
        else:
            key = conversation({"to": message.BROADCAST})
        horizon = self.clock.seconds() - self.retention if self.retention else float("-inf")
        return self.history.recent(key, limit, horizon)

    def clients(self):
        now = self.clock.seconds()
        return [{"id": s.peer_id, "address": "%s:%d" % s.address, "dialect": s.dialect,
                 "authenticated": s.authenticated, "rooms": sorted(s.rooms),
                 "connected_for": round(now - s.connected_at, 1)}
                for s in self.sessions.values()]

    def kick(self, peer_id, reason="disconnected by the operator"):
        session = self.sessions.get(peer_id)
        if session is None:
            return False
        session.close("kicked", reason)
        return True

    def rooms(self):
        return {room: sorted(members) for room, members in self.members.items()}

    def stats(self):
        return {"sessions": len(self.sessions), "rooms": len(self.members),
                "messages_in": self.received, "messages_out": self.delivered,
                "dedup_hits": self.dedup.hits, "dedup_window": len(self.dedup),
                "mailbox_messages": self.mailboxes.total(), "mailbox_peers": len(self.mailboxes),
                "mailbox_dropped": self.mailboxes.dropped, "owned_ids": len(self.ownership)}


def _deliver(session, lines):
    many = getattr(session, "deliver_lines", None)
    if many is not None:
        many(lines)
    else:
        for line in lines:
            session.deliver(line)

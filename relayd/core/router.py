"""The router: sessions, rooms, dedup, fan-out and store-and-forward.

A message takes one path: ``submit`` (local client) or ``accept_remote``
(federation, bridges) -> dedup -> journal append and local delivery -> once
durable: history, subscribers (``subscribe``), the sender's ack.  Sessions
provide ``ISession``; the router never does I/O.

A directed message stays in its peer's mailbox until it is settled: a
session that acks (``acknowledged``) settles it when the client acks it, any
other once its bytes reached the kernel (``handed``).  Settling removes it
and journals its receipt; whatever a session had not settled when it went
away is sent again to the next session of that peer.

A room message reaches the members connected at the time; for each
persistent member (``join(..., persist=True)``, see ``membership``) that is
offline, or still reading its stored mail, it is stored in that member's
mailbox like a directed message, and a ``held`` journal record after the
message names those members so that a replay stores it for them again.
"""
import json

from twisted.internet import defer
from twisted.logger import Logger

from relayd.core import message
from relayd.core.history import conversation
from relayd.core.membership import Memberships, is_member_record, member_record
from relayd.core.interfaces import DurableEvent, IDurableEventSubscriber, IPresenceObserver
from relayd.core.metrics import LatencyHistogram, RouterCollector
from relayd.ops.ratelog import LogLimiter, repeats

STORED_CHUNK = 64       # stored messages written at once while a session is writable


class Router:
    log = Logger()

    def __init__(self, relay_id, clock, dedup, mailboxes, history, ownership,
                 retention, registry=None, memberships=None):
        self.relay_id = relay_id
        self.clock = clock
        self.dedup = dedup
        self.mailboxes = mailboxes
        self.history = history
        self.ownership = ownership
        self.retention = retention
        self.journal = None            # set by the daemon: append(line) -> Deferred
        self.subscribers = []          # IDurableEventSubscriber, in subscription order
        self.observers = []            # IPresenceObserver (cluster mode)
        self.sequencer = None          # ISequencer (federation): (origin, seq) in each record
        self.sessions = {}             # peer id -> session
        self.members = {}              # room -> set of peer ids
        self.memberships = memberships if memberships is not None else Memberships(64, 1000)
        self._replayed_room = None     # during replay: the last room message read
        self._waiting = {}             # msg_id -> [Deferred] for retries of a pending message
        self._held = {}                # session -> ([lines], [directed entries]) until flush()
        self._outstanding = {}         # session -> {msg_id: entry} written, not settled
        self._behind = set()           # sessions whose stored mail is not all written yet
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
        (``deliver_stored`` sends them; they stay stored until settled).

        A previous session with the same id is closed first; its close no
        longer touches the registry (see ``detach``).
        """
        old = self.sessions.get(session.peer_id)
        if old is not None and old is not session:
            self._leave_all(old)
            del self.sessions[session.peer_id]
            self._forget(old)
            old.close("session_replaced", "another connection identified with this id")
        self.sessions[session.peer_id] = session
        self._outstanding[session] = {}
        for room in self.memberships.rooms_of(session.peer_id):
            self.join(session, room)
        for observer in self.observers:
            observer.attached(session)
        return self.mailboxes.peek(session.peer_id)

    def deliver_stored(self, session, stored):
        """Send what ``attach`` returned that ``session`` was not sent yet, in
        order, while it is writable; the rest waits, and messages directed to
        the peer queue behind it, until ``resume``."""
        outstanding = self._outstanding.get(session)
        if outstanding is None:
            return
        unsent = [item for item in stored if item[0]["msg_id"] not in outstanding]
        sent = 0
        while sent < len(unsent) and session.writable():
            chunk = unsent[sent:sent + STORED_CHUNK]
            entries = [entry for entry, _ in chunk]
            for entry in entries:
                outstanding[entry["msg_id"]] = entry
            session.deliver_lines([line for _, line in chunk], entries)
            sent += len(chunk)
        if sent < len(unsent):
            self._behind.add(session)
        else:
            self._behind.discard(session)
        self.delivered += sent

    def resume(self, session):
        """``session`` is writable again: go on with its stored messages."""
        if session in self._behind:
            self.deliver_stored(session, self.mailboxes.peek(session.peer_id))

    def handed(self, session, entries):
        """The bytes of these directed messages reached the kernel (for
        sessions that cannot ack): settle them."""
        outstanding = self._outstanding.get(session)
        if outstanding:
            for entry in entries:
                if outstanding.pop(entry["msg_id"], None) is not None:
                    self._settle(session.peer_id, entry)

    def acknowledged(self, session, msg_ids):
        """The client of ``session`` acked these ids: settle those it was sent."""
        outstanding = self._outstanding.get(session)
        if outstanding:
            for msg_id in msg_ids:
                entry = outstanding.pop(msg_id, None)
                if entry is not None:
                    self._settle(session.peer_id, entry)

    def delivered_elsewhere(self, peer, msg_id):
        """Another relay delivered ``msg_id`` to ``peer``: stop keeping it here."""
        self.mailboxes.remove(peer, msg_id)

    def holds(self, msg_id):
        """True if ``msg_id`` is in the dedup window (accepted, or being journaled)."""
        return msg_id in self.dedup

    def _settle(self, peer, entry):
        self.mailboxes.remove(peer, entry["msg_id"])
        self._receipt(entry, peer)

    def detach(self, session):
        """Forget ``session`` if (and only if) it still owns its id; what it
        was sent and did not settle stays stored for the next session."""
        self._held.pop(session, None)
        if self.sessions.get(session.peer_id) is session:
            self._leave_all(session)
            del self.sessions[session.peer_id]
            self._forget(session)
            for observer in self.observers:
                observer.detached(session)

    def _forget(self, session):
        self._outstanding.pop(session, None)
        self._behind.discard(session)

    def join(self, session, room, persist=False):
        """Add ``session`` to ``room``; with ``persist`` its id stays a member
        while offline, until it leaves (raises ``MembershipFull`` past a
        bound).  Returns the connected members."""
        if persist and self.memberships.add(session.peer_id, room):
            self._journal_member(session.peer_id, room, True)
        if room not in self.members:
            self.members[room] = set()
            for observer in self.observers:
                observer.room_opened(room)
        self.members[room].add(session.peer_id)
        if session.rooms:
            session.rooms.add(room)
        else:
            session.rooms = {room}      # sessions may start with a shared empty frozenset
        return sorted(self.members[room])

    def leave(self, session, room):
        """Take ``session`` out of ``room``, and its id for good if it stayed."""
        if self.memberships.discard(session.peer_id, room):
            self._journal_member(session.peer_id, room, False)
        self._drop(session, room)

    def _journal_member(self, peer, room, joined):
        d = self.journal.append(member_record(peer, room, joined, self.clock.seconds()))
        d.addErrback(self._record_failed, "a room membership")

    def _drop(self, session, room):
        if session.rooms:
            session.rooms.discard(room)
        members = self.members.get(room)
        if members is not None:
            members.discard(session.peer_id)
            if not members:
                del self.members[room]
                for observer in self.observers:
                    observer.room_closed(room)

    def _leave_all(self, session):
        for room in list(session.rooms):
            self._drop(session, room)

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

    def subscribe(self, subscriber):
        """Tell ``subscriber`` (an ``IDurableEventSubscriber``) of every
        message once durable and every directed message once delivered."""
        if not IDurableEventSubscriber.providedBy(subscriber):
            raise TypeError(f"{subscriber!r} does not provide IDurableEventSubscriber")
        self.subscribers.append(subscriber)

    def observe(self, observer):
        """Tell ``observer`` (an ``IPresenceObserver``) of each peer attached or
        detached here and each room that gains its first or loses its last
        connected member here."""
        if not IPresenceObserver.providedBy(observer):
            raise TypeError(f"{observer!r} does not provide IPresenceObserver")
        self.observers.append(observer)

    def accept_remote(self, entry, source):
        """Accept an entry relayed by a peer relay or a bridge (``source``,
        passed on in its ``DurableEvent``): deduplicated, journaled and
        delivered as a local one; fires True if it was new, False if held
        already, or fails if the journal failed."""
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
        """Journal a new entry (``line`` is its ``journal_line`` if known) and
        route it now: its copies for connected recipients are held until
        ``flush`` (the protocol that read it calls it once its input is
        handled; at the latest when the entry is durable), so they may go
        out before it is durable (recipients drop repeats by msg_id, should
        a failed write make the sender send it again).  The returned
        Deferred fires with ``first_result`` once it is durable, and
        retries that arrive meanwhile get ``later_result`` after it, in
        order."""
        msg_id = entry["msg_id"]
        self.dedup.add(msg_id)
        first = defer.Deferred()
        self._waiting[msg_id] = [first]
        if line is None:
            line = message.journal_line(entry)
        key = None if self.sequencer is None else self.sequencer.message_key(entry)
        d = self.journal.append(line if key is None else message.sequenced_line(line, key))
        self._route(entry, message.delivery_line(line))
        d.addCallbacks(self._durable, self._failed,
                       callbackArgs=(entry, line, source, key, self.clock.seconds(),
                                     first_result, later_result),
                       errbackArgs=(entry,))
        return first

    def _durable(self, _, entry, line, source, key, started, first_result, later_result):
        self.received += 1
        self.history.add(entry)
        if self.subscribers:
            origin, seq = (entry["seen_by"][0], None) if key is None else key
            event = DurableEvent(entry, line, origin, source, seq)
            for subscriber in self.subscribers:
                subscriber.durable(event)
        self.latency.observe(self.clock.seconds() - started)
        waiters = self._waiting.pop(entry["msg_id"])
        waiters[0].callback(first_result)
        for d in waiters[1:]:
            d.callback(later_result)
        self.flush()

    def flush(self):
        """Write every held copy: one write per session for all the messages
        routed since the last flush."""
        if self._held:
            held, self._held = self._held, {}
            for session, (lines, entries) in held.items():
                session.deliver_lines(lines, entries)

    def release(self, session):
        """Write what is held for ``session`` now: call before writing anything
        else to it, so that its stream keeps the order things happened in."""
        held = self._held.pop(session, None)
        if held is not None:
            session.deliver_lines(*held)

    def _hold(self, session, line, entry=None):
        held = self._held.get(session)
        if held is None:
            held = self._held[session] = ([], [])
        held[0].append(line)
        if entry is not None:
            held[1].append(entry)

    def _failed(self, failure, entry):
        msg_id = entry["msg_id"]
        self.dedup.discard(msg_id)
        if self.sequencer is not None:
            self.sequencer.refused(entry)
        room = entry.get("room")
        if room is not None:
            for peer in self.memberships.members(room):
                self.mailboxes.remove(peer, msg_id)
        elif entry["to"] != message.BROADCAST:
            self.mailboxes.remove(entry["to"], msg_id)
        self.journal_failures += 1
        error = failure.getErrorMessage()
        log_it, left_out = self._log_limiter.admit(("message", error))
        if log_it:
            self.log.error("journal write failed for a message from {sender}: {error}{repeats}",
                           sender=entry["from"], error=error, repeats=repeats(left_out))
        for d in self._waiting.pop(msg_id, ()):
            d.errback(failure)
        self.flush()

    def _route(self, entry, line):
        sender = entry["from"]
        to = entry["to"]
        room = entry.get("room")
        if room is not None or to == message.BROADCAST:
            stored = self._store_for_members(entry, line, room) if room is not None else ()
            # _hold for every reader, inlined: this loop runs once per copy
            held, sessions = self._held, self.sessions
            readers = (((peer, sessions[peer]) for peer in self.members.get(room, ()))
                       if room is not None else sessions.items())
            count = 0
            for peer, session in readers:
                if peer != sender and peer not in stored:
                    lines = held.get(session)
                    if lines is None:
                        held[session] = ([line], [])
                    else:
                        lines[0].append(line)
                    count += 1
        else:
            count = 0
            session = self.sessions.get(to)
            if session is not None and to == sender:
                return
            # stored until settled; written now unless offline, or what was
            # stored for it is still going out (then it keeps its place)
            self.mailboxes.put(to, entry, line)
            if session is None or session in self._behind:
                self.stored += 1
            else:
                self._outstanding[session][entry["msg_id"]] = entry
                self._hold(session, line, entry)
                count = 1
        self.delivered += count

    def _store_for_members(self, entry, line, room):
        """Store a room message for its persistent members that are offline
        or still reading stored mail (they get it from there, in order);
        returns their ids."""
        members = self.memberships.members(room)
        if not members:
            return ()
        sender, sessions, behind = entry["from"], self.sessions, self._behind
        stored = set()
        for peer in members:
            if peer != sender and (peer not in sessions or sessions[peer] in behind):
                self.mailboxes.put(peer, entry, line)
                stored.add(peer)
        if stored:
            self.stored += len(stored)
            record = json.dumps({"held": entry["msg_id"], "for": sorted(stored)}).encode()
            self.journal.append(record).addErrback(self._record_failed, "a stored room message")
        return stored

    def _receipt(self, entry, peer):
        now = self.clock.seconds()
        key = None if self.sequencer is None else self.sequencer.receipt_key()
        d = self.journal.append(message.receipt_line(entry["msg_id"], peer, now, key))
        d.addErrback(self._record_failed, "a delivery receipt")
        for subscriber in self.subscribers:
            subscriber.delivered(entry, peer, now, None if key is None else key[1])

    def _record_failed(self, failure, what):
        if not failure.check(OSError):
            self.log.failure("could not journal {what}", failure, what=what)
            return
        error = failure.getErrorMessage()
        log_it, left_out = self._log_limiter.admit((what, error))
        if log_it:
            self.log.error("could not journal {what}: {error}{repeats}",
                           what=what, error=error, repeats=repeats(left_out))

    # --- journal replay (the journal's consumer) -----------------------------

    def restore(self, record):
        if message.is_message(record):
            record = message.entry_of(record)
            self.dedup.add(record["msg_id"], record.get("timestamp"))
            self.history.add(record)
            to = record["to"]
            if "room" in record:
                self._replayed_room = record
            elif to != message.BROADCAST:
                self.mailboxes.put(to, record, message.delivery_line(message.journal_line(record)))
        elif "receipt" in record:
            self.mailboxes.remove(record.get("to"), record["receipt"])
        elif "held" in record:
            entry = self._replayed_room
            if entry is not None and entry["msg_id"] == record["held"]:
                line = message.delivery_line(message.journal_line(entry))
                for peer in record.get("for", ()):
                    self.mailboxes.put(peer, entry, line)
        elif is_member_record(record):
            self.memberships.restore(record)

    def restore_done(self, report):
        self._replayed_room = None
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

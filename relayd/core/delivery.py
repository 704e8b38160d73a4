"""Delivery: sessions, rooms, mailboxes and output; no journal internals.

The pipeline hands each new message to ``route``: its copies for connected
recipients are held until ``flush`` (one write per session for everything
routed since the last one).  Sessions provide ``ISession``; delivery never
does I/O.

A directed message stays in its peer's mailbox until it is settled: a
session that acks settles it when the client acks it (``acknowledged``),
any other once its bytes reached the kernel (``handed``).  Settling removes
it and records its receipt (``IRecorder.receipt``); whatever a session had
not settled when it went away is sent again to the next session of that
peer.

A room message reaches the members connected at the time; for each
persistent member (``join(..., persist=True)``) that is offline, or still
reading its stored mail, it is stored in that member's mailbox like a
directed message, and ``route`` returns those members: the message's own
journal record names them (``held_for``) so that a replay stores it for
them again.
"""
from twisted.logger import Logger
from zope.interface import implementer

from relayd.core import message
from relayd.core.interfaces import IDelivery, IPresenceObserver
from relayd.core.membership import is_member_record
from relayd.ops.ratelog import LogLimiter

STORED_CHUNK = 64       # stored messages written at once while a session is writable


class _Run:
    """Consecutive copies of one sender's messages to one audience (every
    session, or a room's connected members), held once for all of them:
    each reader's held lines name the run, and ``flush`` joins its lines
    once and writes those bytes to every reader."""

    __slots__ = ("key", "lines", "readers", "_data")

    def __init__(self, key, line):
        self.key = key                 # (room or None, sender)
        self.lines = [line]
        self.readers = 0
        self._data = None

    def data(self):
        if self._data is None:
            self._data = self.lines[0] if len(self.lines) == 1 else b"".join(self.lines)
        return self._data


def _written(lines):
    """Held lines as bytes: each run as its joined copies."""
    if len(lines) == 1:
        return [lines[0].data()] if type(lines[0]) is _Run else lines
    return [line.data() if type(line) is _Run else line for line in lines]


@implementer(IDelivery)
class Delivery:
    log = Logger()

    def __init__(self, clock, mailboxes, memberships, recorder):
        self.clock = clock
        self._log_limiter = LogLimiter(clock)
        self.mailboxes = mailboxes
        self.memberships = memberships
        self.recorder = recorder       # IRecorder: receipts and memberships
        self.sessions = {}             # peer id -> session
        self.members = {}              # room -> set of peer ids
        self.observers = []            # IPresenceObserver (cluster mode)
        self._held = {}                # session -> ([lines and _Runs], [directed entries]) until flush()
        self._run = None               # the _Run the next copies may join
        self._outstanding = {}         # session -> {msg_id: entry} written, not settled
        self._behind = set()           # sessions whose stored mail is not all written yet
        self._replayed_room = None     # during replay: the last room message read
        self.delivered = 0
        self.stored = 0

    # --- presence ----------------------------------------------------------------

    def attach(self, session):
        """Make ``session`` the owner of its id; returns its stored messages
        (``deliver_stored`` sends them; they stay stored until settled).

        A previous session with the same id is closed first; its close no
        longer touches the registry (see ``detach``).
        """
        self._run = None               # a run's readers are the sessions it started with
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

    def detach(self, session):
        """Forget ``session`` if (and only if) it still owns its id; what it
        was sent and did not settle stays stored for the next session."""
        self._run = None
        self._held.pop(session, None)
        if self.sessions.get(session.peer_id) is session:
            self._leave_all(session)
            del self.sessions[session.peer_id]
            self._forget(session)
            for observer in self.observers:
                observer.detached(session)

    def observe(self, observer):
        """Tell ``observer`` (an ``IPresenceObserver``) of each peer attached or
        detached here and each room that gains its first or loses its last
        connected member here."""
        if not IPresenceObserver.providedBy(observer):
            raise TypeError(f"{observer!r} does not provide IPresenceObserver")
        self.observers.append(observer)

    def _forget(self, session):
        self._outstanding.pop(session, None)
        self._behind.discard(session)

    def join(self, session, room, persist=False):
        """Add ``session`` to ``room``; with ``persist`` its id stays a member
        while offline, until it leaves (raises ``MembershipFull`` past a
        bound).  Returns the connected members."""
        if persist and self.memberships.add(session.peer_id, room):
            self.recorder.membership(session.peer_id, room, True)
        self._run = None
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
            self.recorder.membership(session.peer_id, room, False)
        self._drop(session, room)

    def _drop(self, session, room):
        self._run = None
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

    # --- stored mail and settling --------------------------------------------------

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

    def _settle(self, peer, entry):
        self.mailboxes.remove(peer, entry["msg_id"])
        self.recorder.receipt(entry, peer)

    def delivered_elsewhere(self, peer, msg_id):
        """Another relay delivered ``msg_id`` to ``peer``: stop keeping it here."""
        self.mailboxes.remove(peer, msg_id)

    # --- IDelivery -------------------------------------------------------------------

    def route(self, entry, line):
        sender = entry["from"]
        to = entry["to"]
        room = entry.get("room")
        stored = ()
        if room is not None or to == message.BROADCAST:
            if room is not None:
                stored = self._store_for_members(entry, line, room)
            run = self._run
            if not stored and run is not None and run.key == (room, sender):
                # nothing was held for its readers since its last copy
                run.lines.append(line)
                self.delivered += run.readers
                return stored
            self._run = run = None if stored else _Run((room, sender), line)
            item = line if run is None else run
            # held for every reader, inlined: this loop runs once per copy
            held, sessions = self._held, self.sessions
            readers = (((peer, sessions[peer]) for peer in self.members.get(room, ()))
                       if room is not None else sessions.items())
            count = 0
            for peer, session in readers:
                if peer != sender and peer not in stored:
                    lines = held.get(session)
                    if lines is None:
                        held[session] = ([item], [])
                    else:
                        lines[0].append(item)
                    count += 1
            if run is not None:
                run.readers = count
        else:
            count = 0
            session = self.sessions.get(to)
            if session is not None and to == sender:
                return ()
            # stored until settled; written now unless offline, or what was
            # stored for it is still going out (then it keeps its place)
            self.mailboxes.put(to, entry, line)
            if session is None or session in self._behind:
                self.stored += 1
            else:
                self._outstanding[session][entry["msg_id"]] = entry
                self.hold(session, line, entry)
                count = 1
        self.delivered += count
        return stored

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
        self.stored += len(stored)
        return stored

    def refused(self, entry):
        msg_id = entry["msg_id"]
        room = entry.get("room")
        if room is not None:
            for peer in self.memberships.members(room):
                self.mailboxes.remove(peer, msg_id)
        elif entry["to"] != message.BROADCAST:
            self.mailboxes.remove(entry["to"], msg_id)

    def flush(self):
        """Write every held copy: one write per session for all the messages
        routed since the last flush."""
        self._run = None
        if self._held:
            held, self._held = self._held, {}
            for session, (lines, entries) in held.items():
                self._deliver(session, lines, entries)

    def hold(self, session, line, entry=None):
        """Write ``line`` (an ack, say; or the directed message ``entry``) to
        ``session`` with the next flush, after what is held for it already."""
        run = self._run
        if run is not None and session.peer_id != run.key[1]:
            self._run = None    # later copies must not go ahead of this line (the sender gets none)
        held = self._held.get(session)
        if held is None:
            self._held[session] = ([line], [] if entry is None else [entry])
        else:
            held[0].append(line)
            if entry is not None:
                held[1].append(entry)

    def release(self, session):
        """Write what is held for ``session`` now: call before writing anything
        else to it, so that its stream keeps the order things happened in."""
        self._run = None
        held = self._held.pop(session, None)
        if held is not None:
            self._deliver(session, *held)

    def _deliver(self, session, lines, entries):
        """Hand ``session`` its held lines.  If it raises (a bug), its stream
        may be cut anywhere, so it is closed (what it had not settled stays
        stored for the peer's next session) and the other sessions still get
        theirs.  Logged once a minute per error."""
        try:
            session.deliver_lines(_written(lines), entries)
        except Exception:
            self._write_failed(session)

    def _write_failed(self, session):
        self._log_limiter.failure(self.log, ("write",),
                                  "could not write to {peer}'s session; closing it",
                                  peer=session.peer_id[:64])
        try:
            session.close("internal_error", "the relay could not write to this connection")
        except Exception:
            self._log_limiter.failure(self.log, ("close",),
                                      "could not close {peer}'s session after it failed",
                                      peer=session.peer_id[:64])

    # --- replay --------------------------------------------------------------------

    def restore(self, record):
        """A journal record read back: stored mail, receipts, memberships
        (and the ``held`` records of journals older than ``held_for``)."""
        if message.is_message(record):
            to = record["to"]
            if "room" in record:
                self._replayed_room = record
                peers = record.get("held_for")
                if peers:
                    self._store_restored(message.entry_of(record), peers)
            elif to != message.BROADCAST:
                entry = message.entry_of(record)
                self.mailboxes.put(to, entry, message.delivery_line(message.journal_line(entry)))
        elif "receipt" in record:
            self.mailboxes.remove(record.get("to"), record["receipt"])
        elif "held" in record:
            room_record = self._replayed_room
            if room_record is not None and room_record["msg_id"] == record["held"]:
                self._store_restored(message.entry_of(room_record), record.get("for", ()))
        elif is_member_record(record):
            self.memberships.restore(record)

    def _store_restored(self, entry, peers):
        line = message.delivery_line(message.journal_line(entry))
        for peer in peers:
            self.mailboxes.put(peer, entry, line)

    def restore_done(self):
        self._replayed_room = None
        self.mailboxes.expire()

    # --- queries -----------------------------------------------------------------------

    def clients(self):
        now = self.clock.seconds()
        return [{"id": s.peer_id, "address": "%s:%d" % s.address, "dialect": s.dialect,
                 "authenticated": s.authenticated, "rooms": sorted(s.rooms),
                 "connected_for": round(now - s.connected_at, 1)}
                for s in self.sessions.values()]

    def kick(self, peer_id, reason="disconnected by the operator", code="kicked"):
        """Close the session of ``peer_id`` with the error ``code``; whether it had one."""
        session = self.sessions.get(peer_id)
        if session is None:
            return False
        session.close(code, reason)
        return True

    def rooms(self):
        return {room: sorted(members) for room, members in self.members.items()}

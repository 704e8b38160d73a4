"""Durable room membership: the rooms an id stays in while it is offline.

A client joins with ``"persist": true`` to stay a member until it leaves;
room messages sent meanwhile are stored in its mailbox.  Each change is a
journal record (``member_record``) and the whole table is part of every
checkpoint, so it outlives a restart.  Bounded in rooms per id and in
members per room.
"""
import json


class MembershipFull(Exception):
    """A bound is reached; ``code`` and ``str()`` are the client's error."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code = code


def member_record(peer, room, joined, timestamp):
    """The journal record of ``peer`` joining (or leaving) ``room`` for good."""
    return json.dumps({"member": peer, "room": room, "joined": joined,
                       "timestamp": timestamp}).encode()


def is_member_record(record):
    return isinstance(record.get("member"), str) and isinstance(record.get("room"), str)


class Memberships:
    """``room -> {peer}`` and ``peer -> {room}`` of persistent members."""

    def __init__(self, max_rooms_per_peer, max_members_per_room):
        self.max_rooms_per_peer = max_rooms_per_peer
        self.max_members_per_room = max_members_per_room
        self._rooms = {}        # room -> set of peers
        self._peers = {}        # peer -> set of rooms

    def add(self, peer, room):
        """True if ``peer`` became a persistent member of ``room`` now,
        False if it was one; raises ``MembershipFull`` past a bound."""
        rooms = self._peers.get(peer, ())
        if room in rooms:
            return False
        if len(rooms) >= self.max_rooms_per_peer:
            raise MembershipFull("too_many_rooms",
                                 f"an id stays in at most {self.max_rooms_per_peer} rooms; "
                                 "leave one first")
        if len(self._rooms.get(room, ())) >= self.max_members_per_room:
            raise MembershipFull("room_full", f"the room keeps at most "
                                 f"{self.max_members_per_room} members while offline")
        self._put(peer, room)
        return True

    def _put(self, peer, room):
        self._peers.setdefault(peer, set()).add(room)
        self._rooms.setdefault(room, set()).add(peer)

    def discard(self, peer, room):
        """True if ``peer`` was a persistent member of ``room``."""
        rooms = self._peers.get(peer)
        if rooms is None or room not in rooms:
            return False
        rooms.discard(room)
        if not rooms:
            del self._peers[peer]
        members = self._rooms[room]
        members.discard(peer)
        if not members:
            del self._rooms[room]
        return True

    def members(self, room):
        return self._rooms.get(room, ())

    def rooms_of(self, peer):
        return self._peers.get(peer, ())

    def restore(self, record):
        """Apply a ``member_record`` read back from the journal (no bounds:
        they held when it was written)."""
        if record.get("joined"):
            self._put(record["member"], record["room"])
        else:
            self.discard(record["member"], record["room"])

    def snapshot(self):
        """``{peer: [room, ...]}`` for a checkpoint."""
        return {peer: sorted(rooms) for peer, rooms in self._peers.items()}

    def load_snapshot(self, data):
        self._rooms, self._peers = {}, {}
        for peer, rooms in data.items():
            for room in rooms:
                self._put(peer, room)

    def __len__(self):
        return len(self._peers)

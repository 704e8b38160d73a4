"""Test doubles shared by the core and TCP tests."""
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from relayd.core.abuse import AbuseGuard
from relayd.core.dedup import DedupWindow
from relayd.core.history import History
from relayd.core.interfaces import ISession
from relayd.core.mailbox import Mailboxes
from relayd.core.router import Router


class MemoryJournal:
    """Records appended lines; ``hold = True`` keeps them pending until
    ``release()``, which commits them as one batch."""

    def __init__(self):
        self.lines = []
        self.hold = False
        self.fail = False
        self.listener = None
        self._pending = []          # Deferreds, and None for each line given to add()

    def append(self, line):
        self.lines.append(line)
        if self.fail:
            return defer.fail(OSError(28, "No space left on device"))
        d = defer.Deferred()
        self._pending.append(d)
        if not self.hold:
            self.release()
        return d

    def add(self, line):
        self.lines.append(line)
        if self.fail:
            self.listener(1, Failure(OSError(28, "No space left on device")))
            return
        self._pending.append(None)
        if not self.hold:
            self.release()

    def release(self):
        pending, self._pending = self._pending, []
        for d in pending:
            if d is not None:
                d.callback(None)
        added = pending.count(None)
        if added:
            self.listener(added, None)


class MemoryOwnership:
    def __init__(self):
        self.owners = {}

    def owner(self, peer_id):
        return self.owners.get(peer_id)

    def claim(self, peer_id, key):
        return self.owners.setdefault(peer_id, key) == key

    def replace(self, peer_id, key):
        current, self.owners[peer_id] = self.owners.get(peer_id), key
        return current

    def snapshot(self):
        return dict(self.owners)

    def __len__(self):
        return len(self.owners)


@implementer(ISession)
class FakeSession:
    """A router session that records what it is sent; directed messages
    are settled as written unless ``acks`` (then ``router.acknowledged``)."""

    acks = False

    def __init__(self, peer_id, ip="127.0.0.1", port=40000, router=None):
        self.peer_id = peer_id
        self.router = router    # settles what is written (else nothing is settled)
        self.address = (ip, port)
        self.dialect = "json"
        self.authenticated = False
        self.rooms = set()
        self.connected_at = 0.0
        self.lines = []
        self.closed = None

    def writable(self):
        return True

    def deliver_lines(self, lines, receipts=()):
        for data in lines:                 # an item may hold several lines
            self.lines.extend(data.splitlines(keepends=True))
        if receipts and not self.acks and self.router is not None:
            self.router.handed(self, receipts)

    def close(self, code, text, **extra):
        self.closed = code


def make_router(clock=None, relay_id="relay1", retention=7 * 86400, **limits):
    clock = clock or Clock()
    router = Router(
        relay_id, clock,
        DedupWindow(clock, limits.get("dedup_window", 3600), limits.get("dedup_max", 1000)),
        Mailboxes(clock, limits.get("mailbox_max", 100), limits.get("mailbox_ttl", 86400)),
        History(limits.get("history", 50)), MemoryOwnership(), retention=retention)
    router.journal = MemoryJournal()
    return router


def make_guard(clock, messages=10, per_seconds=10, ban_after=5, ban_window=60, ban_duration=600):
    return AbuseGuard(clock, messages, per_seconds, ban_after, ban_window, ban_duration)

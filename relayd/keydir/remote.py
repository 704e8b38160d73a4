"""Key directory look-ups over federation, for ids homed on another relay.

A relay asks every peer it has a link up to with
``{"type": "keys_fetch", "qid": n, "id": ID, "opk": bool}``; each answers from
its own directory only (one hop) with ``{"type": "keys", "qid": n, "record":
<bundle or null>}``.  The first bundle wins; when every asked peer said null,
or after ``timeout`` seconds, the answer is None.  The client checks the
prekey signatures itself, so a peer relay can no more forge a bundle than
the home relay can.
"""
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from relayd.core.message import valid_peer_id

MAX_PENDING = 1000


class RemoteKeys:
    log = Logger()

    def __init__(self, hub, directory, clock, timeout=5.0):
        self.hub = hub
        self.directory = directory
        self.clock = clock
        self.timeout = timeout
        self._next = 0
        self._pending = {}          # qid -> [Deferred, peers still to answer, timer]
        hub.handlers["keys_fetch"] = self.answer
        hub.handlers["keys"] = self.answered

    def fetch(self, peer_id, take_opk=True):
        """A Deferred of a bundle for ``peer_id`` from a peer relay, or None."""
        d = Deferred()
        names = [name for name, links in self.hub.links.items() if links]
        if not names or len(self._pending) >= MAX_PENDING:
            d.callback(None)
            return d
        self._next += 1
        qid = self._next
        timer = self.clock.callLater(self.timeout, self._finish, qid, None)
        self._pending[qid] = [d, set(names), timer]
        for name in names:
            self.hub.links[name][0].send({"type": "keys_fetch", "qid": qid, "id": peer_id,
                                          "opk": bool(take_opk)})
        return d

    def answer(self, link, frame):
        """A peer asks for one of our ids."""
        qid, peer_id = frame.get("qid"), frame.get("id")
        if type(qid) is not int or valid_peer_id(peer_id) is not None:
            link.send({"type": "error", "error": "bad_item",
                       "message": "keys_fetch needs qid and id"})
            return
        record = self.directory.fetch(peer_id, take_opk=frame.get("opk") is True)
        link.send({"type": "keys", "qid": qid, "record": record})

    def answered(self, link, frame):
        entry = self._pending.get(frame.get("qid")) if type(frame.get("qid")) is int else None
        if entry is None or link.name not in entry[1]:
            return
        entry[1].discard(link.name)
        record = _bundle(frame.get("record"))
        if record is not None:
            self._finish(frame["qid"], record)
        elif not entry[1]:
            self._finish(frame["qid"], None)

    def _finish(self, qid, record):
        entry = self._pending.pop(qid, None)
        if entry is None:
            return
        d, _, timer = entry
        if timer.active():
            timer.cancel()
        d.callback(record)


def _bundle(record):
    """The fields of a bundle a peer sent, or None (the client checks the keys)."""
    if not isinstance(record, dict):
        return None
    out = {k: record.get(k) for k in ("id", "ik", "spk", "opk", "opks_left", "relay")}
    return out if isinstance(out["ik"], str) and isinstance(out["spk"], dict) else None

"""The hub: forwards items over the up links and takes items in.

Items are messages and delivery receipts, each named by ``(origin, seq)``.
Every item is flooded: a relay sends what it accepts to every up link,
except the peer it came from and peers already in the message's
``seen_by``, and drops anything it already holds (dedup when forwarding).
A message is not forwarded once ``seen_by`` has ``max_hops`` relays.
Receipts flood the same way, so that a message stored for a peer that is
offline everywhere leaves every mailbox once one relay has delivered it.
A link whose queue holds ``link_buffer`` bytes gets no more items until it
has drained; then its peer is told to catch up (``caught_up``), and reads
what it missed from the journal, one ``sync_batch`` at a time.
"""
import json
from collections import OrderedDict, deque
from functools import partial

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relayd.core import message
from relayd.core.interfaces import IDurableEventSubscriber, ISequencer
from relayd.federation import index as fed_index
from relayd.federation.catchup import CatchUpServer
from relayd.federation.frames import (BadFrame, BadItem, check_entry, check_receipt,
                                      check_sync, item_key, msg_frame, receipt_frame,
                                      relayed_line)
from relayd.federation.metrics import PeerStats, peer_rows
from relayd.names import shown
from relayd.ops.ratelog import LogBudget, LogLimiter, repeats

RECENT_ITEMS = 10000
CHECKPOINT_EVERY = 1000       # items between two cursor checkpoints in the journal
EARLY_RECEIPTS = 10000


@implementer(IDurableEventSubscriber, ISequencer)
class Hub:
    log = Logger()

    def __init__(self, relay_id, router, journal, index, clock, file_pool, metrics, settings):
        self.relay_id = relay_id
        self.router = router
        self.journal = journal
        self.index = index
        self.clock = clock
        self.file_pool = file_pool
        self.metrics = metrics
        self.settings = settings       # the [federation] section
        self.identity = None           # set when the service starts
        self.peers = {}                # name -> Peer (the trusted set)
        self.links = {}                # name -> [Link] that are up, oldest first
        self._stats = metrics.stats    # name -> PeerStats (what /metrics reads)
        self.recent = deque(maxlen=RECENT_ITEMS)   # items not necessarily on disk yet
        self._pending = {}             # msg_id -> (origin, seq) until the router journaled it
        self._early = OrderedDict()    # msg_id -> receipt record, for receipts that beat their message
        self.hop_limited = 0
        self._since_checkpoint = 0
        self._holes = set()            # (origin, low) with items above low, at the last repair()
        self._retrying = set()         # links that will be asked to resend after a journal failure
        self.catchup = CatchUpServer(self)
        self.handlers = {}             # extra frame type -> handler(link, frame)
        self.bad_frame_log = LogBudget(clock, self.log, "error or malformed federation frames",
                                       counted_in="relayd_federation_bad_frames")
        self.refusal_log = LogBudget(clock, self.log, "refused federation handshakes",
                                     counted_in="relayd_federation_handshake_failures")
        self._log_limiter = LogLimiter(clock)   # a full disk fails every record alike

    def find_peer(self, name):
        return self.peers.get(name)

    def peer_stats(self, name):
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = PeerStats()
        return stats

    # --- links --------------------------------------------------------------------

    def link_up(self, link):
        """Register an authenticated link; the first one to a peer asks it to catch us up."""
        name = link.peer.name
        links = self.links.setdefault(name, [])
        links.append(link)
        stats = self.peer_stats(name)
        stats.links += 1
        stats.connects += 1
        if stats.since is None:
            stats.since = self.clock.seconds()
        self.log.info("federation: link to {peer} up ({address})", peer=name,
                      address=link.address())
        if len(links) == 1:
            self.ask_sync(link)

    def ask_sync(self, link, have=None):
        link.sync_have = self.index.wants(link.ranges) if have is None else have
        link.send({"type": "sync", "have": link.sync_have})

    def link_down(self, link, why):
        """Forget a link; if another link to the peer remains, catch up over it
        (what was queued on the lost one may not have arrived)."""
        name = link.peer.name
        links = self.links.get(name, [])
        if link in links:
            links.remove(link)
        if links:
            self.ask_sync(links[0])
        else:
            self.links.pop(name, None)
        self.catchup.forget(link)
        stats = self.peer_stats(name)
        stats.links -= 1
        stats.last_error = why
        if not stats.links:
            stats.since = None
            if name not in self.peers:
                self._forget(name)          # the last link of a removed peer
        self.log.info("federation: link to {peer} down: {why}", peer=name, why=why)

    def drop_peer(self, name):
        """Close every link of a peer that is no longer trusted; a removed peer's
        counters and metric series go with its last link."""
        links = list(self.links.get(name, ()))
        for link in links:
            link.fail("not_a_peer", "this relay no longer lists you as a peer")
        if not links and name not in self.peers:
            self._forget(name)

    def _forget(self, name):
        self.metrics.forget(name)

    def _send(self, kind, skip, seen_by, make, *args):
        """Send the frame ``make(*args)`` to every up peer not in ``skip`` or
        ``seen_by``; it is made once, and only if one of them takes it."""
        limit = self.settings.link_buffer
        data = None
        for name, links in self.links.items():
            if name in skip or name in seen_by:
                continue
            link = links[0]
            if link.skipped or link.queued >= limit:
                self._behind(link, kind)
                continue
            if data is None:
                data = make(*args)
            link.send_raw(data)
            self.peer_stats(name).sent[kind] += 1

    def _behind(self, link, kind):
        """Leave an item to catch-up: ``link``'s queue is full (or was, and
        has not drained yet)."""
        name = link.name
        if not link.skipped:
            log_it, left_out = self._log_limiter.admit(("behind", name))
            if log_it:
                self.log.warn("federation: {peer} reads slower than items arrive: {queued} "
                              "bytes wait for it; it gets further items by catch-up once it "
                              "has read them{repeats}", peer=name, queued=link.queued,
                              repeats=repeats(left_out))
        link.skipped += 1
        self.metrics.items_behind.labels(name, kind).inc()

    def caught_up(self, link):
        """``link`` drained after items were left out: have its peer ask for them
        (a ``synced`` it did not ask for; ``skipped`` makes a relay ask even
        if its cursors did not move, and relays before it ask if they did)."""
        skipped, link.skipped = link.skipped, 0
        link.send({"type": "synced", "sent": 0, "more": True, "skipped": skipped})

    # --- ISequencer: the (origin, seq) in the router's records ----------------------

    def message_key(self, entry):
        """A peer's item keeps the key it came with; any other gets our next seq."""
        key = self._pending.get(entry["msg_id"])
        if key is None:
            key = self._pending[entry["msg_id"]] = (self.relay_id, self.index.next_own())
        return key

    def receipt_key(self):
        return self.relay_id, self.index.next_own()

    def refused(self, entry):
        """An own seq given to a refused message will never exist: journal it
        as lost, and tell peers that ask for it (a peer's item is asked for
        again by ``_refused``)."""
        key = self._pending.pop(entry["msg_id"], None)
        if key is not None and key[0] == self.relay_id:
            self.index.never(key[1], key[1])
            self._record(fed_index.lost_line(self.relay_id, key[1], key[1]))

    # --- IDurableEventSubscriber: the router's events ------------------------------

    def durable(self, event):
        """A message and its seq are durable here: flood it."""
        entry, line, source = event.entry, event.line, event.source
        msg_id = entry["msg_id"]
        self._pending.pop(msg_id, None)
        origin, seq = event.origin, event.seq
        self._count_item()
        self.recent.append((origin, seq, "m", entry))
        early = self._early.pop(msg_id, None)
        if early is not None:
            # the receipt came first: take the message back out of the mailbox, and
            # journal the receipt again after it so that a replay does the same
            self.delivered_elsewhere(early["to"], msg_id)
            self._record(json.dumps(early).encode())
        self._flood(origin, seq, entry, line, (source.peer.name,) if source is not None else ())

    def _flood(self, origin, seq, entry, line, skip=()):
        """Send a message to every up link but ``skip``'s, unless it has
        ``max_hops`` relays in its ``seen_by``."""
        if len(entry["seen_by"]) >= self.settings.max_hops:
            self.hop_limited += 1
            self.metrics.hop_limited.inc()
            return
        self._send("messages", skip, entry["seen_by"], msg_frame, origin, seq, line)

    def delivered_elsewhere(self, peer, msg_id):
        """A peer relay delivered ``msg_id`` to ``peer``: no mailbox here keeps it."""
        self.router.delivered_elsewhere(peer, msg_id)

    def delivered(self, entry, peer, timestamp, seq):
        """A directed message reached its peer here (the router journaled the
        receipt with ``seq``): flood the receipt."""
        self._receipt(entry["msg_id"], peer, timestamp, self.relay_id, seq, None, journaled=True)

    def _receipt(self, msg_id, peer, timestamp, origin, seq, source, journaled=False):
        record = message.receipt_record(msg_id, peer, timestamp, (origin, seq))
        if not journaled:
            self._record(json.dumps(record).encode())
        self._count_item()
        self.recent.append((origin, seq, "r", record))
        skip = (source.peer.name,) if source is not None else ()
        self._send("receipts", skip, (), receipt_frame, origin, seq, msg_id, peer, timestamp)

    def _count_item(self):
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self.checkpoint()

    def durable_snapshot(self):
        """The index's snapshot without the items whose journal record is
        still being written (for a checkpoint, or another node of a cluster)."""
        return self.index.snapshot(exclude=self._pending.values())

    def checkpoint(self):
        """Journal every origin's watermark (see ``index.checkpoint_line``)."""
        self._since_checkpoint = 0
        self._record(fed_index.checkpoint_line(self.index.cursors))

    def _record(self, line):
        d = self.journal.append(line)
        d.addErrback(self._record_failed)

    def _record_failed(self, failure):
        if not failure.check(OSError):
            self.log.failure("federation: could not journal a record", failure)
            return
        error = failure.getErrorMessage()
        log_it, left_out = self._log_limiter.admit(error)
        if log_it:
            self.log.error("federation: could not journal a record: {error}{repeats}",
                           error=error, repeats=repeats(left_out))

    # --- frames from links -----------------------------------------------------------

    def receive(self, link, frame, line=None):
        """A frame from ``link``; ``line``, the bytes it was parsed from (a msg
        frame's entry is journaled from them when they are in the journal's form)."""
        kind = frame["type"]
        try:
            if kind == "msg":
                self._receive_msg(link, frame, line)
            elif kind == "receipt":
                self._receive_receipt(link, frame)
            elif kind == "sync":
                check_sync(frame)
                self.catchup.request(link, frame)
            elif kind == "synced":
                self._synced(link, frame)
            elif kind == "ping":
                link.send({"type": "pong"})
            elif kind == "error":
                if self.bad_frame_log.allow(link.name):
                    self.log.warn("federation: {peer} reports {error}: {text}", peer=link.name,
                                  error=shown(frame.get("error"), 64),
                                  text=shown(frame.get("message")))
            elif kind in self.handlers:
                self.handlers[kind](link, frame)
            elif kind != "pong":
                link.send({"type": "error", "error": "unknown_type",
                           "message": f"unknown frame type {shown(kind, 64)!r}"})
        except BadItem as e:
            self.metrics.bad_frames.labels(link.name).inc()
            if self.bad_frame_log.allow(link.name):
                self.log.warn("federation: bad {kind} frame from {peer}: {why}",
                              kind=shown(kind, 64), peer=link.name, why=str(e))
            link.send({"type": "error", "error": e.code, "message": str(e)})

    def _synced(self, link, frame):
        """Ask for the next round, unless this one changed nothing in what we
        would ask with: the answer would be the same (a hole no peer can fill,
        with more seqs held above it than a sync lists), again and again."""
        lost = frame.get("lost")
        if lost is not None:
            self._lost(link, lost)
        if frame.get("more"):
            have = self.index.wants(link.ranges)
            if have != link.sync_have or frame.get("skipped"):
                self.ask_sync(link, have)

    def _lost(self, link, lost):
        """The peer says its own seqs in ``lost`` (``[[first, last], ...]``)
        will never exist: record the ones we lack once, and stop asking."""
        if not isinstance(lost, list) or len(lost) > fed_index.MAX_LOST_KEPT:
            raise BadFrame(f"synced lost must be a list of at most {fed_index.MAX_LOST_KEPT} runs")
        previous = 0
        for run in lost:
            if not (isinstance(run, list) and len(run) == 2
                    and all(type(n) is int for n in run) and previous < run[0] <= run[1]):
                raise BadFrame("synced lost runs are [first, last], increasing, from seq 1")
            previous = run[1]
        origin = link.name
        filled = self.index.fill_lost(origin, lost)
        for first, last in filled:
            self._record(fed_index.lost_line(origin, first, last))
        if filled:
            shown_runs = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in filled[:10])
            self.log.warn("federation: {peer} says its items {ranges} will never exist (its "
                          "journal refused them); recorded as lost, not asked for again",
                          peer=origin, ranges=shown_runs + (" ..." if len(filled) > 10 else ""))

    def _held(self, stats, origin, seq, kind):
        """Count an item from the peer of ``stats``: True if held already."""
        stats.received[kind] += 1
        if origin == self.relay_id and not self.index.own_plausible(seq):
            raise BadItem(f"seq {seq} of this relay's own items is far beyond any it issued")
        if self.index.has(origin, seq):
            stats.dedup_hits += 1
            return True
        self.index.add(origin, seq)
        return False

    def _receive_msg(self, link, frame, line):
        origin, seq = item_key(frame)
        entry = frame.get("entry")
        check_entry(entry)
        stats = self.peer_stats(link.name)
        if self._held(stats, origin, seq, "messages"):
            return
        stats.lag = max(0.0, self.clock.seconds() - entry.get("timestamp", 0))
        appended = None
        if self.relay_id not in entry["seen_by"]:
            entry["seen_by"].append(self.relay_id)
            appended = self.relay_id
        msg_id = entry["msg_id"]
        if msg_id in self._pending:
            return          # the same message under another seq is being journaled
        self._pending[msg_id] = (origin, seq)
        if line is not None:
            line = relayed_line(line, entry, appended)
        self.router.accept_remote(entry, link, line,
                                  partial(self._accepted, link, origin, seq, msg_id))

    def _accepted(self, link, origin, seq, msg_id, new):
        """The router's answer for a peer's item: True (new), False (held
        already) or the journal's Failure."""
        if isinstance(new, Failure):
            self._refused(new, link, origin, seq, msg_id)
        elif not new:       # held already (e.g. a crash lost its seq record): record the seq
            self._pending.pop(msg_id, None)
            self._record(fed_index.companion_line(origin, seq, msg_id))
            self.peer_stats(link.name).dedup_hits += 1

    def _refused(self, failure, link, origin, seq, msg_id):
        """The journal failed: forget the item and ask the peer again a little later."""
        self._pending.pop(msg_id, None)
        self.index.discard(origin, seq)
        error = failure.getErrorMessage()
        log_it, left_out = self._log_limiter.admit(("accept", error))
        if log_it:
            self.log.error("federation: could not accept {origin}/{seq}: {error}{repeats}",
                           origin=origin, seq=seq, error=error, repeats=repeats(left_out))
        if link not in self._retrying:
            self._retrying.add(link)
            self.clock.callLater(self.settings.keepalive, self._retry, link)

    def _retry(self, link):
        self._retrying.discard(link)
        if link.state == "up":
            self.ask_sync(link)

    def _receive_receipt(self, link, frame):
        origin, seq = item_key(frame)
        check_receipt(frame)
        msg_id, peer, timestamp = frame.get("msg_id"), frame.get("to"), frame.get("timestamp")
        if self._held(self.peer_stats(link.name), origin, seq, "receipts"):
            return
        self.delivered_elsewhere(peer, msg_id)
        if not self.router.holds(msg_id) or msg_id in self._pending:
            self._early[msg_id] = message.receipt_record(msg_id, peer, timestamp, (origin, seq))
            if len(self._early) > EARLY_RECEIPTS:
                self._early.popitem(last=False)
        self._receipt(msg_id, peer, timestamp, origin, seq, link)

    def peer_rows(self):
        return peer_rows(self.peers, self._stats, self.clock.seconds())

    def repair(self):
        """Ask every peer again when a hole in a cursor outlived one call (an item
        lost in a dropped link, refused by a full disk, or stopped by max_hops)."""
        holes = {(origin, c.low) for origin, c in self.index.cursors.items() if c.above}
        lasting, self._holes = holes & self._holes, holes
        everyone = all(self.links.get(name) for name in self.peers)
        for origin, first, last in self.index.lasting(lasting, everyone):
            self._record(fed_index.lost_line(origin, first, last))
            self.log.warn("federation: items {first}..{last} of {origin} are held by no peer "
                          "after {rounds} repair rounds; recorded as lost, not asked for again",
                          origin=origin, first=first, last=last, rounds=fed_index.GIVE_UP_ROUNDS)
            lasting.discard((origin, first - 1))
        if lasting:
            for links in self.links.values():
                self.ask_sync(links[0])
        return bool(lasting)

    def sequence_leftovers(self):
        """Give a seq to own items the journal holds without one (a crash, or
        a journal older than federation); returns how many."""
        leftovers, self.index.unsequenced = self.index.unsequenced, {}
        for key, record in leftovers.items():
            seq = self.index.next_own()
            if key[0] == "m":
                self._record(fed_index.companion_line(self.relay_id, seq, record["msg_id"]))
                self.recent.append((self.relay_id, seq, "m", record))
            else:
                receipt = message.receipt_record(record["receipt"], record.get("to"),
                                                 record.get("timestamp", 0), (self.relay_id, seq))
                self._record(json.dumps(receipt).encode())
                self.recent.append((self.relay_id, seq, "r", receipt))
        return len(leftovers)

"""Load against a relay that is killed (SIGKILL) at random moments.

Raw-socket clients on one selector loop: pipelining senders of directed
messages (with nonces), recipients that stay online (JSON lines with acks,
and a seed-000 client that cannot ack), and recipients that stay offline
until the end.  ``CrashLoad.round`` runs the load until a random moment,
kills the daemon while traffic flows, and keeps reading what the sockets
still hold (an ack the daemon wrote before it died counts).  ``collect``
connects every recipient to the last, healthy daemon and reads what is
stored for it.  ``lost()`` is every acked message its recipient never got.
Used by tests/test_crash.py (CI) and bench/crash.py (longer runs).
"""
import json
import random
import selectors
import socket
import time

IN_FLIGHT = 500         # sends a sender keeps unacked
READ_SIZE = 4096        # recipients read little at a time through a small socket
                        # buffer, so that the relay's side holds unsent bytes


class _Conn:
    def __init__(self, load, role, peer_id, port):
        self.load, self.role, self.peer_id = load, role, peer_id
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if role != "sender":
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READ_SIZE)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.inbox = b""
        self.outbox = b""
        self.open = True
        self.unacked = {}           # nonce -> recipient (senders)
        self.welcomed = role == "legacy"    # seed-000 clients get no welcome
        if role == "legacy":
            self.write(peer_id.encode() + b"\n")
        else:
            hello = {"type": "hello", "id": peer_id}
            if role == "reader":
                hello["acks"] = True
            self.write(json.dumps(hello).encode() + b"\n")
        load.selector.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)

    def write(self, data):
        self.outbox += data

    def pump_out(self):
        if self.role == "sender":
            self.load.fill(self)
        while self.outbox:
            try:
                sent = self.sock.send(self.outbox)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            self.outbox = self.outbox[sent:]

    def pump_in(self):
        try:
            data = self.sock.recv(1 << 16 if self.role == "sender" else READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        *lines, self.inbox = (self.inbox + data).split(b"\n")
        ids = []
        for line in lines:
            obj = json.loads(line)
            if obj.get("type") == "message":
                self.load.got(self.peer_id, obj["msg_id"])
                ids.append(obj["msg_id"])
            elif obj.get("type") == "welcome":
                self.welcomed = True
            elif obj.get("type") == "ack":
                self.load.was_acked(obj["msg_id"], self.unacked.pop(obj["nonce"]))
        if ids and self.role == "reader":
            self.write(json.dumps({"type": "ack", "ids": ids}).encode() + b"\n")

    def close(self):
        if self.open:
            self.open = False
            self.load.selector.unregister(self.sock)
            self.sock.close()


class CrashLoad:
    """``readers`` online acking recipients, ``legacy`` online seed-000 ones,
    ``offline`` recipients that connect only in ``collect``."""

    def __init__(self, senders=2, readers=2, legacy=1, offline=2, seed=None):
        self.random = random.Random(seed)
        self.senders = [f"sender{i}" for i in range(senders)]
        self.readers = [f"reader{i}" for i in range(readers)]
        self.legacy = [f"seed{i}" for i in range(legacy)]
        self.offline = [f"away{i}" for i in range(offline)]
        self.acked = {}             # msg_id -> recipient
        self.received = {}          # recipient -> {msg_id}
        self._missing = set()       # acked msg_ids their recipient has not got (yet)
        self.selector = selectors.DefaultSelector()
        self._counter = 0

    def was_acked(self, msg_id, to):
        self.acked[msg_id] = to
        if msg_id not in self.received.get(to, ()):
            self._missing.add(msg_id)

    def got(self, peer, msg_id):
        self.received.setdefault(peer, set()).add(msg_id)
        if self.acked.get(msg_id) == peer:
            self._missing.discard(msg_id)

    def fill(self, conn):
        recipients = self.readers + self.legacy + self.offline
        while len(conn.unacked) < IN_FLIGHT:
            self._counter += 1
            nonce = f"{conn.peer_id}-{self._counter}"
            to = self.random.choice(recipients)
            conn.unacked[nonce] = to
            conn.write(json.dumps({"type": "send", "to": to, "body": f"m{self._counter}",
                                   "nonce": nonce}).encode() + b"\n")

    def _connect(self, port, roles):
        return [_Conn(self, role, peer, port) for role, peers in roles for peer in peers]

    def _loop(self, conns, until):
        while any(c.open for c in conns) and not until():
            for key, events in self.selector.select(0.05):
                conn = key.data
                if events & selectors.EVENT_READ and conn.open:
                    conn.pump_in()
                if events & selectors.EVENT_WRITE and conn.open:
                    conn.pump_out()

    def round(self, port, kill, run_for):
        """Load for ``run_for`` seconds, ``kill()`` the daemon, read what is left."""
        conns = self._connect(port, (("reader", self.readers), ("legacy", self.legacy),
                                     ("sender", self.senders)))
        deadline = time.monotonic() + run_for
        self._loop(conns, lambda: time.monotonic() > deadline)
        kill()
        give_up = time.monotonic() + 10
        self._loop(conns, lambda: time.monotonic() > give_up)
        for conn in conns:
            conn.close()

    def collect(self, port, quiet=2.0, timeout=120.0):
        """Connect every recipient; read until all acked mail came or nothing
        came for ``quiet`` seconds once the relay has welcomed them all (it
        answers a hello only when its start-up replay is done, which can take
        longer than ``quiet``).  Returns why it stopped, for a failure message."""
        conns = self._connect(port, (("reader", self.readers + self.offline),
                                     ("legacy", self.legacy)))
        began = time.monotonic()
        state = {"count": -1, "since": began, "why": None}

        def done():
            now = time.monotonic()
            if not self._missing:
                state["why"] = "every acked message arrived"
            elif now > began + timeout:
                state["why"] = f"gave up after {timeout:.0f} s"
            elif not all(conn.welcomed for conn in conns):
                state["since"] = now
            else:
                count = sum(len(ids) for ids in self.received.values())
                if count != state["count"]:
                    state["count"], state["since"] = count, now
                elif now - state["since"] > quiet:
                    state["why"] = f"nothing more came for {quiet:.0f} s"
            return state["why"] is not None
        self._loop(conns, done)
        for conn in conns:
            conn.close()
        return state["why"] or "every recipient's connection closed"

    def lost(self):
        """Every acked message its recipient never got: ``{msg_id: recipient}``
        (kept up to date as acks and messages arrive, so that ``collect``
        can ask after each read however much was acked)."""
        return {m: self.acked[m] for m in self._missing}

    def acked_to(self, recipients):
        return sum(1 for to in self.acked.values() if to in recipients)


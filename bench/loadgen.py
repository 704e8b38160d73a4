"""The load generators' inner loops: raw non-blocking sockets on one epoll.

One sender publishes 64-byte bodies (``%020d`` of a sequence number or of
``time.monotonic_ns()``, then padding) to every receiver.  Receivers only
count what arrives (newlines, or bytes of fixed-size frames) unless
latency is measured, so the generator stays cheap next to the server.
"""
import select
import time

from bench.procstat import CpuMeter, memory_kib
from bench.server import ServerError

BODY_LEN = 64
_PAD = b"." * (BODY_LEN - 20)


def body(value):
    return b"%020d" % value + _PAD


class Clients:
    """``receivers`` subscribed clients and one sender, all non-blocking."""

    def __init__(self, server, receivers):
        self.server = server
        self.receivers = {}
        try:
            for i in range(receivers):
                sock = server.connect(f"r{i}", True)
                self.receivers[sock.fileno()] = sock
            self.sender = server.connect("sender", False)
        except BaseException:
            self.close()
            raise
        self.epoll = select.epoll()
        for fd, sock in self.receivers.items():
            sock.setblocking(False)
            self.epoll.register(fd, select.EPOLLIN)
        self.sender.setblocking(False)
        self.sender_fd = self.sender.fileno()
        self.epoll.register(self.sender_fd, select.EPOLLIN)
        self.dropped = 0
        self._acks = bytearray(1 << 20)     # not a new 1 MiB bytes object per read

    def receive(self, fd, buf):
        """Read what receiver ``fd`` has into ``buf``; the byte count, 0 once
        the server has closed it (a dropped reader, counted in ``dropped``)."""
        n = self.receivers[fd].recv_into(buf)
        if not n:
            self.epoll.unregister(fd)
            self.receivers.pop(fd).close()
            self.dropped += 1
        return n

    def drain_sender(self):
        """Read what the server sends the sender (relayd's acks); how many lines."""
        try:
            n = self.sender.recv_into(self._acks)
        except BlockingIOError:
            return 0
        if not n:
            raise ServerError(f"{self.server.name} closed the sender's connection")
        return self._acks.count(b"\n", 0, n)

    def close(self):
        for sock in list(self.receivers.values()) + [getattr(self, "sender", None)]:
            if sock is not None:
                sock.close()
        if hasattr(self, "epoll"):
            self.epoll.close()


def saturate(server, receivers, seconds, warmup=1.0, window=10000, batch=50, settle=5.0):
    """Publish as fast as the server takes it, with at most ``window``
    messages unacknowledged (a server without acks, such as MQTT QoS 0, is
    fed as fast as its socket takes it), never paced by the receivers, and
    measure over ``seconds`` after ``warmup``; then wait up to ``settle``
    seconds for the copies still in flight.  A receiver the server closes
    is counted in ``dropped`` (its missing copies in ``lost``)."""
    clients = Clients(server, receivers)
    try:
        return _saturate(server, clients, receivers, seconds, warmup, window, batch, settle)
    finally:
        clients.close()


def _saturate(server, clients, receivers, seconds, warmup, window, batch, settle):
    frame, sender, sender_fd = server.frame, clients.sender, clients.sender_fd
    poll = clients.epoll.poll
    buf = bytearray(1 << 20)
    lines = server.COUNTS_LINES
    unit = 1 if lines else server.frame_size(BODY_LEN)
    units = sent = acked = 0
    acks = server.ACKS
    out = b""
    meter = CpuMeter(server.pid)
    begin = time.monotonic()
    measure_at, end_at = begin + warmup, begin + warmup + seconds
    mark = None
    while True:
        ahead = sent - acked if acks else 0
        if not out and ahead < window:
            k = min(batch, window - ahead)
            out = b"".join([frame(body(n)) for n in range(sent, sent + k)])
            sent += k
        if out:
            try:
                out = out[sender.send(out):]
            except BlockingIOError:
                pass
        for fd, _ in poll(0.001 if out or ahead >= window else 0):
            if fd == sender_fd:
                acked += clients.drain_sender()
                continue
            n = clients.receive(fd, buf)
            units += buf.count(b"\n", 0, n) if lines else n
        now = time.monotonic()
        if mark is None and now >= measure_at:
            mark = (units, sent)
            meter.start()
        elif now >= end_at:
            break
    wall, cpu = meter.read()
    delivered = (units - mark[0]) // unit
    messages = sent - mark[1]
    return {
        "delivered_per_s": delivered / wall,
        "sent_per_s": messages / wall,
        **cpu,
        "server_cpu_us_per_msg": cpu["server_cpu_pct"] * wall * 1e4 / max(1, messages),
        "delivered_per_server_cpu_s": delivered * 100 / max(1e-9, cpu["server_cpu_pct"] * wall),
        **_memory(server.pid),
        "lost": _settle(clients, server, sent * receivers, units, unit, buf, out, settle),
        "dropped": clients.dropped,
        "messages": sent,
    }


def _settle(clients, server, expected, units, unit, buf, out=b"", timeout=5.0):
    """Send what is left of ``out``, wait for the copies still in flight;
    returns how many never came."""
    deadline = time.monotonic() + timeout
    lines = server.COUNTS_LINES
    while units // unit < expected and time.monotonic() < deadline:
        if out:
            try:
                out = out[clients.sender.send(out):]
            except BlockingIOError:
                pass
        for fd, _ in clients.epoll.poll(0.05):
            if fd == clients.sender_fd:
                clients.drain_sender()
                continue
            n = clients.receive(fd, buf)
            units += buf.count(b"\n", 0, n) if lines else n
    return expected - units // unit


def paced(server, receivers, rate, seconds, warmup=1.0):
    """Publish ``rate`` messages a second, each stamped with the monotonic
    clock; returns latency percentiles of every copy over ``seconds``."""
    clients = Clients(server, receivers)
    try:
        return _paced(server, clients, receivers, rate, seconds, warmup)
    finally:
        clients.close()


def _paced(server, clients, receivers, rate, seconds, warmup):
    frame, sender = server.frame, clients.sender
    socks, poll = clients.receivers, clients.epoll.poll
    pending = {fd: b"" for fd in socks}
    samples = []
    interval = 1.0 / rate
    meter = CpuMeter(server.pid)
    begin = time.monotonic()
    measure_ns = time.monotonic_ns() + int(warmup * 1e9)
    end_at = begin + warmup + seconds
    due = begin
    sent = 0
    measuring = False
    while True:
        now = time.monotonic()
        if now >= end_at:
            break
        if not measuring and time.monotonic_ns() >= measure_ns:
            measuring = True
            meter.start()
        while due <= now:
            stamp = time.monotonic_ns()
            sender.sendall(frame(body(stamp)))
            sent += stamp >= measure_ns
            due += interval
        _receive(clients, server, poll(max(0.0, due - time.monotonic())), pending, samples, measure_ns)
    wall, cpu = meter.read()
    expected = sent * receivers
    deadline = time.monotonic() + 5.0
    while len(samples) < expected and time.monotonic() < deadline:
        _receive(clients, server, poll(0.05), pending, samples, measure_ns)
    samples.sort()
    return {
        "sent_per_s": sent / wall,
        "p50_ms": _percentile(samples, 50) / 1e6,
        "p99_ms": _percentile(samples, 99) / 1e6,
        "max_ms": (samples[-1] if samples else 0) / 1e6,
        "copies": len(samples),
        "lost": expected - len(samples),
        **cpu,
        **_memory(server.pid),
    }


def _receive(clients, server, events, pending, samples, measure_ns):
    for fd, _ in events:
        if fd == clients.sender_fd:
            clients.drain_sender()
            continue
        data = clients.receivers[fd].recv(1 << 16)
        arrived = time.monotonic_ns()
        if not data:
            raise ServerError(f"{server.name} closed a receiver's connection")
        bodies, pending[fd] = server.bodies(pending[fd] + data, BODY_LEN)
        for b in bodies:
            stamp = int(b[:20])
            if stamp >= measure_ns:
                samples.append(arrived - stamp)


def _percentile(ordered, pct):
    if not ordered:
        return 0
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _memory(pid):
    mem = memory_kib(pid)
    return {"server_rss_mib": mem["VmRSS"] / 1024, "server_peak_rss_mib": mem["VmHWM"] / 1024}


def idle(server, count, chunk=100):
    """Open ``count`` greeted connections that then stay silent; returns the
    server's resident memory before and after, and the cost per connection."""
    time.sleep(0.5)
    before = memory_kib(server.pid)["VmRSS"]
    socks = []
    begin = time.monotonic()
    try:
        for start in range(0, count, chunk):
            batch = []
            for i in range(start, min(count, start + chunk)):
                batch.append(server.open(f"idle{i}", False))
                socks.append(batch[-1])
            for sock in batch:
                server.finish(sock, False)
        opened = time.monotonic() - begin
        time.sleep(1.0)
        after = memory_kib(server.pid)["VmRSS"]
    finally:
        for sock in socks:
            sock.close()
    return {
        "connections": count,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "bytes_per_connection": (after - before) * 1024 / count,
        "connect_per_s": count / opened,
    }

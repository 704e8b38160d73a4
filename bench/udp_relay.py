"""UDP rendezvous: relayed datagrams/s, added latency, peers per MB; coturn as reference.

relayd runs as ``twistd -n relayd`` with a ``[udp]`` section (rate limits
raised); the load generator speaks the seed-001 packets.  coturn
(``turnserver``) is driven in the same run; for the saturation figure by its
own ``turnutils_uclient`` through a ``turnutils_peer`` echo, its relayed
datagrams counted both ways (client -> peer and the echo back).

The offered-rate table (issue 15) paces 10 seed sender/receiver pairs with
``relay`` packets of about 200 bytes at each ``--offered`` rate through
relayd, then the same generator through coturn (``bench.turn``: each sender
allocates, binds a channel to its receiver and sends ChannelData datagrams
of the same size, which coturn relays once each), and compares relayed
datagrams per second of server CPU and loss.  Both servers are measured with
the same placement on the cores (``placed``): the target rows with the
server on the generator's core, then, printed beside them, with one core
each.

    python -m bench.udp_relay [--seconds 5] [--peers 20000] [--rate 10000]
                              [--offered 10000,20000,30000] [--only offered]
"""
import argparse
import contextlib
import json
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time

from bench import relay, targets, turn
from bench.datagram import exchange
from bench.procstat import CpuMeter, rss_kib
from bench.report import emit, ratio, verdict
from bench.server import HOST, ServerError
from relayd.udp import stun

UDP_SECTION = """
[udp]
listen = {udp_port}
interface = {host}
rate = 10000000
burst = 10000000
claim_rate = 10000000
claim_burst = 10000000
max_peers = 1000000
stale_after = 1h
"""
PAYLOAD = "x" * 100
TARGET_RATIO = 0.3
OFFERED_TARGET = 0.5       # relayed datagrams per CPU-second, relayd / coturn
PAIRS = 10
PAIR_PAYLOAD = "x" * 118   # a relay packet of about 200 bytes


class UdpRelayd(relay.Relayd):
    """relayd with the bench's TCP config plus a [udp] listener."""

    def __init__(self, native=True):
        super().__init__()
        self.udp_port = free_port_udp()
        self.native = native

    def command(self):
        command = super().command()
        config = command[-1]
        with open(config, "a") as f:
            f.write(UDP_SECTION.format(udp_port=self.udp_port, host=HOST))
            if not self.native:
                f.write("native_relay = no\n")
        return command


def free_port_udp():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def udp_socket(buffer=4 * 1024 * 1024):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
    sock.bind((HOST, 0))
    return sock


def ask(sock, server, packet, answer, timeout=10.0, every=0.5):
    """Send ``packet`` (a dict) from ``sock`` until a packet of type
    ``answer`` comes back, resent every ``every`` s as a seed client would
    (UDP may drop either way); that packet, or TimeoutError after ``timeout`` s."""
    reply = exchange(sock, server, json.dumps(packet).encode(),
                     lambda data: _typed(json.loads(data), answer), timeout, every)
    if reply is None:
        raise TimeoutError(f"no {answer} from {server} in {timeout} s")
    return reply


def _typed(packet, kind):
    """``packet`` if it is of type ``kind``, else None."""
    return packet if packet.get("type") == kind else None


def register(sock, server, name):
    """Register ``name`` from ``sock`` after proving its address (a padded
    ping asks for the cookie): all the load generator's sockets share one
    IP, whose unproven byte budget would not pay for thousands of
    registrations at once."""
    ask(sock, server, {"type": "register", "name": name, "cookie": cookie(sock, server)},
        "register_ack")
    drain(sock)


def cookie(sock, server):
    """The relay's address cookie for ``sock`` (a padded ping asking for one)."""
    return ask(sock, server, {"type": "ping", "cookie": "", "pad": "x" * 200}, "pong")["cookie"]


RELAYED = b'{"type": "relayed_packet"'


def drain(sock, only=b""):
    """Read and count what is queued on ``sock`` (starting with ``only``) without blocking."""
    sock.setblocking(False)
    count = 0
    try:
        while True:
            if sock.recvfrom(65536)[0].startswith(only):
                count += 1
    except BlockingIOError:
        return count


def relay_frame(seq):
    return json.dumps({"type": "relay", "target": "rx", "source": "tx",
                       "payload": f"{seq:010d}{PAYLOAD}"}).encode()


def saturate(sender, receiver, server, seconds):
    """Send as fast as possible for ``seconds``; datagrams/s delivered to ``receiver``."""
    frame = relay_frame(0)
    sender.setblocking(False)
    received = sent = 0
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        for _ in range(64):
            try:
                sender.sendto(frame, server)
                sent += 1
            except BlockingIOError:
                break
        received += drain(receiver)
    quiet = time.monotonic() + 0.5
    while time.monotonic() < quiet:          # what the relay still had queued
        select.select([receiver], [], [], 0.05)
        received += drain(receiver)
    elapsed = time.monotonic() - start
    return {"sent": sent, "received": received, "datagrams_per_s": received / elapsed}


def paced(sender, receiver, destination, rate, seconds, frame_for=relay_frame):
    """Send at ``rate``/s for ``seconds``; returns (sent, received, one-way latencies in ms)."""
    interval = 1.0 / rate
    sent_at = {}
    latencies = []
    receiver.setblocking(False)
    start = time.monotonic()
    seq = 0
    deadline = start + seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        due = start + seq * interval
        if now >= due:
            sent_at[seq] = time.perf_counter()
            sender.sendto(frame_for(seq), destination)
            seq += 1
            continue
        readable, _, _ = select.select([receiver], [], [], due - now)
        if readable:
            collect(receiver, sent_at, latencies)
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle and len(latencies) < seq:
        if select.select([receiver], [], [], 0.05)[0]:
            collect(receiver, sent_at, latencies)
    return seq, len(latencies), latencies


def collect(receiver, sent_at, latencies):
    try:
        while True:
            data = receiver.recvfrom(65536)[0]
            now = time.perf_counter()
            seq = seq_of(data)
            if seq in sent_at:
                latencies.append((now - sent_at.pop(seq)) * 1000)
    except BlockingIOError:
        pass


def seq_of(data):
    """The sequence number in a relayed_packet or a direct datagram (None for others)."""
    text = data.decode()
    if text.startswith("{"):
        packet = json.loads(text)
        if packet.get("type") != "relayed_packet":
            return None
        text = packet["payload"]
    return int(text[:10])


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else float("nan")


def peers_per_mb(server_pid, server, count, batch=500):
    """Register ``count`` peers, each from its own socket; peers per MB of added RSS.

    Registrations go in batches whose acks are awaited, so none is lost to
    a full socket buffer; a fresh relayd is used so that freed memory of
    earlier tests does not hide the growth.
    """
    before = rss_kib(server_pid)
    registered = 0
    while registered < count:
        socks = [udp_socket(65536) for _ in range(min(batch, count - registered))]
        for i, sock in enumerate(socks):
            name = f"peer{registered + i:07d}"
            sock.settimeout(10)
            sock.sendto(json.dumps({"type": "register", "name": name,
                                    "cookie": cookie(sock, server)}).encode(), server)
        for sock in socks:
            sock.settimeout(10)
            sock.recvfrom(65536)                        # register_ack
            sock.close()
        registered += len(socks)
    after = rss_kib(server_pid)
    grown_mb = max(after - before, 1) / 1024
    return {"peers": count, "rss_before_mib": before / 1024, "rss_after_mib": after / 1024,
            "peers_per_mb": count / grown_mb}


def measure_relayd(args):
    with UdpRelayd(native=not args.python_relay) as server:
        address = (HOST, server.udp_port)
        sender, receiver = udp_socket(), udp_socket()
        register(receiver, address, "rx")
        register(sender, address, "tx")
        saturate(sender, receiver, address, 1.0)                # warm-up
        meter = CpuMeter(server.pid)
        result = saturate(sender, receiver, address, args.seconds)
        _, cpu = meter.read()
        result["server_cpu_pct"] = cpu["server_cpu_pct"]
        result["per_cpu_second"] = per_cpu_second(result["datagrams_per_s"], cpu["server_cpu_pct"])
        emit("udp_relay", system="relayd", test="saturate", seconds=args.seconds, **result)

        sent, received, _ = paced(sender, receiver, address, args.rate, args.seconds)
        emit("udp_relay", system="relayd", test="paced", rate=args.rate, sent=sent,
             received=received, lost=sent - received)
        no_loss = sent == received

        _, _, relayed = paced(sender, receiver, address, args.latency_rate, args.seconds)
        direct_frame = lambda seq: f"{seq:010d}{PAYLOAD}".encode()    # noqa: E731
        _, _, direct = paced(sender, receiver, receiver.getsockname(), args.latency_rate,
                             args.seconds, frame_for=direct_frame)
        latency = {"relayed_p50_ms": percentile(relayed, 50), "relayed_p99_ms": percentile(relayed, 99),
                   "direct_p50_ms": percentile(direct, 50), "direct_p99_ms": percentile(direct, 99)}
        latency["added_p99_ms"] = latency["relayed_p99_ms"] - latency["direct_p99_ms"]
        emit("udp_relay", system="relayd", test="latency", rate=args.latency_rate, **latency)
        sender.close()
        receiver.close()
    with UdpRelayd(native=not args.python_relay) as server:
        memory = peers_per_mb(server.pid, (HOST, server.udp_port), args.peers)
        emit("udp_relay", system="relayd", test="peers", **memory)
    return result, no_loss


def pair_frames(pairs, tag):
    return [json.dumps({"type": "relay", "target": f"rx{tag}-{i}", "source": f"tx{tag}-{i}",
                        "payload": "0000000000" + PAIR_PAYLOAD}).encode() for i in range(pairs)]


def placements():
    """``same`` (the target rows), and ``split`` where there are two cores to split."""
    return ("same", "split") if {0, 1} <= os.sched_getaffinity(0) else ("same",)


@contextlib.contextmanager
def placed(server_pid, placement):
    """Pin this process (the generator) to core 0, and the server's threads to
    core 0 too (``same``) or to core 1 (``split``); afterwards both may run
    anywhere again.

    On this VM a send that wakes a process sleeping on the other core costs
    the sender an inter-processor interrupt (a VM exit): about 8 us of the
    server's system time per datagram, for relayd and coturn alike, so which
    core the scheduler happened to give the generator set either server's
    CPU per datagram (3-5x apart, docs/PERFORMANCE.md "UDP relay").  The
    same placement for both servers makes their figures comparable; the
    same core leaves out what a relay's sends to the network would not
    cost it (waking a local process on another core)."""
    everywhere = os.sched_getaffinity(0)
    threads = [int(tid) for tid in os.listdir(f"/proc/{server_pid}/task")]
    os.sched_setaffinity(0, {0})
    for tid in threads:
        with contextlib.suppress(ProcessLookupError):   # a thread that ended meanwhile
            os.sched_setaffinity(tid, {0 if placement == "same" else 1})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everywhere)
        for tid in threads:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, everywhere)


def offered(server, pid, rate, seconds, pairs=PAIRS, tag=""):
    """``pairs`` seed-001 sender/receiver pairs through relayd at ``server``,
    paced to ``rate`` datagrams/s in all; CPU and loss of the relay.  The
    pairs' names carry ``tag`` and the rate (a name is registered once)."""
    with contextlib.ExitStack() as sockets:
        senders, receivers = [], []
        for i in range(pairs):
            rx, tx = sockets.enter_context(udp_socket()), sockets.enter_context(udp_socket())
            register(rx, server, f"rx{tag}{rate}-{i}")
            register(tx, server, f"tx{tag}{rate}-{i}")
            senders.append(tx)
            receivers.append(rx)
        return pace(pid, senders, pair_frames(pairs, f"{tag}{rate}"), server, receivers, RELAYED,
                    rate, seconds)


def turn_pairs(sockets, server, pairs=PAIRS):
    """``pairs`` sender and receiver sockets (entered in the ExitStack
    ``sockets``), each sender with an allocation on the TURN ``server`` and
    a channel bound to its receiver: (senders, receivers).  One set serves
    every rate, as a TURN client keeps its allocation: coturn keeps a
    deleted allocation a second or two and refuses an Allocate from its
    address meanwhile, which a new socket given a closed one's port sends."""
    senders, receivers = [], []
    for _ in range(pairs):
        rx, tx = sockets.enter_context(udp_socket()), sockets.enter_context(udp_socket())
        turn.allocate(tx, server)
        turn.bind(tx, server, rx.getsockname())
        senders.append(tx)
        receivers.append(rx)
    return senders, receivers


def offered_turn(server, pid, rate, seconds, senders, receivers):
    """The same through a TURN server, from ``turn_pairs``: 200-byte
    ChannelData datagrams, which the server relays to the receiver from the
    allocation."""
    size = len(pair_frames(1, rate)[0])           # as long as relayd's relay packet
    frame = turn.channel_data(turn.FIRST_CHANNEL, b"0" * (size - 4))
    return pace(pid, senders, [frame] * len(senders), server, receivers, b"", rate, seconds)


def pace(pid, senders, frames, server, receivers, only, rate, seconds):
    """Send ``frames[i]`` from ``senders[i]`` to ``server`` in turn, paced to
    ``rate`` datagrams/s in all for ``seconds``, while counting what reaches
    the receivers (datagrams starting with ``only``); then up to 1 s more for
    what is still on its way.  The relay's CPU over the whole span."""
    for rx in receivers:
        drain(rx)                                   # stragglers of an earlier rate
    pairs = len(senders)
    sent = received = 0
    tick = 0.001
    meter = CpuMeter(pid)
    start = time.monotonic()
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = int((now - start) * rate) + 1
        while sent < due:
            senders[sent % pairs].sendto(frames[sent % pairs], server)
            sent += 1
        for rx in select.select(receivers, [], [], tick)[0]:
            received += drain(rx, only)
    settle = time.monotonic() + 1.0
    while time.monotonic() < settle and received < sent:
        for rx in select.select(receivers, [], [], 0.05)[0]:
            received += drain(rx, only)
    wall, cpu = meter.read()
    # the CPU figure spans the settling second too: relate it to what was relayed over ``wall``
    return {"offered": rate, "sent": sent, "received": received, "lost": sent - received,
            "relayed_per_s": received / seconds, "server_cpu_pct": cpu["server_cpu_pct"],
            "per_cpu_second": per_cpu_second(received / wall, cpu["server_cpu_pct"])}


def measure_offered_relayd(args):
    """``{(placement, rate): row}`` of relayd."""
    rows = {}
    with UdpRelayd(native=not args.python_relay) as server:
        address = (HOST, server.udp_port)
        offered(address, server.pid, 2000, 1.0)                   # warm-up
        for placement in placements():
            with placed(server.pid, placement):
                for rate in args.offered:
                    row = rows[placement, rate] = offered(address, server.pid, rate, args.seconds,
                                                          tag=placement)
                    emit("udp_relay", system="relayd", test="offered", placement=placement, **row)
    return rows


def start_turnserver(workdir, attempts=3):
    """coturn's ``turnserver`` on a free loopback port, once it answers STUN:
    (process, port).  A start that does not answer (the port taken meanwhile,
    a slow start on a busy machine) is stopped and retried on another port;
    ServerError after ``attempts``."""
    for _ in range(attempts):
        port = free_port_udp()
        server = subprocess.Popen(
            ["turnserver", "-L", HOST, "-p", str(port), "--no-auth", "--allow-loopback-peers",
             "--no-cli", "--no-tls", "--no-dtls", "-n", "--relay-ip", HOST, "--relay-threads", "1",
             "--min-port", "49152", "--max-port", "65535", "--log-file", "stdout", "--simple-log",
             "--pidfile", os.path.join(workdir, "turn.pid"), "--userdb", os.path.join(workdir, "db")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if stun_answers((HOST, port)):
            return server, port
        server.terminate()
        server.wait(10)
    raise ServerError(f"turnserver did not answer STUN in {attempts} starts")


def start_coturn(workdir):
    """``turnserver`` and a ``turnutils_peer`` echo: (server, peer, port, peer port)."""
    server, port = start_turnserver(workdir)
    peer_port = free_port_udp()
    peer = subprocess.Popen(["turnutils_peer", "-L", HOST, "-p", str(peer_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, peer, port, peer_port


def uclient(port, peer_port, clients, messages, interval_ms, length):
    """Run turnutils_uclient; (sent, echoed, seconds, output)."""
    start = time.monotonic()
    done = subprocess.run(
        ["turnutils_uclient", "-c", "-z", str(interval_ms), "-e", HOST, "-r", str(peer_port),
         "-m", str(clients), "-n", str(messages), "-l", str(length), "-p", str(port), HOST],
        capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", done.stdout, re.M)
    if not totals:
        return None, None, elapsed, done.stdout + done.stderr
    sent, received = map(int, totals[-1])
    return sent, received, elapsed, done.stdout


def measure_offered_coturn(args):
    """coturn driven like relayd above: 10 TURN clients, one channel each to
    a receiving socket, paced to the same total rate."""
    if shutil.which("turnserver") is None:
        emit("udp_relay", system="coturn", test="offered", skipped="coturn_not_installed")
        return {}
    rows = {}
    workdir = tempfile.mkdtemp(prefix="bench-coturn-")
    try:
        server, port = start_turnserver(workdir)
    except ServerError:
        shutil.rmtree(workdir, ignore_errors=True)
        emit("udp_relay", system="coturn", test="offered", skipped="no_stun_answer")
        return {}
    try:
        address = (HOST, port)
        with contextlib.ExitStack() as sockets:
            pairs = turn_pairs(sockets, address)
            offered_turn(address, server.pid, 2000, 1.0, *pairs)          # warm-up
            for placement in placements():
                with placed(server.pid, placement):
                    for rate in args.offered:
                        row = rows[placement, rate] = offered_turn(address, server.pid, rate,
                                                                   args.seconds, *pairs)
                        emit("udp_relay", system="coturn", test="offered", placement=placement,
                             **row)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def offered_table(args):
    ours = measure_offered_relayd(args)
    theirs = measure_offered_coturn(args)
    for key in ours:
        if key in theirs:
            placement, rate = key
            emit("udp_relay", check="offered_vs_coturn_per_cpu_second", placement=placement,
                 offered=rate, lost=ours[key]["lost"], coturn_lost=theirs[key]["lost"],
                 **compared(ours[key]["per_cpu_second"], theirs[key]["per_cpu_second"],
                            OFFERED_TARGET, ours[key]["lost"] == 0))
    for rate in args.offered:
        key = f"udp_{rate // 1000}k"
        if key in targets.TARGETS and ("same", rate) in ours:
            mine, other = ours["same", rate], theirs.get(("same", rate), {})
            note = f"one core: relayd {mine['server_cpu_pct']:.0f} %, {mine['lost']:,} lost"
            if other:
                note += f"; coturn {other['server_cpu_pct']:.0f} %, {other['lost']:,} lost"
            if None in (mine["per_cpu_second"], other.get("per_cpu_second", 0)):
                note += "; no CPU time seen: not measured"
            if ("split", rate) in ours and ("split", rate) in theirs:
                note += (f"; a core each: relayd {ours['split', rate]['server_cpu_pct']:.0f} %, "
                         f"coturn {theirs['split', rate]['server_cpu_pct']:.0f} %")
            targets.record(key, mine["per_cpu_second"], other.get("per_cpu_second"), note=note)
    if ours:
        lost = sum(row["lost"] for row in ours.values())
        targets.record("udp_lost", lost, note=f"of {sum(row['sent'] for row in ours.values()):,}")


def measure_coturn(args):
    """coturn relaying uclient <-> peer echo; relayed datagrams/s (both directions)."""
    needed = ("turnserver", "turnutils_uclient", "turnutils_peer")
    if any(shutil.which(tool) is None for tool in needed):
        emit("udp_relay", system="coturn", skipped="coturn_not_installed(apt-get install coturn)")
        return None
    workdir = tempfile.mkdtemp(prefix="bench-coturn-")
    try:
        server, peer, port, peer_port = start_coturn(workdir)
    except ServerError:
        shutil.rmtree(workdir, ignore_errors=True)
        emit("udp_relay", system="coturn", skipped="turnserver_did_not_answer_stun")
        return None
    try:
        meter = CpuMeter(server.pid)
        sent, received, elapsed, output = uclient(port, peer_port, args.coturn_clients,
                                                  args.coturn_messages, 0, 110)
        _, cpu = meter.read()
    finally:
        for process in (peer, server):
            process.terminate()
            process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    if sent is None:
        print(output[-2000:])
        emit("udp_relay", system="coturn", skipped="no_uclient_totals")
        return None
    rtt = re.search(r"Average round trip delay ([\d.]+) ms", output)
    result = {"datagrams_per_s": (sent + received) / elapsed, "server_cpu_pct": cpu["server_cpu_pct"]}
    result["per_cpu_second"] = per_cpu_second(result["datagrams_per_s"], cpu["server_cpu_pct"])
    emit("udp_relay", system="coturn", test="saturate", clients=args.coturn_clients, sent=sent,
         echoed=received, seconds=elapsed, avg_rtt_ms=float(rtt.group(1)) if rtt else "?",
         **result)
    return result


def stun_answers(address, timeout=10.0):
    """True once ``address`` answers a STUN Binding request (coturn is up)."""
    request = stun.encode(stun.BINDING, stun.REQUEST, os.urandom(12), [])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.sendto(request, address)
            try:
                sock.recvfrom(2048)
                return True
            except OSError:
                pass
    return False


def per_cpu_second(rate, cpu_pct):
    """Datagrams relayed per second of server CPU: the rate one core would
    give; None where no CPU time was seen (a kernel without schedstat
    counts it in clock ticks, which a short span may not reach)."""
    return rate / (cpu_pct / 100) if cpu_pct > 0 else None


def compared(ours, theirs, target, also=True):
    """``{"ratio", "target", "result"}`` of ``ours`` against ``theirs``
    (either may be None: not measured); met when the ratio reaches
    ``target`` and ``also`` holds."""
    if ours is None or theirs is None:
        return {"ratio": "not_measured", "target": target, "result": "MISSED"}
    r = ratio(ours, theirs)
    return {"ratio": r, "target": target, "result": verdict(r >= target and also)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="measured span per test")
    p.add_argument("--rate", type=float, default=10000.0, help="paced rate for the loss test")
    p.add_argument("--latency-rate", type=float, default=1000.0)
    p.add_argument("--peers", type=int, default=20000, help="peers registered for the memory test")
    p.add_argument("--coturn-clients", type=int, default=20)
    p.add_argument("--coturn-messages", type=int, default=10000, help="per uclient client")
    p.add_argument("--offered", default="10000,20000,30000",
                   help="total paced rates (datagrams/s) for the relayd/coturn table")
    p.add_argument("--only", choices=["offered"], help="run only the offered-rate table")
    p.add_argument("--python-relay", action="store_true",
                   help="relayd with [udp] native_relay = no (its Python relay path)")
    args = p.parse_args(argv)
    args.offered = [int(r) for r in args.offered.split(",") if r]
    offered_table(args)
    if args.only:
        return
    ours, no_loss = measure_relayd(args)
    theirs = measure_coturn(args)
    emit("udp_relay", check="no_loss_at_rate", rate=args.rate, result=verdict(no_loss))
    if theirs:
        # turnutils_uclient paces itself and rarely saturates coturn, so the
        # per-CPU-second figure (what one core would relay) is compared too.
        for key in ("datagrams_per_s", "per_cpu_second"):
            emit("udp_relay", check=f"vs_coturn_{key}", **compared(ours[key], theirs[key], TARGET_RATIO))


if __name__ == "__main__":
    main()

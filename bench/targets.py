"""The targets of issues 9, 12 and 15, judged from one run and printed as a table.

Each benchmark calls ``record(key, relayd, reference)`` once it has a
figure; ``record`` judges it against ``TARGETS[key]``, prints one
``target key=... verdict=met|MISSED`` line and keeps the row.  ``python -m
bench`` prints every target of the benchmarks it ran as a table at the end
(a target whose benchmark failed or printed nothing shows ``not run``, which
counts as missed).
"""
from dataclasses import dataclass

from bench.report import emit, ratio


@dataclass(frozen=True)
class Target:
    """A target: ``relayd`` (or ``relayd / reference`` when ``by_ratio``)
    compared with ``bound`` by ``op`` (one of ``>=``, ``<=``, ``==``, ``>``)."""
    bench: str              # the module (bench.<name>) that measures it
    issue: int
    figure: str
    unit: str
    against: str            # the reference system, "" when there is none
    op: str
    bound: float
    by_ratio: bool = False
    text: str = ""          # the goal in words, where there is no number to reach

    def met(self, relayd, reference):
        if relayd is None or (self.by_ratio and not reference):
            return False
        value = ratio(relayd, reference) if self.by_ratio else relayd
        return {">=": value >= self.bound, "<=": value <= self.bound,
                "==": value == self.bound, ">": value > self.bound}[self.op]

    def goal(self):
        if self.by_ratio:
            return f"{self.op} {self.bound:g}x {self.against}"
        if self.text:
            return self.text
        return f"{self.op} {self.bound:g} {self.unit}".strip()


_FANOUT = "delivered msgs/s, 1 -> {n}"
_INTACT = "1 -> {n}: readers dropped + copies lost"
_GOSSIP = "GossipSub msgs/s through relayd to N = {n}"
_EVERY_COPY = "printed; every copy delivered"
_UDP = "UDP relayed datagrams per server CPU-second, {k}k/s offered, server on the generator's core"

TARGETS = {
    "fanout_10": Target("tcp_fanout", 9, _FANOUT.format(n=10), "msgs/s", "mosquitto", ">=", 1.5, True),
    "fanout_10_intact": Target("tcp_fanout", 9, _INTACT.format(n=10), "", "", "==", 0),
    "fanout_100": Target("tcp_fanout", 9, _FANOUT.format(n=100), "msgs/s", "mosquitto", ">=", 5.0, True),
    "fanout_100_intact": Target("tcp_fanout", 9, _INTACT.format(n=100), "", "", "==", 0),
    "latency_p50": Target("tcp_latency", 9, "latency p50, 1,000 msgs/s, N = 10", "ms", "mosquitto",
                          "<=", 0.3),
    "latency_p99": Target("tcp_latency", 9, "latency p99, 1,000 msgs/s, N = 10", "ms", "mosquitto",
                          "<=", 1.0, True),
    "federation_msgs": Target("federation", 9, "msgs/s across a three-relay line", "msgs/s",
                              "one relay", ">=", 0.8, True),
    "federation_hop": Target("federation", 9, "added latency per hop, p50", "ms", "", "<=", 1.0),
    "crash_lost": Target("crash", 9, "kill -9 under load (>= 5 kills): acked messages lost", "",
                         "", "==", 0),
    "restart": Target("restart", 9, "restart to serving, 1 GiB journal (worst start)", "s", "",
                      "<=", 2.0),
    "udp_10k": Target("udp_relay", 15, _UDP.format(k=10), "/CPU-s", "coturn", ">=", 0.5, True),
    "udp_20k": Target("udp_relay", 15, _UDP.format(k=20), "/CPU-s", "coturn", ">=", 0.5, True),
    "udp_30k": Target("udp_relay", 15, _UDP.format(k=30), "/CPU-s", "coturn", ">=", 0.5, True),
    "udp_lost": Target("udp_relay", 15, "UDP datagrams lost at 10k/20k/30k offered", "", "", "==", 0),
    "gossip_10": Target("libp2p_hub", 12, _GOSSIP.format(n=10), "msgs/s", "js-libp2p", ">", 0,
                        text=_EVERY_COPY),
    "gossip_100": Target("libp2p_hub", 12, _GOSSIP.format(n=100), "msgs/s", "js-libp2p", ">", 0,
                         text=_EVERY_COPY),
    "dht_lookups": Target("libp2p_hub", 12, "DHT lookups/s served", "/s", "js-libp2p", ">", 0,
                          text="printed (> 0)"),
    "gossip_memory": Target("libp2p_hub", 12, "memory per subscribed peer", "KiB", "js-libp2p",
                            ">", 0, text="printed (> 0)"),
}


@dataclass
class Row:
    key: str
    relayd: float = None
    reference: float = None
    note: str = ""          # details of the figure, or why the run does not count
    ran: bool = True
    valid: bool = True      # False: a precondition of the target did not hold
    against: str = ""       # the reference measured, when more precise than the target's

    @property
    def target(self):
        return TARGETS[self.key]

    @property
    def met(self):
        return self.ran and self.valid and self.target.met(self.relayd, self.reference)

    @property
    def verdict(self):
        if not self.ran:
            return "MISSED (not run)"
        if not self.valid:
            return "MISSED (run outside the target's conditions)"
        return "met" if self.met else "MISSED"


ROWS = {}


def record(key, relayd, reference=None, note="", valid=True, against=""):
    """Keep and print the row of ``key``; ``valid`` False fails it whatever the
    figure (a precondition of the target did not hold, said in ``note``);
    ``against`` names the reference measured (e.g. a configuration of it)."""
    row = ROWS[key] = Row(key, relayd, reference, note, valid=valid, against=against)
    fields = {"key": key, "relayd": relayd}
    if reference is not None:
        fields["reference"] = reference
        if row.target.by_ratio and reference:
            fields["ratio"] = ratio(relayd, reference) if relayd is not None else "?"
    emit("target", **fields, goal=row.target.goal(), verdict=row.verdict)
    return row


def _number(value):
    if value is None:
        return "-"
    if isinstance(value, float) and value != int(value):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{int(value):,}"


def table(benches=None):
    """The rows of every target whose benchmark is in ``benches`` (all by
    default), in TARGETS order, as a Markdown table (one string)."""
    lines = ["| # | issue | figure | relayd | reference | ratio | target | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for n, (key, target) in enumerate(TARGETS.items(), 1):
        if benches is not None and target.bench not in benches:
            continue
        row = ROWS.get(key) or Row(key, ran=False)
        reference = _number(row.reference)
        if target.against and row.reference is not None:
            reference += f" ({row.against or target.against})"
        elif row.reference is None and target.against:
            reference = f"- (no {target.against} figure)"
        ratio_text = (f"{ratio(row.relayd, row.reference):.2f}"
                      if target.by_ratio and row.relayd is not None and row.reference else "")
        figure = target.figure + (f" [{row.note}]" if row.note else "")
        relayd = _number(row.relayd) + (f" {target.unit}" if target.unit and row.relayd is not None
                                        else "")
        lines.append(f"| {n} | {target.issue} | {figure} | {relayd} | {reference} | {ratio_text} "
                     f"| {target.goal()} | {row.verdict} |")
    return "\n".join(lines)

"""Anti-amplification: byte budgets for addresses that have not proved they receive.

An address is *proven* once it echoed a cookie relayd sent there, or signed
a challenge bound to it (``proof``).  Every other address has a budget in
bytes, as DNS response-rate limiting keeps one: it starts at ``ALLOWANCE``,
refills at ``REFILL`` bytes a second back up to ``ALLOWANCE``, and every
datagram received from that address adds its length.  Each datagram relayd
sends to an unproven address, or because of a request from one (a
``peer_joined`` to every peer, a ``connect_peer``, a relayed wrapper beyond
``RELAY_SLACK``), is paid from that budget, or not sent.  The keepalive
answers, which the seed's clients ignore, leave ``RESERVE`` of it for the
notices they read, and notices to others leave ``FANOUT_RESERVE`` for the
next ``register_ack`` (seed clients behind one NAT register one by one).  Each source IP has a second, larger budget
(``IP_ALLOWANCE``, ``IP_REFILL``) that its addresses also pay from, so that
spoofing many ports of one victim does not multiply the allowance.  So what
an unproven source makes relayd send, to itself and to others, stays
within what it sent plus ``ALLOWANCE`` (and the refill since), whatever the
number of peers.
"""
from collections import OrderedDict

from relayd.udp.ratelimit import TokenBuckets

ALLOWANCE = 512      # bytes: a register_ack, a short peer_list and a few notices
REFILL = 64          # bytes a second: the seed's keepalive traffic, with room to spare
IP_ALLOWANCE = 4096  # bytes, shared by the unproven addresses of one IP (clients behind a NAT)
IP_REFILL = 512      # bytes a second, likewise
RELAY_SLACK = 32     # bytes a relayed_packet may exceed its relay request for free
RESERVE = 128        # bytes keepalive_ack/server_keepalive leave for the notices
FANOUT_RESERVE = 256   # bytes notices to others leave for the next register_ack


class ByteBudgets(TokenBuckets):
    """Per key: ``allowance`` bytes refilled at ``refill``/s, plus bytes received.

    Credit from received bytes is kept up to ``cap``.
    """

    def __init__(self, cap, max_keys=65536, allowance=ALLOWANCE, refill=REFILL):
        super().__init__(refill, allowance, max_keys)
        self.cap = cap

    def deposit(self, key, now, amount):
        bucket = self._bucket(key, now)
        bucket[0] = min(self.cap, bucket[0] + amount)

    def balance(self, key, now):
        return self._bucket(key, now)[0]


class SourceBudgets:
    """The budgets of unproven addresses: one per address, and a larger one per IP."""

    def __init__(self, cap, max_keys=65536):
        self.by_address = ByteBudgets(cap, max_keys, ALLOWANCE, REFILL)
        self.by_ip = ByteBudgets(cap + IP_ALLOWANCE, max_keys, IP_ALLOWANCE, IP_REFILL)

    def set_max_keys(self, max_keys):
        self.by_address.max_keys = self.by_ip.max_keys = max_keys

    def forget(self, address):
        """Drop ``address``'s own budget (it proved itself; its IP's stays)."""
        self.by_address._buckets.pop(address, None)

    def deposit(self, address, now, amount):
        self.by_address.deposit(address, now, amount)
        self.by_ip.deposit(address[0], now, amount)

    def balance(self, address, now):
        return min(self.by_address.balance(address, now), self.by_ip.balance(address[0], now))

    def charge(self, payers, now, amount):
        """Take ``amount`` from the budgets of every address in ``payers`` (and of its
        IP), or from none when one would keep less than ``payers[address]``."""
        buckets = {}
        for address, reserve in payers.items():
            for bucket in (self.by_address._bucket(address, now),
                           self.by_ip._bucket(address[0], now)):
                keep = max(reserve, buckets.get(id(bucket), (0, None))[0])
                buckets[id(bucket)] = (keep, bucket)
        if any(bucket[0] < amount + keep for keep, bucket in buckets.values()):
            return False
        for _, bucket in buckets.values():
            bucket[0] -= amount
        return True


class ProvenAddresses:
    """Addresses (ip, port) that proved they receive there, until ``ttl`` seconds of silence."""

    def __init__(self, ttl, max_addresses=65536, forgot=None):
        self.ttl = ttl
        self.max_addresses = max_addresses
        self.forgot = forgot              # called when addresses stop being proven
        self._seen = OrderedDict()        # address -> last datagram time, oldest first

    def __len__(self):
        return len(self._seen)

    def __contains__(self, address):
        return address in self._seen

    def add(self, address, now):
        self._seen[address] = now
        self._seen.move_to_end(address)
        if len(self._seen) > self.max_addresses:
            self._seen.popitem(last=False)
            self._forgot()

    def touch(self, address, now):
        """True (and refreshed, to the second) when ``address`` is proven."""
        seen = self._seen.get(address)
        if seen is None:
            return False
        if now - seen >= 1.0:
            self._seen[address] = now
            self._seen.move_to_end(address)
        return True

    def sweep(self, now):
        before = len(self._seen)
        while self._seen:
            address, seen = next(iter(self._seen.items()))
            if now - seen <= self.ttl:
                break
            del self._seen[address]
        if len(self._seen) < before:
            self._forgot()

    def _forgot(self):
        if self.forgot is not None:
            self.forgot()

"""AutoNAT servers: v1 (``/libp2p/autonat/1.0.0``) and v2
(``/libp2p/autonat/2/dial-request``, dialling back on ``/libp2p/autonat/2/dial-back``).

A peer asks the relay to dial its addresses back, to learn whether it is
reachable.  The rules that keep the relay from being used to scan or to
amplify traffic (libp2p/specs autonat-v1, autonat-v2):

* v1 dials only addresses on the IP the request came from; v2 dials another
  IP only after the requester sent ``autonat_dial_data`` bytes (dial data).
* Only plain ``/ip4|ip6/…/tcp/N`` addresses are dialled, and never private,
  loopback or link-local ones unless ``autonat_dial_private`` is set.
* Per source IP (``autonat_rate``) and global (``autonat_global_rate``) rate
  limits per ``rate_window``, a dial timeout (``autonat_dial_timeout``), one
  dial per request (v2) or a few on the requester's own IP (v1).
* The dial-back connection uses a fresh ephemeral port and offers no
  protocols; it is closed as soon as the answer is known.
"""
import ipaddress

from twisted.internet import defer
from twisted.python.failure import Failure

from relayd.libp2p import multiaddr, protobuf, varint, yamux
from relayd.libp2p.peer import Peer
from relayd.libp2p.peerid import PeerId
from relayd.libp2p.resources import RateLimiter
from relayd.libp2p.yamux import StreamHandler

V1 = "/libp2p/autonat/1.0.0"
V2_REQUEST = "/libp2p/autonat/2/dial-request"
V2_BACK = "/libp2p/autonat/2/dial-back"
MAX_MESSAGE = 8192
MAX_DIAL_DATA_CHUNK = 4096
MAX_ADDRS = 16          # addresses looked at per request
MAX_V1_DIALS = 3        # addresses on the requester's IP tried per v1 request

# v1 Message.ResponseStatus
V1_OK, V1_DIAL_ERROR, V1_DIAL_REFUSED, V1_BAD_REQUEST = 0, 100, 101, 200
# v2 DialResponse.ResponseStatus and DialStatus
V2_REJECTED, V2_REFUSED, V2_OK = 100, 101, 200
DIAL_ERROR, DIAL_BACK_ERROR, DIAL_OK = 100, 101, 200


def dial_target(addr, allow_private):
    """``(host, port)`` of a binary multiaddr the relay may dial, else None."""
    try:
        parts = multiaddr.to_string(addr).split("/")
        if len(parts) < 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
            return None
        if parts[5:] and (len(parts) != 7 or parts[5] != "p2p"):
            return None                 # /ws, /p2p-circuit, ...: not dialled
        ip = ipaddress.ip_address(parts[2])
    except ValueError:
        return None
    if not (allow_private or ip.is_global):
        return None
    return str(ip), int(parts[4])


class AutoNAT:
    """Decides and dials; the stream handlers below speak the protocols."""

    def __init__(self, reactor, keypair, settings, events):
        self.reactor = reactor
        self.keypair = keypair
        self.settings = settings
        self.events = events
        self.per_ip = RateLimiter(reactor, settings.autonat_rate, settings.rate_window)
        self.overall = RateLimiter(reactor, settings.autonat_global_rate, settings.rate_window)

    def reconfigure(self, settings):
        self.settings = settings
        for limiter, count in ((self.per_ip, settings.autonat_rate),
                               (self.overall, settings.autonat_global_rate)):
            limiter.count, limiter.window = count, settings.rate_window

    def admit(self, ip):
        """True when a request from ``ip`` may be served now (both rate limits)."""
        return self.per_ip.allow(ip) and self.overall.allow(None)

    def target(self, addr):
        return dial_target(addr, self.settings.autonat_dial_private)

    def dial(self, host, port):
        """A Deferred firing with a muxed connection to ``host:port`` (closed by
        the caller) or failing within ``autonat_dial_timeout``."""
        timeout = self.settings.autonat_dial_timeout
        peer = Peer(self.reactor, self.keypair, handshake_timeout=timeout,
                    early_muxers=(yamux.PROTOCOL_ID,))
        peer.handlers = {}
        peer.noisy = False              # no "Starting factory" line per dial
        connector = self.reactor.connectTCP(host, port, peer, timeout=timeout)
        timer = self.reactor.callLater(timeout, connector.disconnect)

        def done(result):
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                connector.disconnect()
            return result
        return peer.ready.addBoth(done)

    def result(self, version, result, ip, addr=None):
        self.events.autonat(version, result, ip, addr)


class _Request(StreamHandler):
    """Reads length-prefixed messages of one request stream; answers once."""

    def __init__(self, connection):
        self.connection = connection
        self.autonat = connection.factory.autonat
        self.buf = b""
        self.busy = False
        self.gone = False

    def data_received(self, data):
        if self.gone:
            return                      # answered: anything more is dropped unread
        self.buf += data
        while not self.gone:
            try:
                got = varint.split_prefixed(self.buf, MAX_MESSAGE)
            except ValueError:
                return self.stream.reset()
            if got is None:
                return
            message, self.buf = got
            try:
                self.message(protobuf.decode(message))
            except ValueError:
                self.bad()

    def answer(self, message):
        if not self.gone:
            self.gone = True
            self.stream.write(varint.prefixed(message))
            self.stream.close()

    def stream_closed(self, reset):
        self.gone = True


class V1Handler(_Request):
    """``/libp2p/autonat/1.0.0``: Dial{peer{id, addrs}} -> DialResponse."""

    def message(self, fields):
        if self.busy:
            return self.bad()
        self.busy = True
        ip = self.connection.ip
        dial = protobuf.decode(protobuf.first_bytes(fields, 2) or b"")
        peer = protobuf.decode(protobuf.first_bytes(dial, 1) or b"")
        peer_id = protobuf.first_bytes(peer, 1)
        if protobuf.first_int(fields, 1, 0) != 0 or peer_id is None \
                or PeerId(peer_id) != self.connection.remote_peer:
            return self.bad()
        if not self.autonat.admit(ip):
            self.autonat.result("v1", "rejected", ip)
            return self.reply(V1_DIAL_REFUSED, "rate limited")
        targets = []
        for addr in protobuf.all_bytes(peer, 2)[:MAX_ADDRS]:
            target = self.autonat.target(addr)
            if target is not None and target[0] == ip and target not in targets:
                targets.append(target)
        if not targets:
            self.autonat.result("v1", "refused", ip)
            return self.reply(V1_DIAL_REFUSED, "no dialable address on the observed IP")
        self.try_next(targets[:MAX_V1_DIALS])

    def try_next(self, targets):
        if self.gone:
            return
        if not targets:
            self.autonat.result("v1", "dial-error", self.connection.ip)
            return self.reply(V1_DIAL_ERROR, "dial failed")
        host, port = targets[0]
        d = self.autonat.dial(host, port)

        def dialled(conn):
            same = conn.remote_peer == self.connection.remote_peer
            conn.close()
            if not same:
                return self.try_next(targets[1:])
            addr = f"/{'ip6' if ':' in host else 'ip4'}/{host}/tcp/{port}"
            self.autonat.result("v1", "ok", self.connection.ip, addr)
            self.reply(V1_OK, "OK", multiaddr.to_bytes(addr))
        d.addCallbacks(dialled, lambda _: self.try_next(targets[1:]))

    def reply(self, status, text, addr=None):
        self.answer(protobuf.encode([(1, 1), (3, protobuf.encode([(1, status), (2, text), (3, addr)]))]))

    def bad(self):
        self.autonat.result("v1", "bad-request", self.connection.ip)
        self.reply(V1_BAD_REQUEST, "bad request")


class V2Handler(_Request):
    """``/libp2p/autonat/2/dial-request``: DialRequest{addrs, nonce}, dial data
    when the chosen address is on another IP, then the dial back and DialResponse."""

    target = index = nonce = None
    owed = 0

    def message(self, fields):
        if self.owed:
            return self.dial_data(protobuf.first_bytes(fields, 4))
        if self.busy:
            return self.bad()
        self.busy = True
        request = protobuf.decode(protobuf.first_bytes(fields, 1) or b"")
        self.nonce = protobuf.first(request, 2)
        if not isinstance(self.nonce, protobuf.Fixed64):
            return self.bad()
        ip = self.connection.ip
        if not self.autonat.admit(ip):
            self.autonat.result("v2", "rejected", ip)
            return self.reply(V2_REJECTED)
        for index, addr in enumerate(protobuf.all_bytes(request, 1)[:MAX_ADDRS]):
            target = self.autonat.target(addr)
            if target is not None:
                self.index, self.target = index, target
                break
        else:
            self.autonat.result("v2", "refused", ip)
            return self.reply(V2_REFUSED)
        if self.target[0] == ip:
            return self.dial_back()
        self.owed = self.autonat.settings.autonat_dial_data
        self.stream.write(varint.prefixed(protobuf.encode(
            [(3, protobuf.encode([(1, self.index), (2, self.owed)]))])))

    def dial_data(self, message):
        data = protobuf.first_bytes(protobuf.decode(message or b""), 1) or b""
        if message is None or len(data) > MAX_DIAL_DATA_CHUNK:
            return self.bad()
        self.owed = max(0, self.owed - len(data))
        if not self.owed:
            self.dial_back()

    def dial_back(self):
        d = self.autonat.dial(*self.target)

        def dialled(conn):
            back = DialBack(self.nonce)
            timer = self.autonat.reactor.callLater(self.autonat.settings.autonat_dial_timeout,
                                                   back.give_up)
            if conn.open_protocol(V2_BACK, back) is None:
                back.give_up()

            def finished(status):
                if timer.active():
                    timer.cancel()
                conn.close()
                return status
            return back.done.addCallback(finished)
        d.addCallbacks(dialled, lambda _: DIAL_ERROR)
        d.addCallback(self.dialled)

    def dialled(self, status):
        result = {DIAL_OK: "ok", DIAL_ERROR: "dial-error"}.get(status, "dial-back-error")
        host, port = self.target
        self.autonat.result("v2", result, self.connection.ip,
                            f"/{'ip6' if ':' in host else 'ip4'}/{host}/tcp/{port}")
        self.reply(V2_OK, status)

    def reply(self, status, dial_status=None):
        self.answer(protobuf.encode([(2, protobuf.encode(
            [(1, status), (2, self.index), (3, dial_status)]))]))

    def bad(self):
        self.autonat.result("v2", "bad-request", self.connection.ip)
        self.gone = True
        self.stream.reset()


class DialBack(StreamHandler):
    """Sends DialBack{nonce}; ``done`` fires with DIAL_OK once the peer answers."""

    def __init__(self, nonce):
        self.nonce = nonce
        self.buf = b""
        self.done = defer.Deferred()

    def stream_opened(self, stream):
        self.stream = stream
        stream.write(varint.prefixed(protobuf.encode([(1, self.nonce)])))

    def data_received(self, data):
        if self.done.called:
            return
        self.buf += data
        try:
            got = varint.split_prefixed(self.buf, MAX_MESSAGE)
        except ValueError:
            return self.give_up()
        if got is not None:
            self.done.callback(DIAL_OK)

    def stream_closed(self, reset):
        self.give_up()

    def give_up(self):
        if not self.done.called:
            self.done.callback(DIAL_BACK_ERROR)

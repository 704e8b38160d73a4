"""Just enough of a TURN client (RFC 8656) to drive coturn with the same
paced load generator as relayd: Allocate (coturn runs with ``--no-auth``),
ChannelBind to a peer address, then ChannelData datagrams, each of which
coturn relays once, from the allocation to the peer.

A request is retransmitted as RFC 8489 section 6.2.1 says: the same bytes
(the same transaction ID, so the server answers a retransmitted Allocate
from its cache instead of refusing it as a second allocation), after an
RTO that doubles from 0.5 s.
"""
import os
import struct

from bench.datagram import exchange
from relayd.udp import stun

ALLOCATE, CHANNEL_BIND = 0x003, 0x009
CHANNEL_NUMBER, XOR_PEER_ADDRESS = 0x000C, 0x0012
REQUESTED_TRANSPORT, XOR_RELAYED_ADDRESS = 0x0019, 0x0016
UDP = struct.pack("!B3x", 17)
FIRST_CHANNEL = 0x4000


class TurnError(Exception):
    """The server refused a request or did not answer it."""


def request(sock, server, method, attributes, timeout=5.0, rto=0.5):
    """Send one request from ``sock``, retransmitted until answered or
    ``timeout`` seconds have passed; the success response (a stun.Message)."""
    txid = os.urandom(12)
    packet = stun.encode(method, stun.REQUEST, txid, attributes(txid))
    answer = exchange(sock, server, packet, lambda data: _response(data, txid), timeout, rto, 2)
    if answer is None:
        raise TurnError(f"no answer to TURN method {method:#x} from {server}")
    if answer.cls != stun.SUCCESS:
        raise TurnError(f"TURN method {method:#x} refused: {answer.get(stun.ERROR_CODE)!r}")
    return answer


def _response(data, txid):
    """``data`` as a stun.Message if it is the response to ``txid``, else None."""
    if stun.looks_like_stun(data):
        answer = stun.parse(data)
        if answer.transaction_id == txid:
            return answer
    return None


def allocate(sock, server):
    """An allocation for ``sock``; its relayed (host, port)."""
    answer = request(sock, server, ALLOCATE, lambda txid: [(REQUESTED_TRANSPORT, UDP)])
    return stun.decode_xor_address(answer.get(XOR_RELAYED_ADDRESS), answer.transaction_id)


def bind(sock, server, peer, number=FIRST_CHANNEL):
    """Bind channel ``number`` of ``sock``'s allocation to ``peer`` (host, port)."""
    request(sock, server, CHANNEL_BIND, lambda txid: [
        (CHANNEL_NUMBER, struct.pack("!HH", number, 0)),
        (XOR_PEER_ADDRESS, stun.xor_address(peer[0], peer[1], txid))])


def channel_data(number, data):
    """A ChannelData message (over UDP, no padding)."""
    return struct.pack("!HH", number, len(data)) + data

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
import socket
import struct
import time

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
    deadline = time.monotonic() + timeout
    while True:
        sock.sendto(packet, server)
        wait_until = min(deadline, time.monotonic() + rto)
        answer = _answer(sock, txid, wait_until)
        if answer is not None:
            break
        if time.monotonic() >= deadline:
            raise TurnError(f"no answer to TURN method {method:#x} from {server}")
        rto *= 2
    if answer.cls != stun.SUCCESS:
        raise TurnError(f"TURN method {method:#x} refused: {answer.get(stun.ERROR_CODE)!r}")
    return answer


def _answer(sock, txid, wait_until):
    """The response to ``txid`` that reaches ``sock`` before ``wait_until``, or None."""
    while True:
        left = wait_until - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(2048)
        except socket.timeout:
            return None
        if stun.looks_like_stun(data):
            answer = stun.parse(data)
            if answer.transaction_id == txid:
                return answer


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

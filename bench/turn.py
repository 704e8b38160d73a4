"""Just enough of a TURN client (RFC 8656) to drive coturn with the same
paced load generator as relayd: Allocate (coturn runs with ``--no-auth``),
ChannelBind to a peer address, then ChannelData datagrams, each of which
coturn relays once, from the allocation to the peer.
"""
import os
import socket
import struct

from relayd.udp import stun

ALLOCATE, CHANNEL_BIND = 0x003, 0x009
CHANNEL_NUMBER, XOR_PEER_ADDRESS = 0x000C, 0x0012
REQUESTED_TRANSPORT, XOR_RELAYED_ADDRESS = 0x0019, 0x0016
UDP = struct.pack("!B3x", 17)
FIRST_CHANNEL = 0x4000


class TurnError(Exception):
    """The server refused a request or did not answer it."""


def request(sock, server, method, attributes, timeout=5.0):
    """Send one request from ``sock``; the success response (a stun.Message)."""
    txid = os.urandom(12)
    sock.settimeout(timeout)
    sock.sendto(stun.encode(method, stun.REQUEST, txid, attributes(txid)), server)
    try:
        while True:
            data, _ = sock.recvfrom(2048)
            if not stun.looks_like_stun(data):
                continue
            answer = stun.parse(data)
            if answer.transaction_id != txid:
                continue
            if answer.cls != stun.SUCCESS:
                raise TurnError(f"TURN method {method:#x} refused: {answer.get(stun.ERROR_CODE)!r}")
            return answer
    except socket.timeout:
        raise TurnError(f"no answer to TURN method {method:#x} from {server}") from None


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

"""Hostile input for the daemon's listeners, drawn from a seeded ``random.Random``:
requests of each protocol with wrong types, odd values, missing and extra
keys, then damaged at the byte level (cut, flipped, bad UTF-8, NUL)."""
import base64
import json
import struct

STUN_MAGIC = 0x2112A442

ODD = [None, True, False, 0, -1, 1.5, -0.0, 2 ** 63, -2 ** 63 - 1, 10 ** 40, 1e308, "",
       " ", "*", "#", "#lobby", "..", "../../etc/passwd", "\u0000", "\ud800", "\udfff\ud800",
       "\u202e", "é" * 40, "x" * 300, "%s%n{0}", [], [None], {}, {"a": {"b": []}}, ["x"] * 50]


def odd(rng):
    return rng.choice(ODD)


def peer_id(rng):
    return rng.choice(["alice", "bob", "fz%d" % rng.randrange(50), "owner%d" % rng.randrange(6),
                       "a" * 64, "a" * 65,
                       "bad id", "ünï", "*", "#room", "-", "_x"])


def room(rng):
    return rng.choice(["lobby", "fz", "#lobby", "a" * 64, "a" * 200, "with space", "ok-room"])


def b64(rng, size=32):
    return base64.b64encode(rng.randbytes(size)).decode()


def msg_id(rng):
    return rng.choice([rng.randbytes(32).hex(), "0" * 64, "g" * 64, "ab", ""])


def prekey(rng):
    return {"key": b64(rng), "sig": b64(rng, 64)}


TCP_REQUESTS = {
    "hello": {"id": peer_id, "key": b64, "acks": lambda rng: rng.random() < 0.5},
    "auth": {"signature": lambda rng: b64(rng, 64)},
    "send": {"to": peer_id, "room": room, "body": lambda rng: rng.choice(["hi", "é" * 100, "x" * 3000]),
             "text": lambda rng: "t", "nonce": lambda rng: rng.choice(["n1", "n" * 129, ""])},
    "join": {"room": room, "persist": lambda rng: rng.random() < 0.5},
    "leave": {"room": room},
    "peers": {}, "rooms": {}, "ping": {},
    "history": {"limit": lambda rng: rng.choice([1, 50, 10 ** 9]), "room": room, "with": peer_id},
    "ack": {"ids": lambda rng: [msg_id(rng) for _ in range(rng.randrange(5))]},
    "keys_publish": {"spk": prekey, "opks": lambda rng: [prekey(rng) for _ in range(rng.randrange(3))]},
    "keys_status": {},
    "keys_fetch": {"id": peer_id, "opk": lambda rng: rng.random() < 0.5},
}

UDP_REQUESTS = {
    "register": {"name": peer_id, "cookie": lambda rng: rng.choice(["", "1.ab", "x"]),
                 "key": b64, "challenge": lambda rng: "1.ab", "signature": lambda rng: b64(rng, 64),
                 "pad": lambda rng: "p" * rng.randrange(200)},
    "keepalive": {"name": peer_id},
    "ping": {"name": peer_id, "cookie": lambda rng: "", "pad": lambda rng: "p" * rng.randrange(200)},
    "relay": {"target": peer_id, "source": peer_id, "payload": lambda rng: rng.choice(
        ["hi", {"k": [1, 2]}, "x" * 2000, None])},
    "connect": {"target": peer_id},
}

FEDERATION_FRAMES = {
    "hello": {"proto": lambda rng: rng.choice(["relayd-federation/1", "x"]), "relay": peer_id,
              "key": b64, "nonce": lambda rng: rng.randbytes(16).hex(),
              "features": lambda rng: ["have-ranges"]},
    "auth": {"sig": lambda rng: b64(rng, 64)},
}


def seq(rng):
    return rng.choice([1, 2, rng.randrange(1, 10 ** 6), 0, -1, 2 ** 63 - 1, 2 ** 63, 1.5, "5"])


def origin(rng):
    return rng.choice(["other", "fuzzed", "third", "x" * 65, "bad id"])


def entry(rng):
    """A federated message entry, some of its fields odd."""
    e = request(rng, {"": {
        "from": peer_id, "to": lambda rng: rng.choice(["*", "#lobby", "bob", peer_id(rng)]),
        "body": lambda rng: rng.choice(["hi", "\ud800", "x" * 3000]),
        "timestamp": lambda rng: rng.choice([1.7e9, 0, -1.0, 1e308]),
        "seen_by": lambda rng: rng.choice([["other"], [], ["other"] * 40, ["fuzzed"]]),
        "msg_id": msg_id, "room": room, "via": lambda rng: "gossipsub",
        "nonce": lambda rng: "n"}}, "")
    if rng.random() < 0.9:
        del e["type"]
    return e


def have(rng):
    return {origin(rng): [seq(rng), [seq(rng) for _ in range(rng.randrange(4))],
                          [[1, 2], [5, rng.randrange(10 ** 6)]]][:rng.randrange(1, 4)]
            for _ in range(rng.randrange(3))}


FEDERATION_ITEMS = {
    "msg": {"origin": origin, "seq": seq, "entry": entry},
    "receipt": {"origin": origin, "seq": seq, "msg_id": msg_id, "to": peer_id,
                "timestamp": lambda rng: 1.7e9},
    "sync": {"have": have},
    "synced": {"sent": seq, "more": lambda rng: rng.random() < 0.5,
               "lost": lambda rng: [[1, 2], [rng.randrange(10), rng.randrange(10)]],
               "skipped": seq},
    "ping": {}, "pong": {},
    "keys_fetch": {"qid": seq, "id": peer_id, "opk": lambda rng: True},
    "keys": {"qid": seq, "record": lambda rng: rng.choice([None, {"ik": b64(rng)}])},
    "error": {"error": lambda rng: "bad_frame", "message": lambda rng: "x" * 500},
}


def federation_items(rng, count):
    """Frames an authenticated peer might send, odd in their values; a
    frame that is not a JSON object ends the link, so few are."""
    return b"".join(encode(rng, request(rng, FEDERATION_ITEMS), 0.02).replace(b"\n", b" ")
                    + b"\n" for _ in range(count))


def request(rng, kinds, kind=None):
    """One request of ``kinds`` (a kind's keys and how to draw a plausible
    value), some keys left out, some given odd values, sometimes an extra
    key or ``req``; now and then a wrong ``type`` altogether."""
    kind = kind or rng.choice(sorted(kinds))
    obj = {"type": kind if rng.random() < 0.95 else odd(rng)}
    for key, draw in kinds.get(kind, {}).items():
        roll = rng.random()
        if roll < 0.6:
            obj[key] = draw(rng)
        elif roll < 0.8:
            obj[key] = odd(rng)
    if rng.random() < 0.2:
        obj[rng.choice(["req", "extra", "type", ""])] = odd(rng)
    return obj


def encode(rng, obj, damaged=0.3):
    """``obj`` as JSON, damaged in one way or another ``damaged`` of the time."""
    data = json.dumps(obj).encode()
    if rng.random() >= damaged or not data:
        return data
    roll = 0.7 + 0.3 * rng.random()
    if roll < 0.75:
        return data[:rng.randrange(len(data))]
    if roll < 0.80:
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    if roll < 0.85:
        at = rng.randrange(len(data))
        return data[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00"]) + data[at:]
    if roll < 0.90:
        return rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1" * 5000, b"[" * 3000,
                           b'{"type": "send", "body": NaN}', b'{"type": "ping", "type": "hello"}',
                           b'"just a string"', b"null", b"{}", b"[]"])
    if roll < 0.95:
        return data.replace(b":", b":" + json.dumps(odd(rng)).encode() + b",", 1)
    return rng.randbytes(rng.randrange(1, 200))


def json_lines(rng, count):
    """``count`` lines of the TCP JSON-lines protocol."""
    return b"".join(encode(rng, request(rng, TCP_REQUESTS)).replace(b"\n", b" ") + b"\n"
                    for _ in range(count))


def legacy_frames(rng, count):
    """A seed-000 session: the peer id, then ``target||{json}`` frames."""
    out = [peer_id(rng).encode() + rng.choice([b"", b"\n"])]
    for _ in range(count):
        target = rng.choice([b"*", b"", b"#lobby", b"bob", b"a" * 300, b"\xff\xfe", b"|"])
        body = encode(rng, {"from": odd(rng), "text": rng.choice(["hi", odd(rng)])})
        out.append(target + b"||" + body + rng.choice([b"", b"\n", b"||"]))
    return b"".join(out)


def datagram(rng, cookie=None):
    """A UDP datagram: a rendezvous packet (most carrying ``cookie``, if
    given), a STUN message (well formed, damaged or classic), or noise."""
    roll = rng.random()
    if roll < 0.6:
        packet = request(rng, UDP_REQUESTS)
        if cookie is not None and rng.random() < 0.9:
            packet["cookie"] = cookie
        return encode(rng, packet)
    if roll < 0.9:
        return stun(rng)
    return rng.randbytes(rng.randrange(0, 600))


def stun(rng):
    attrs = b""
    for _ in range(rng.randrange(4)):
        kind = rng.choice([0x0006, 0x0008, 0x8028, 0x0024, 0x8029, 0x0003, 0x0004, 0x7FFF,
                           rng.randrange(0x10000)])
        value = rng.randbytes(rng.randrange(0, 24))
        attrs += struct.pack("!HH", kind, len(value) + rng.choice([0, 0, 0, 1, 40]))
        attrs += value + b"\0" * (-len(value) % 4)
    method = rng.choice([0x0001, 0x0001, 0x0011, 0x0101, 0x0002, rng.randrange(0x4000)])
    length = len(attrs) + rng.choice([0, 0, 0, 4, -4])
    head = struct.pack("!HHI", method, length & 0xFFFF,
                       STUN_MAGIC if rng.random() < 0.8 else rng.randrange(1 << 32))
    data = head + rng.randbytes(12) + attrs
    return data[:rng.randrange(len(data) + 1)] if rng.random() < 0.1 else data


def federation_handshake(rng, count):
    """Unauthenticated federation frames: hellos and auths, then items."""
    frames = [request(rng, FEDERATION_FRAMES, "hello")]
    frames += [request(rng, FEDERATION_FRAMES) for _ in range(count)]
    return b"".join(encode(rng, f).replace(b"\n", b" ") + b"\n" for f in frames)


WS_UPGRADE = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def websocket(rng):
    """An upgrade, then frames: any opcode, fragmented or not, masked or not,
    with lengths in each of the three forms, some of them lying."""
    out = WS_UPGRADE
    for _ in range(rng.randrange(1, 8)):
        payload = rng.choice([b"\x13/multistream/1.0.0\n\x07/noise\n", rng.randbytes(
            rng.choice([0, 5, 125, 126, 300, 70000]))])
        opcode = rng.choice([0x0, 0x1, 0x2, 0x2, 0x8, 0x9, 0xA, 0x3, 0xF])
        head = bytes([(0x80 if rng.random() < 0.8 else 0) | opcode])
        size = len(payload) if rng.random() < 0.9 else rng.choice([2 ** 63 - 1, 2 ** 31, 127])
        masked = 0x80 if rng.random() < 0.9 else 0
        if size < 126:
            head += bytes([masked | size])
        elif size < 65536:
            head += bytes([masked | 126]) + size.to_bytes(2, "big")
        else:
            head += bytes([masked | 127]) + size.to_bytes(8, "big")
        mask = rng.randbytes(4) if masked else b""
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        out += head + mask + payload
    return out


def noise(rng):
    """What a scanner throws at any port."""
    return rng.choice([
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /metrics HTTP/1.0\r\n" + b"X: " + b"a" * 9000 + b"\r\n\r\n",
        b"POST /stats HTTP/1.1\r\nContent-Length: 99999999\r\n\r\nabc",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(200),   # a TLS hello
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"/multistream/1.0.0\n",
        b"\x13/multistream/1.0.0\n\x07/noise\n" + rng.randbytes(300),
        b"\x13/multistream/1.0.0\n" + rng.randbytes(2) + b"/yamux/1.0.0\n",
        rng.randbytes(rng.randrange(1, 3000)),
    ])


# --- libp2p stream protocols: protobuf messages, varint length-prefixed ------------------

def uvarint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# field number -> a sub-schema (a nested message), "bytes", "varint" or "string"
PEER = {1: "bytes", 2: "bytes"}
SCHEMAS = {
    "/ipfs/kad/1.0.0": {1: "varint", 2: "bytes", 3: {1: "bytes", 2: "bytes", 5: "string"},
                        8: PEER, 9: PEER, 10: "varint"},
    "/libp2p/circuit/relay/0.2.0/hop": {1: "varint", 2: PEER, 3: {1: "varint", 2: "bytes", 3: "bytes"},
                                        4: {1: "varint", 2: "varint"}, 5: "varint"},
    "/meshsub/1.1.0": {1: {1: "varint", 2: "string"},
                       2: {1: "bytes", 2: "bytes", 3: "bytes", 4: "string", 5: "bytes", 6: "bytes"},
                       3: {1: {1: "string", 2: "bytes"}, 2: {1: "bytes"}, 3: {1: "string"},
                           4: {1: "string", 2: PEER, 3: "varint"}}},
    "/ipfs/id/push/1.0.0": {1: "bytes", 2: "bytes", 3: "string", 4: "bytes", 5: "string",
                            6: "string", 8: "bytes"},
    "/libp2p/autonat/1.0.0": {1: "varint", 2: {1: PEER}, 3: {1: "varint", 2: "string", 3: "bytes"}},
    "/libp2p/autonat/2/dial-request": {1: {1: "bytes", 2: "fixed64"}, 2: {1: "bytes"}},
    "/ipfs/ping/1.0.0": None,
}
ANSWERS = {         # what a peer writes on a stream the relay opened to it
    "/libp2p/circuit/relay/0.2.0/stop": {1: "varint", 2: PEER, 3: {1: "varint", 2: "varint"},
                                         4: "varint"},
}


def protobuf(rng, schema, depth=0):
    """A message of ``schema``: its fields in any order, some repeated or
    missing, some with the wrong wire type, huge or negative numbers."""
    out = b""
    for number, kind in schema.items():
        for _ in range(rng.choice([0, 1, 1, 1, 2, 5])):
            if rng.random() < 0.05:                         # a wire type it does not expect
                kind = rng.choice(["varint", "bytes", "fixed64", "fixed32", "group"])
            if kind == "varint":
                out += uvarint(number << 3) + uvarint(rng.choice(
                    [0, 1, 2, 3, 5, 100, 2 ** 32, 2 ** 64 - 1]))
            elif kind == "fixed64":
                out += uvarint(number << 3 | 1) + rng.randbytes(8)
            elif kind == "fixed32":
                out += uvarint(number << 3 | 5) + rng.randbytes(4)
            elif kind == "group":
                out += uvarint(number << 3 | 3)
            else:
                if isinstance(kind, dict) and depth < 4:
                    value = protobuf(rng, kind, depth + 1)
                elif kind == "string":
                    value = rng.choice(["lobby", "libp2p-chat", "", "é" * 300, "\x00"]).encode()
                else:
                    value = rng.randbytes(rng.choice([0, 1, 32, 34, 38, 300]))
                out += uvarint(number << 3 | 2) + uvarint(len(value)) + value
    if rng.random() < 0.05:
        out = out[:rng.randrange(len(out) + 1)]
    return out


def stream_bytes(rng, protocol, schemas=SCHEMAS):
    """What a peer writes on a stream of ``protocol``: length-prefixed
    messages, now and then with a prefix that lies, or plain noise."""
    schema = schemas[protocol]
    if schema is None or rng.random() < 0.05:
        return rng.randbytes(rng.randrange(1, 200))
    out = b""
    for _ in range(rng.randrange(1, 4)):
        body = protobuf(rng, schema)
        prefix = len(body) if rng.random() < 0.9 else rng.choice([0, len(body) + 10, 2 ** 31])
        out += uvarint(prefix) + body
    return out

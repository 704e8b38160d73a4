"""The pubsub ``RPC`` protobuf, message ids and message signatures.

A signed message carries ``from`` (the author's peer id), ``seqno`` (8
bytes), and ``signature``: the author's key over ``"libp2p-pubsub:"`` and
the message's own protobuf without its ``signature`` and ``key`` fields.
The id of a message is ``from || seqno`` (go-libp2p and js-libp2p's default).
"""
from relayd.libp2p import protobuf, varint
from relayd.libp2p.peerid import PeerId, verify

SIGN_PREFIX = b"libp2p-pubsub:"


class Message:
    __slots__ = ("sender", "data", "seqno", "topic", "signature", "key", "raw")

    def __init__(self, sender, data, seqno, topic, signature=None, key=None, raw=None):
        self.sender = sender        # ``from``: peer id bytes, or None
        self.data = data
        self.seqno = seqno
        self.topic = topic
        self.signature = signature
        self.key = key
        self.raw = raw              # the protobuf as received (forwarded unchanged)

    @property
    def id(self):
        return (self.sender or b"") + (self.seqno or b"")

    def encode(self):
        if self.raw is None:
            self.raw = protobuf.encode([(1, self.sender), (2, self.data), (3, self.seqno),
                                        (4, self.topic), (5, self.signature), (6, self.key)])
        return self.raw


def _fields_without_signature(raw):
    """The message's bytes minus its signature (5) and key (6) fields, in wire order."""
    out = bytearray()
    pos = 0
    while pos < len(raw):
        start = pos
        key, pos = varint.decode(raw, pos)
        wire = key & 7
        if wire == 0:
            _, pos = varint.decode(raw, pos)
        elif wire == 2:
            length, pos = varint.decode(raw, pos)
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        if key >> 3 not in (5, 6):
            out += raw[start:pos]
    return bytes(out)


def sign(keypair, topic, data, seqno):
    unsigned = protobuf.encode([(1, keypair.peer_id.bytes), (2, data), (3, seqno), (4, topic)])
    signature = keypair.sign(SIGN_PREFIX + unsigned)
    return Message(keypair.peer_id.bytes, data, seqno, topic, signature)


def check_signature(msg):
    """True when ``msg`` is signed by its ``from`` peer."""
    if msg.sender is None or msg.signature is None or msg.seqno is None:
        return False
    try:
        author = PeerId(msg.sender)
        public_key = msg.key if msg.key is not None else author.public_key()
        if public_key is None or PeerId.from_public_key(public_key) != author:
            return False
        return verify(public_key, msg.signature, SIGN_PREFIX + _fields_without_signature(msg.raw))
    except ValueError:
        return False


def decode_message(raw):
    fields = protobuf.decode(raw)
    topic = protobuf.first_bytes(fields, 4)
    if topic is None:
        raise ValueError("message without a topic")
    return Message(protobuf.first_bytes(fields, 1), protobuf.first_bytes(fields, 2) or b"",
                   protobuf.first_bytes(fields, 3), topic.decode("utf-8"),
                   protobuf.first_bytes(fields, 5), protobuf.first_bytes(fields, 6), raw)


class RPC:
    """``subscriptions``: [(subscribe, topic)]; ``publish``: [Message];
    control: ``ihave`` [(topic, [ids])], ``iwant`` [ids], ``graft`` [topic],
    ``prune`` [(topic, backoff)]."""

    __slots__ = ("subscriptions", "publish", "ihave", "iwant", "graft", "prune")

    def __init__(self, subscriptions=(), publish=(), ihave=(), iwant=(), graft=(), prune=()):
        self.subscriptions = list(subscriptions)
        self.publish = list(publish)
        self.ihave = list(ihave)
        self.iwant = list(iwant)
        self.graft = list(graft)
        self.prune = list(prune)

    def __bool__(self):
        return bool(self.subscriptions or self.publish or self.ihave or self.iwant
                    or self.graft or self.prune)

    def encode(self):
        control = None
        if self.ihave or self.iwant or self.graft or self.prune:
            control = protobuf.encode([
                (1, [protobuf.encode([(1, t), (2, list(ids))]) for t, ids in self.ihave]),
                (2, [protobuf.encode([(1, list(self.iwant))])] if self.iwant else None),
                (3, [protobuf.encode([(1, t)]) for t in self.graft]),
                (4, [protobuf.encode([(1, t), (3, backoff)]) for t, backoff in self.prune]),
            ])
        return protobuf.encode([
            (1, [protobuf.encode([(1, int(sub)), (2, t)]) for sub, t in self.subscriptions]),
            (2, [m.encode() for m in self.publish]),
            (3, control),
        ])


def _text(value):
    if not isinstance(value, bytes):
        raise ValueError("expected a string")
    return value.decode("utf-8")


def decode(data):
    """An RPC; ValueError when malformed (messages without a topic included)."""
    fields = protobuf.decode(data)
    rpc = RPC()
    for raw in protobuf.all_bytes(fields, 1):
        sub = protobuf.decode(raw)
        topic = protobuf.first_bytes(sub, 2)
        if topic is not None:
            rpc.subscriptions.append((bool(protobuf.first_int(sub, 1, 0)), _text(topic)))
    rpc.publish = [decode_message(raw) for raw in protobuf.all_bytes(fields, 2)]
    control = protobuf.first_bytes(fields, 3)
    if control is not None:
        c = protobuf.decode(control)
        for raw in protobuf.all_bytes(c, 1):
            ihave = protobuf.decode(raw)
            rpc.ihave.append((_text(protobuf.first_bytes(ihave, 1) or b""),
                              [i for i in ihave.get(2, []) if isinstance(i, bytes)]))
        for raw in protobuf.all_bytes(c, 2):
            rpc.iwant += [i for i in protobuf.decode(raw).get(1, []) if isinstance(i, bytes)]
        for raw in protobuf.all_bytes(c, 3):
            rpc.graft.append(_text(protobuf.first_bytes(protobuf.decode(raw), 1) or b""))
        for raw in protobuf.all_bytes(c, 4):
            prune = protobuf.decode(raw)
            rpc.prune.append((_text(protobuf.first_bytes(prune, 1) or b""),
                              protobuf.first_int(prune, 3, 0)))
    return rpc

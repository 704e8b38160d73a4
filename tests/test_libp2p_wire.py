"""multistream-select, Noise XX and Yamux framing, in memory."""
import hashlib
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.trial import unittest

from relayd.libp2p import multistream, noise, ping, yamux
from relayd.libp2p.peerid import KeyPair


class MultistreamTests(unittest.TestCase):
    def test_message_framing_spec_example(self):
        self.assertEqual(multistream.message("na"), bytes.fromhex("036e610a"))
        self.assertEqual(multistream.message("/multistream/1.0.0"), b"\x13/multistream/1.0.0\n")

    def test_header_and_proposal_in_one_write_keeps_leftover(self):
        listener = multistream.Listener({"/noise"})
        reply = listener.feed(multistream.message(multistream.HEADER)
                              + multistream.message("/noise") + b"\x00\x20handshake")
        self.assertEqual(reply, multistream.message(multistream.HEADER) + multistream.message("/noise"))
        self.assertEqual(listener.result, ("/noise", b"\x00\x20handshake"))

    def test_byte_by_byte_and_na(self):
        listener = multistream.Listener({"/yamux/1.0.0"})
        data = (multistream.message(multistream.HEADER) + multistream.message("/mplex/6.7.0")
                + multistream.message("/yamux/1.0.0"))
        out = b"".join(listener.feed(data[i:i + 1]) for i in range(len(data)))
        self.assertEqual(out, multistream.message(multistream.HEADER) + multistream.message("na")
                         + multistream.message("/yamux/1.0.0"))
        self.assertEqual(listener.result, ("/yamux/1.0.0", b""))

    def test_dialer(self):
        dialer = multistream.Dialer("/ipfs/ping/1.0.0")
        self.assertEqual(dialer.start(), multistream.message(multistream.HEADER)
                         + multistream.message("/ipfs/ping/1.0.0"))
        dialer.feed(multistream.message(multistream.HEADER))
        self.assertIsNone(dialer.result)
        dialer.feed(multistream.message("/ipfs/ping/1.0.0") + b"pong")
        self.assertEqual(dialer.result, ("/ipfs/ping/1.0.0", b"pong"))
        refused = multistream.Dialer("/x")
        self.assertRaises(multistream.NegotiationFailed, refused.feed,
                          multistream.message(multistream.HEADER) + multistream.message("na"))

    def test_bad_input(self):
        for bad in (b"\x05hello", multistream.message("/other/1.0.0"),
                    b"\x82\x08" + b"/" * 1030 + b"\n"):
            self.assertRaises(multistream.NegotiationFailed, multistream.Listener({"/a"}).feed, bad)
        listener = multistream.Listener({"/a"}, max_attempts=2)
        listener.feed(multistream.message(multistream.HEADER))
        self.assertRaises(multistream.NegotiationFailed, listener.feed,
                          multistream.message("/b") * 3)


def keypair():
    return KeyPair(Ed25519PrivateKey.generate())


def handshake(initiator_key, responder_key):
    i, r = noise.Handshake(initiator_key, True), noise.Handshake(responder_key, False)
    msg1 = i.write_message()
    r.read_message(msg1)
    msg2 = r.write_message()
    i.read_message(msg2)
    msg3 = i.write_message()
    r.read_message(msg3)
    return i, r, (msg1, msg2, msg3)


class NoiseTests(unittest.TestCase):
    def test_initial_state(self):
        # the name is exactly 32 bytes, so it is h itself (not hashed); then the empty prologue
        self.assertEqual(len(noise.PROTOCOL_NAME), 32)
        self.assertEqual(noise.SymmetricState().h, hashlib.sha256(noise.PROTOCOL_NAME).digest())

    def test_xx_handshake_authenticates_both_sides(self):
        a, b = keypair(), keypair()
        i, r, (msg1, msg2, msg3) = handshake(a, b)
        self.assertEqual(len(msg1), 32)
        payload = len(noise.encode_payload(b, bytes(32)))
        self.assertEqual(len(msg2), 32 + 48 + payload + 16)
        self.assertEqual(len(msg3), 48 + len(noise.encode_payload(a, bytes(32))) + 16)
        self.assertEqual((i.remote_peer, r.remote_peer), (b.peer_id, a.peer_id))
        self.assertEqual(r.recv.decrypt(b"", i.send.encrypt(b"", b"hello")), b"hello")
        self.assertEqual(i.recv.decrypt(b"", r.send.encrypt(b"", b"world")), b"world")

    def test_tampering_is_detected(self):
        a, b = keypair(), keypair()
        i, r = noise.Handshake(a, True), noise.Handshake(b, False)
        r.read_message(i.write_message())
        msg2 = bytearray(r.write_message())
        msg2[40] ^= 1
        self.assertRaises(noise.HandshakeError, i.read_message, bytes(msg2))

    def test_identity_signature_must_cover_the_static_key(self):
        a = keypair()
        payload = noise.encode_payload(a, b"\x01" * 32)
        self.assertRaises(noise.HandshakeError, noise.verify_payload, payload, b"\x02" * 32)
        self.assertEqual(noise.verify_payload(payload, b"\x01" * 32), (a.peer_id, []))
        with_muxers = noise.encode_payload(a, b"\x01" * 32, ["/yamux/1.0.0", "/mplex/6.7.0"])
        self.assertEqual(noise.verify_payload(with_muxers, b"\x01" * 32),
                         (a.peer_id, ["/yamux/1.0.0", "/mplex/6.7.0"]))
        self.assertRaises(noise.HandshakeError, noise.verify_payload, b"\x0a\x00", b"\x01" * 32)

    def test_turns_are_enforced(self):
        r = noise.Handshake(keypair(), False)
        self.assertRaises(noise.HandshakeError, r.write_message)

    def test_transport_framing_splits_at_65519(self):
        a, b = keypair(), keypair()
        i, r, _ = handshake(a, b)
        data = bytes(range(256)) * 600                      # 153600 bytes -> 3 frames
        framed = noise.encrypt_frames(i.send, data)
        deframer = noise.Deframer()
        messages = deframer.feed(framed[:100]) + deframer.feed(framed[100:])
        self.assertEqual([len(m) for m in messages], [65535, 65535, 153600 - 2 * 65519 + 16])
        self.assertEqual(framed[:2], b"\xff\xff")
        self.assertEqual(b"".join(r.recv.decrypt(b"", m) for m in messages), data)
        self.assertEqual(deframer.feed(b"\x00"), [])                   # half a length stays

    def test_frame_limit(self):
        self.assertRaises(ValueError, noise.frame, bytes(65536))


class Recorder(yamux.StreamHandler):
    def __init__(self):
        self.data = b""
        self.fin = False
        self.closed = None

    def data_received(self, data):
        self.data += data

    def read_closed(self):
        self.fin = True

    def stream_closed(self, reset):
        self.closed = "reset" if reset else "closed"


def frames(data):
    out = []
    while data:
        version, kind, flags, sid, length = yamux.HEADER.unpack_from(data)
        size = 12 + (length if kind == yamux.DATA else 0)
        out.append((kind, flags, sid, length, data[12:size]))
        data = data[size:]
    return out


class YamuxTests(unittest.TestCase):
    def setUp(self):
        self.sent = []
        self.errors = []
        self.inbound = []

        def accept(stream):
            recorder = Recorder()
            self.inbound.append(recorder)
            stream.attach(recorder)
        self.session = yamux.Session(self.sent.append, False, accept, self.errors.append)

    def wire(self):
        data, self.sent[:] = b"".join(self.sent), []
        return frames(data)

    def test_header_layout(self):
        self.assertEqual(yamux.header(yamux.DATA, yamux.SYN, 1, 5).hex(), "000000010000000100000005")
        self.assertEqual(yamux.header(yamux.GO_AWAY, 0, 0, 1).hex(), "000300000000000000000001")

    def test_ping_is_answered_with_the_same_value(self):
        self.session.feed(yamux.header(yamux.PING, yamux.SYN, 0, 0xDEADBEEF))
        self.assertEqual(self.wire(), [(yamux.PING, yamux.ACK, 0, 0xDEADBEEF, b"")])

    def test_inbound_stream_acked_data_and_fin_in_one_read(self):
        self.session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 1, 0)
                          + yamux.header(yamux.DATA, 0, 1, 3) + b"abc"
                          + yamux.header(yamux.DATA, yamux.FIN, 1, 0)[:7])
        self.assertEqual(self.wire()[0][:3], (yamux.WINDOW_UPDATE, yamux.ACK, 1))
        recorder = self.inbound[0]
        self.assertEqual((recorder.data, recorder.fin), (b"abc", False))
        self.session.feed(yamux.header(yamux.DATA, yamux.FIN, 1, 0)[7:])
        self.assertTrue(recorder.fin)
        recorder.stream.close()
        self.assertEqual(self.wire(), [(yamux.WINDOW_UPDATE, yamux.FIN, 1, 0, b"")])
        self.assertEqual(recorder.closed, "closed")
        self.assertEqual(self.session.streams, {})

    def test_outbound_streams_use_even_ids_and_respect_the_window(self):
        first, second = Recorder(), Recorder()
        stream = self.session.open_stream(first)
        self.assertEqual((stream.id, self.session.open_stream(second).id), (2, 4))
        self.wire()
        stream.write(b"x" * (yamux.INITIAL_WINDOW + 1000))
        sent = self.wire()
        self.assertEqual(sum(f[3] for f in sent), yamux.INITIAL_WINDOW)
        self.assertTrue(all(f[3] <= yamux.MAX_FRAME for f in sent))
        self.assertEqual(stream.queued, 1000)
        self.session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.ACK, 2, 600))
        self.assertEqual([f[3] for f in self.wire()], [600])
        self.session.feed(yamux.header(yamux.WINDOW_UPDATE, 0, 2, 1 << 20))
        self.assertEqual([f[3] for f in self.wire()], [400])

    def test_receive_window_is_credited_back_unless_paused(self):
        self.session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 1, 0))
        self.wire()
        stream = self.session.streams[1]
        stream.pause()
        half = yamux.INITIAL_WINDOW // 2
        self.session.feed(yamux.header(yamux.DATA, 0, 1, half) + bytes(half))
        self.assertEqual(self.wire(), [])
        stream.resume()
        self.assertEqual(self.wire(), [(yamux.WINDOW_UPDATE, 0, 1, half, b"")])

    def test_overrunning_the_window_is_a_protocol_error(self):
        self.session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 1, 0))
        self.wire()
        size = yamux.INITIAL_WINDOW + 1
        self.session.feed(yamux.header(yamux.DATA, 0, 1, size) + bytes(size))
        self.assertEqual(self.wire()[-1][:4], (yamux.GO_AWAY, 0, 0, yamux.GO_AWAY_PROTOCOL_ERROR))
        self.assertEqual(len(self.errors), 1)

    def test_a_frame_beyond_the_window_is_refused_before_its_payload_arrives(self):
        self.session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 1, 0))
        self.session.feed(yamux.header(yamux.DATA, 0, 1, yamux.INITIAL_WINDOW + 1))
        self.assertEqual(len(self.errors), 1)
        for stream_id, size in ((3, yamux.INITIAL_WINDOW), (5, yamux.INITIAL_WINDOW + 1)):
            errors = []
            session = yamux.Session(lambda data: None, False, lambda s: None, errors.append)
            session.feed(yamux.header(yamux.DATA, 0, stream_id, size))    # a stream it never had
            self.assertEqual(len(errors), size > yamux.INITIAL_WINDOW, size)

    def test_late_data_up_to_a_grown_window_is_dropped_quietly(self):
        stream = self.session.open_stream(Recorder())
        stream.set_window(4 * yamux.INITIAL_WINDOW)
        stream.reset()
        size = 4 * yamux.INITIAL_WINDOW
        self.session.feed(yamux.header(yamux.DATA, 0, stream.id, size) + bytes(size))
        self.assertEqual(self.errors, [])
        self.assertEqual(self.session.buf, b"")

    def test_reset_both_ways(self):
        self.session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 1, 0)
                          + yamux.header(yamux.WINDOW_UPDATE, yamux.RST, 1, 0))
        self.assertEqual(self.inbound[0].closed, "reset")
        mine = Recorder()
        stream = self.session.open_stream(mine)
        self.wire()
        stream.reset()
        self.assertEqual(self.wire(), [(yamux.WINDOW_UPDATE, yamux.RST, 2, 0, b"")])
        self.assertEqual(mine.closed, "reset")

    def test_bad_frames(self):
        for bad in (b"\x01" + bytes(11), yamux.header(yamux.DATA, yamux.SYN, 2, 0),
                    yamux.header(yamux.DATA, 0, 0, 0), bytes([0, 9]) + bytes(10)):
            errors = []
            yamux.Session(lambda data: None, False, lambda s: None, errors.append).feed(bad)
            self.assertEqual(len(errors), 1, bad)

    def test_stream_cap_and_connection_loss(self):
        session = yamux.Session(self.sent.append, False, lambda s: s.attach(Recorder()),
                                self.errors.append, max_streams=1)
        session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 1, 0)
                     + yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 3, 0))
        self.assertEqual(self.wire()[-1], (yamux.WINDOW_UPDATE, yamux.RST, 3, 0, b""))
        handler = session.streams[1].handler
        session.connection_lost()
        self.assertEqual(handler.closed, "reset")


class PingTests(unittest.TestCase):
    def test_a_pinger_that_never_reads_cannot_queue_unbounded_echoes(self):
        """The opener sends as fast as its window allows and never grants any:
        the echoes waiting for window stop the credit, so its sending stops."""
        sent = []
        session = yamux.Session(sent.append, False,
                                lambda s: s.attach(ping.PingResponder(SimpleNamespace(ping_streams=0))),
                                self.fail)
        session.feed(yamux.header(yamux.WINDOW_UPDATE, yamux.SYN, 1, 0))
        window, pushed, chunk = yamux.INITIAL_WINDOW, 0, 32 * 1024
        while window >= chunk and pushed < 8 * 1024 * 1024:
            session.feed(yamux.header(yamux.DATA, 0, 1, chunk) + bytes(chunk))
            window -= chunk
            pushed += chunk
            window += sum(f[3] for f in frames(b"".join(sent)) if f[0] == yamux.WINDOW_UPDATE)
            sent.clear()
        self.assertLess(pushed, 8 * 1024 * 1024)
        self.assertLessEqual(session.streams[1].queued, yamux.HIGH_WATER + yamux.INITIAL_WINDOW)

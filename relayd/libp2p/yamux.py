"""Yamux (``/yamux/1.0.0``): streams with per-stream flow control over one connection.

I/O-free apart from the ``write`` callable the session is given.  Each
stream starts with a 256 KiB window each way; received data is credited
back to the sender (WindowUpdate) only while the stream is not paused, so a
slow consumer pushes back on its sender.  Outgoing data beyond the peer's
window waits in the stream and a registered producer is paused meanwhile.
"""
import struct

PROTOCOL_ID = "/yamux/1.0.0"
HEADER = struct.Struct(">BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 0x1, 0x2, 0x4, 0x8
GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, GO_AWAY_INTERNAL_ERROR = 0, 1, 2
INITIAL_WINDOW = 256 * 1024
MAX_FRAME = 65519 - 12          # header + data fit one Noise transport message
HIGH_WATER = 256 * 1024         # queued outgoing bytes that pause a registered producer
LOW_WATER = 64 * 1024


class ProtocolError(Exception):
    pass


def header(frame_type, flags, stream_id, length):
    return HEADER.pack(0, frame_type, flags, stream_id, length)


class StreamHandler:
    """What a stream delivers to; subclasses override what they need."""

    def stream_opened(self, stream):
        self.stream = stream

    def data_received(self, data):
        pass

    def read_closed(self):
        """The remote half-closed (FIN)."""

    def stream_closed(self, reset):
        """Both directions are done; ``reset`` is True after RST or connection loss."""


class Stream:
    """One stream: ``write``/``close`` (FIN)/``reset`` (RST), ``pause``/``resume``
    of the receive credit, and a producer paused while output is queued."""

    def __init__(self, session, stream_id):
        self.session = session
        self.id = stream_id
        self.handler = None
        self.send_window = INITIAL_WINDOW
        self.recv_window = INITIAL_WINDOW
        self.window = INITIAL_WINDOW    # the receive window we keep granting up to
        self.credit = 0
        self.paused = False
        self.outbuf = bytearray()
        self.producer = None
        self.producer_paused = False
        self.fin_pending = self.fin_sent = self.fin_received = False
        self.closed = False
        self.flags_to_send = 0          # SYN or ACK, carried on the next frame we send

    # --- application side ---------------------------------------------------------
    def attach(self, handler):
        self.handler = handler
        handler.stream_opened(self)

    def write(self, data):
        if self.closed or self.fin_pending:
            return
        self.outbuf += data
        self._flush()

    def close(self):
        """Half-close our direction once queued data is sent."""
        if self.closed or self.fin_pending:
            return
        self.fin_pending = True
        self._flush()

    def reset(self):
        if self.closed:
            return
        self.session._send(header(WINDOW_UPDATE, RST | self._take_flags(), self.id, 0))
        self._finish(reset=True)

    def set_window(self, size):
        """Grow the receive window to ``size`` bytes (a WindowUpdate of the difference)."""
        if size > self.window and not self.closed:
            delta, self.window = size - self.window, size
            self.recv_window += delta
            self.session.max_window = max(self.session.max_window, size)
            self.session._send(header(WINDOW_UPDATE, self._take_flags(), self.id, delta))

    def pause(self):
        """Stop crediting the remote's window (backpressure)."""
        self.paused = True

    def resume(self):
        self.paused = False
        self._grant()

    def register_producer(self, producer):
        """``producer.pause()``/``resume()`` follow this stream's queued output."""
        self.producer = producer

    @property
    def queued(self):
        return len(self.outbuf)

    # --- session side -------------------------------------------------------------
    def _take_flags(self):
        flags, self.flags_to_send = self.flags_to_send, 0
        return flags

    def _flush(self):
        session = self.session
        while self.outbuf and self.send_window > 0 and not session.write_paused and not self.closed:
            size = min(len(self.outbuf), self.send_window, MAX_FRAME)
            chunk = bytes(self.outbuf[:size])
            del self.outbuf[:size]
            self.send_window -= size
            flags = self._take_flags()
            if self.fin_pending and not self.outbuf:
                flags |= FIN
                self.fin_sent = True
            session._send(header(DATA, flags, self.id, size) + chunk)
        if self.fin_pending and not self.fin_sent and not self.outbuf and not self.closed:
            self.fin_sent = True
            session._send(header(WINDOW_UPDATE, FIN | self._take_flags(), self.id, 0))
        if self.flags_to_send and not self.closed:
            session._send(header(WINDOW_UPDATE, self._take_flags(), self.id, 0))
        if self.producer is not None:
            if not self.producer_paused and len(self.outbuf) > HIGH_WATER:
                self.producer_paused = True
                self.producer.pause()
            elif self.producer_paused and len(self.outbuf) <= LOW_WATER:
                self.producer_paused = False
                self.producer.resume()
        self._maybe_done()

    def _grant(self):
        if self.paused or self.closed or self.fin_received or not self.credit:
            return
        if self.credit >= self.window // 2 or self.recv_window < self.window // 2:
            credit, self.credit = self.credit, 0
            self.recv_window += credit
            self.session._send(header(WINDOW_UPDATE, self._take_flags(), self.id, credit))

    def _on_frame(self, frame_type, flags, length, payload):
        if frame_type == WINDOW_UPDATE:
            self.send_window += length
        if flags & RST:
            self._finish(reset=True)
            return
        if frame_type == DATA and length:
            if length > self.recv_window:
                raise ProtocolError(f"stream {self.id}: {length} bytes exceed the receive window")
            self.recv_window -= length
            self.credit += length
            if self.handler is not None and not self.fin_received:
                self.handler.data_received(payload)
            if self.closed:
                return
            self._grant()
        if flags & FIN and not self.fin_received:
            self.fin_received = True
            if self.handler is not None:
                self.handler.read_closed()
        if not self.closed:
            self._flush()

    def _maybe_done(self):
        if self.fin_sent and self.fin_received and not self.closed:
            self._finish(reset=False)

    def _finish(self, reset):
        if self.closed:
            return
        self.closed = True
        self.outbuf.clear()
        self.session._forget(self)
        if self.producer is not None and self.producer_paused:
            self.producer_paused = False
            self.producer.resume()
        if self.handler is not None:
            self.handler.stream_closed(reset)


class Session:
    """One Yamux session.

    ``write(bytes)`` sends on the connection; ``on_stream(stream)`` must
    ``attach`` a handler to (or ``reset``) each inbound stream;
    ``on_error(reason)`` is called on a protocol violation, after a GoAway.
    """

    def __init__(self, write, client, on_stream, on_error, max_streams=256):
        self.write = write
        self.on_stream = on_stream
        self.on_error = on_error
        self.max_streams = max_streams
        self.streams = {}
        self.next_id = 1 if client else 2
        self.client = client
        self.buf = bytearray()
        self.max_window = INITIAL_WINDOW    # the largest receive window granted on any stream
        self.write_paused = False
        self.go_away_received = self.closed = False

    def _send(self, data):
        if not self.closed:
            self.write(data)

    def feed(self, data):
        self.buf += data
        try:
            while len(self.buf) >= HEADER.size and not self.closed:
                version, frame_type, flags, stream_id, length = HEADER.unpack_from(self.buf)
                if version != 0 or frame_type > GO_AWAY:
                    raise ProtocolError(f"bad frame header version={version} type={frame_type}")
                payload = b""
                if frame_type == DATA:
                    stream = self.streams.get(stream_id)
                    window = self.max_window if stream is None else stream.recv_window
                    if length > window:     # refused before its payload is buffered
                        raise ProtocolError(f"stream {stream_id}: a data frame of {length} bytes "
                                            "exceeds the receive window")
                    if len(self.buf) < HEADER.size + length:
                        return
                    payload = bytes(self.buf[HEADER.size:HEADER.size + length])
                    del self.buf[:HEADER.size + length]
                else:
                    del self.buf[:HEADER.size]
                self._on_frame(frame_type, flags, stream_id, length, payload)
        except ProtocolError as e:
            self.go_away(GO_AWAY_PROTOCOL_ERROR)
            self.on_error(str(e))

    def _on_frame(self, frame_type, flags, stream_id, length, payload):
        if frame_type == PING:
            if flags & SYN:
                self._send(header(PING, ACK, 0, length))
            return
        if frame_type == GO_AWAY:
            self.go_away_received = True
            return
        if stream_id == 0:
            raise ProtocolError("data or window update on stream 0")
        stream = self.streams.get(stream_id)
        if flags & SYN:
            if stream is not None or stream_id % 2 == self.next_id % 2:
                raise ProtocolError(f"bad SYN for stream {stream_id}")
            stream = Stream(self, stream_id)
            if len(self.streams) >= self.max_streams or self.go_away_received:
                self._send(header(WINDOW_UPDATE, RST, stream_id, 0))
                return
            self.streams[stream_id] = stream
            stream.flags_to_send = ACK
            self.on_stream(stream)
            if stream.closed:
                return
            stream._flush()         # sends the ACK unless the handler already wrote
        if stream is None:
            return                  # a stream we already forgot; late frames are dropped
        stream._on_frame(frame_type, flags, length, payload)

    def open_stream(self, handler):
        """Open a stream (SYN) with ``handler`` attached; None when the session is going away."""
        if self.closed or self.go_away_received:
            return None
        stream = Stream(self, self.next_id)
        self.next_id += 2
        stream.flags_to_send = SYN
        self.streams[stream.id] = stream
        stream.attach(handler)
        if not stream.closed:
            stream._flush()
        return stream

    def _forget(self, stream):
        self.streams.pop(stream.id, None)

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        for stream in list(self.streams.values()):
            if self.write_paused:
                break
            stream._flush()

    def go_away(self, code=GO_AWAY_NORMAL):
        self._send(header(GO_AWAY, 0, 0, code))

    def connection_lost(self):
        self.closed = True
        for stream in list(self.streams.values()):
            stream._finish(reset=True)

"""Framing of the two TCP dialects.

``LineSplitter`` cuts JSON lines; ``LegacySplitter`` cuts seed-000 messages
(``target||{json}``), which arrive with or without a newline: a newline ends
a message, and without one a message ends where its JSON object ends, so
coalesced and split segments give exactly the messages that were sent.
Both yield ``(frame_bytes, error_code_or_None)`` and never hold more than
``max_line`` bytes.
"""
import json

_decoder = json.JSONDecoder()
SEPARATOR = b"||"
WHITESPACE = b" \t\r\n"


class FrameTooLong(Exception):
    """A frame grew past the limit; the connection cannot be resynchronised."""


class LineSplitter:
    __slots__ = ("max_line", "_buffer")     # one per connection

    def __init__(self, max_line):
        self.max_line = max_line
        self._buffer = b""

    def feed(self, data):
        """The complete lines in ``data`` (without their newlines)."""
        buffer = self._buffer + data if self._buffer else data
        if b"\n" not in buffer:
            self._check(buffer)
            self._buffer = buffer
            return []
        *lines, self._buffer = buffer.split(b"\n")
        self._check(self._buffer)
        for line in lines:
            if len(line) >= self.max_line:
                raise FrameTooLong()
        return lines

    @property
    def pending(self):
        """True while part of a line is buffered."""
        return bool(self._buffer)

    def _check(self, partial):
        if len(partial) >= self.max_line:
            raise FrameTooLong()


class LegacySplitter:
    """Seed-000 framing: ``target||{json}`` with an optional trailing newline."""

    def __init__(self, max_line):
        self.max_line = max_line
        self._buffer = b""

    @property
    def pending(self):
        """True while part of a frame is buffered."""
        return bool(self._buffer.strip(WHITESPACE))

    def feed(self, data):
        """Complete frames in ``data`` as ``(target, obj, error)`` tuples.

        ``obj`` is the decoded JSON value; ``error`` is a code (``bad_utf8``,
        ``bad_json``) for a frame that was cut out but could not be decoded.
        """
        self._buffer += data
        frames = []
        while True:
            frame = self._next()
            if frame is None:
                break
            frames.append(frame)
        if len(self._buffer) >= self.max_line:
            raise FrameTooLong()
        return frames

    def _next(self):
        buffer = self._buffer.lstrip(WHITESPACE)
        self._buffer = buffer
        if not buffer:
            return None
        newline = buffer.find(b"\n")
        separator = buffer.find(SEPARATOR)
        if separator < 0 or 0 <= newline < separator:
            if newline < 0:
                return None                      # wait for "||" or a newline
            return self._reject(newline, "bad_json")
        segment = buffer[separator + 2:newline if newline >= 0 else len(buffer)]
        try:
            text = segment.decode("utf-8")
        except UnicodeDecodeError as e:
            if newline < 0 and e.reason == "unexpected end of data":
                return None                      # a character split across segments
            return self._reject(newline, "bad_utf8")
        stripped = text.lstrip()
        if stripped and not stripped.startswith("{"):
            return self._reject(newline, "bad_json")
        try:
            obj, end = _decoder.raw_decode(stripped)
        except json.JSONDecodeError:
            if newline < 0:
                return None                      # the JSON object is not complete yet
            return self._reject(newline, "bad_json")
        except RecursionError:                   # nested too deeply: more bytes cannot help
            return self._reject(newline, "bad_json")
        consumed = len(text[:len(text) - len(stripped) + end].encode("utf-8"))
        self._buffer = buffer[separator + 2 + consumed:]
        try:
            return (buffer[:separator].decode("utf-8"), obj, None)
        except UnicodeDecodeError:
            return (None, None, "bad_utf8")

    def _reject(self, newline, code):
        """Drop the bad frame: up to its newline, or everything buffered."""
        self._buffer = self._buffer[newline + 1:] if newline >= 0 else b""
        return (None, None, code)

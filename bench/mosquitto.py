"""mosquitto (the Debian package) as the reference server, and a minimal
MQTT 3.1.1 client: CONNECT, SUBSCRIBE and QoS 0 PUBLISH over raw sockets.

Every PUBLISH on the one topic has the same size, so receivers count bytes
and divide by the frame size instead of parsing.
"""
import shutil
import struct

from bench.server import HOST, Server, ServerError

TOPIC = b"bench"

# The Debian package's defaults apart from the listener, anonymous access and
# no persistence file; with Nagle left on (the default) mosquitto delivers
# more messages a second, with set_tcp_nodelay its latency is at its best.
CONFIG = """\
listener {port} {host}
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
"""


def available():
    return shutil.which("mosquitto") is not None


def _remaining_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(data):
    return struct.pack("!H", len(data)) + data


def packet(kind, body):
    return bytes([kind]) + _remaining_length(len(body)) + body


def connect(client_id):
    """CONNECT: protocol MQTT level 4, clean session, no keep-alive."""
    return packet(0x10, _string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)
                  + _string(client_id))


def subscribe(topic, packet_id=1):
    return packet(0x82, struct.pack("!H", packet_id) + _string(topic) + b"\x00")


def publish(topic, payload):
    """A QoS 0 PUBLISH (no packet id)."""
    return packet(0x30, _string(topic) + payload)


CONNACK = b"\x20\x02\x00\x00"
SUBACK = b"\x90\x03\x00\x01\x00"


class Mosquitto(Server):
    """mosquitto as the Debian package configures it (Nagle on)."""

    name = "mosquitto"
    COUNTS_LINES = False
    EXTRA_CONFIG = ""

    def command(self):
        config = CONFIG.format(port=self.port, host=HOST) + self.EXTRA_CONFIG
        return ["mosquitto", "-c", self.write_config("mosquitto.conf", config)]

    def greeting(self, name, subscribe_):
        return connect(name.encode()) + (subscribe(TOPIC) if subscribe_ else b"")

    def greeted(self, data, subscribe_):
        expected = CONNACK + SUBACK if subscribe_ else CONNACK
        if not expected.startswith(data[:len(expected)]):
            raise ServerError(f"mosquitto refused: {data!r}")
        return data == expected

    def frame(self, body):
        return publish(TOPIC, body)

    def frame_size(self, body_len):
        return len(publish(TOPIC, b"x" * body_len))

    def bodies(self, buffer, body_len):
        size = self.frame_size(body_len)
        end = len(buffer) - len(buffer) % size
        return [buffer[i + size - body_len:i + size] for i in range(0, end, size)], buffer[end:]


class MosquittoNoDelay(Mosquitto):
    """mosquitto with ``set_tcp_nodelay true`` (Nagle off, as relayd)."""

    name = "mosquitto-nodelay"
    EXTRA_CONFIG = "set_tcp_nodelay true\n"

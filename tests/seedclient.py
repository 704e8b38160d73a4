"""A client that speaks seed 000's wire format exactly, as its archive client did:
the peer id as the first send, then ``target||{"from": id, "text": ...}``
with no newline, and raw chunks read back."""
import json
import socket
import time


class SeedClient:
    def __init__(self, port, peer_id, host="127.0.0.1"):
        self.peer_id = peer_id
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall(peer_id.encode())
        self.buffer = b""

    def send(self, target, text):
        self.sock.sendall(f"{target}||{json.dumps({'from': self.peer_id, 'text': text})}".encode())

    def read_objects(self, count, timeout=10.0):
        """Read until ``count`` JSON objects arrived (relayd ends each with a newline)."""
        deadline = time.monotonic() + timeout
        while self.buffer.count(b"\n") < count and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                break
            if not chunk:
                break
            self.buffer += chunk
        lines = self.buffer.split(b"\n")
        done, self.buffer = lines[:count], b"\n".join(lines[count:])
        return [json.loads(line) for line in done if line.strip()]

    def close(self):
        self.sock.close()


class LineClient:
    """A blocking JSON-lines client for end-to-end tests."""

    def __init__(self, port, peer_id=None, host="127.0.0.1", sock=None):
        self.sock = sock or socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        if peer_id is not None:
            self.request(type="hello", id=peer_id)
            self.welcome = self.read()

    def request(self, **obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def read(self):
        line = self.file.readline()
        if not line:
            raise EOFError("connection closed")
        return json.loads(line)

    def close(self):
        self.file.close()
        self.sock.close()

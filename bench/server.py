"""A server under test: a subprocess on a free loopback port, and its clients.

Subclasses (``bench.relay.Relayd``, ``bench.mosquitto.Mosquitto``) say how
to start the server and speak just enough of its protocol for the load
generators: a greeting per client, a publish frame, and how to count and
decode what receivers get.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from bench.ports import free_port

HOST = "127.0.0.1"


class ServerError(Exception):
    """The server did not start or answered something unexpected."""


class Server:
    """Runs ``command()`` in a scratch directory; a context manager.

    Client side, subclasses define ``greeting(name, subscribe)`` (bytes a
    client sends first), ``greeted(data, subscribe)`` (True once ``data``
    holds the whole answer; raises ServerError on a refusal),
    ``frame(body)`` (one publish of ``body`` bytes), ``COUNTS_LINES``
    (receivers count newlines, else bytes of ``frame_size(body_len)``) and
    ``bodies(buffer, body_len)`` -> ``(bodies, rest)``.
    """

    name = "server"
    COUNTS_LINES = True
    ACKS = False            # the sender gets one line per message it published

    def __init__(self):
        self.workdir = tempfile.mkdtemp(prefix=f"bench-{self.name}-")
        self.port = free_port()
        self.process = None
        self.log_path = os.path.join(self.workdir, "server.log")

    @property
    def pid(self):
        return self.process.pid

    def command(self):
        raise NotImplementedError

    def write_config(self, name, text):
        """Write ``text`` to ``name`` in the scratch directory; its path."""
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def env(self):
        return None

    def start(self, timeout=30.0):
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), cwd=self.cwd(), env=self.env(),
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} did not listen on {self.port}:\n{self.log()}")

    def cwd(self):
        return self.workdir

    def stop(self):
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- client side ----------------------------------------------------------

    def connect(self, name, subscribe, timeout=10.0):
        """A blocking socket that has finished its greeting."""
        sock = self.open(name, subscribe)
        self.finish(sock, subscribe, timeout)
        return sock

    def open(self, name, subscribe):
        """Connect and send the greeting without waiting for the answer."""
        sock = socket.create_connection(self.address(subscribe))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(self.greeting(name, subscribe))
        return sock

    def address(self, subscribe):
        """Where a client connects: a receiver (``subscribe``) or the sender."""
        return HOST, self.port

    def finish(self, sock, subscribe, timeout=10.0):
        """Read the answer to the greeting (nothing else is sent before it ends)."""
        sock.settimeout(timeout)
        data = b""
        while not self.greeted(data, subscribe):
            chunk = sock.recv(4096)
            if not chunk:
                raise ServerError(f"{self.name} closed the connection during the greeting: {data!r}")
            data += chunk
        return data

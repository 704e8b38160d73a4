"""Malformed and unexpected HTTP methods on the [http] port: a plain error
reply, no traceback, no log line per request."""
import socket

from twisted.internet import threads
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from tests.test_tcp_loopback import start_daemon

REQUESTS = {
    b"\xff\xfe / HTTP/1.1\r\nHost: x\r\n\r\n": b"400",
    b"G\x85T /health HTTP/1.1\r\nHost: x\r\n\r\n": b"400",
    b"G(T /health HTTP/1.1\r\nHost: x\r\n\r\n": b"400",
    b"\xc3\xa9 /metrics HTTP/1.1\r\nHost: x\r\n\r\n": b"400",
    b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n": b"405",
    b"DELETE /stats HTTP/1.1\r\nHost: x\r\n\r\n": b"405",
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n": b"200",
}


def exchange(port, request):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.recv(4096)


class MethodTests(unittest.TestCase):
    timeout = 30

    def test_malformed_methods_get_an_error_without_a_traceback(self):
        daemon, _ = start_daemon(self, extra="[http]\nlisten = tcp:0:interface=127.0.0.1\n")
        http = daemon.getServiceNamed("http").services[0]
        port = http._waitingForPort.result.getHost().port
        capture = capturedLogs()
        events = capture.__enter__()
        self.addCleanup(capture.__exit__, None, None, None)

        def run():
            return {request: exchange(port, request) for request in REQUESTS}

        def check(replies):
            for request, reply in replies.items():
                self.assertEqual(reply.split(b" ")[1], REQUESTS[request], request)
            self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])
        return threads.deferToThread(run).addCallback(check)

"""A request over UDP, sent again until its answer arrives (the load
generators' TURN and seed-001 clients)."""
import socket
import time


def exchange(sock, server, packet, answer, timeout, wait, backoff=1):
    """Send ``packet`` from ``sock`` to ``server`` until a datagram comes
    back for which ``answer(data)`` is not None, and return that value;
    None after ``timeout`` s.  The first resend is ``wait`` s after the
    send, and each wait is ``backoff`` times the one before."""
    deadline = time.monotonic() + timeout
    while True:
        sock.sendto(packet, server)
        resend = min(deadline, time.monotonic() + wait)
        while (left := resend - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recvfrom(65536)[0]
            except socket.timeout:
                break
            found = answer(data)
            if found is not None:
                return found
        if time.monotonic() >= deadline:
            return None
        wait *= backoff

"""The admin console's SSH server under attack and audit: offered algorithms
against an ssh-audit style policy, login timeout, connection caps, login and
command logs."""
import os
import socket
import struct
import subprocess
import time

import bcrypt
from twisted.conch.ssh.common import NS
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import threads
from twisted.logger import LogLevel, capturedLogs
from twisted.trial import unittest

from relayd.ops.sshserver import AdminUserAuth

from tests.test_ops_support import NO_SSH, OpsRelay, admin_ssh, metric_value, password_ssh
from tests.test_tcp_loopback import start_daemon

# ssh-audit's recommendations (its "hardened OpenSSH" policy): anything else offered fails.
POLICY = {
    "kex": {b"mlkem768x25519-sha256", b"sntrup761x25519-sha512@openssh.com",
            b"curve25519-sha256", b"curve25519-sha256@libssh.org",
            b"diffie-hellman-group16-sha512", b"diffie-hellman-group18-sha512",
            b"diffie-hellman-group-exchange-sha256", b"ext-info-s",
            b"kex-strict-s-v00@openssh.com"},
    "host key": {b"ssh-ed25519", b"rsa-sha2-512", b"rsa-sha2-256"},
    "cipher": {b"chacha20-poly1305@openssh.com", b"aes256-gcm@openssh.com",
               b"aes128-gcm@openssh.com", b"aes256-ctr", b"aes192-ctr", b"aes128-ctr"},
    "mac": {b"hmac-sha2-512-etm@openssh.com", b"hmac-sha2-256-etm@openssh.com",
            b"umac-128-etm@openssh.com", b"hmac-sha2-512", b"hmac-sha2-256"},
}
# what ssh-audit reports as failures, by name fragment (a second, independent check)
WEAK = (b"cbc", b"3des", b"arcfour", b"md5", b"hmac-sha1", b"-sha1", b"group1-", b"ssh-dss",
        b"ssh-rsa", b"nistp", b"none")


def server_kexinit(port, host="127.0.0.1"):
    """The name-lists of the server's SSH_MSG_KEXINIT (RFC 4253 7.1), read raw."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-policycheck_1.0\r\n")
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(4096)
        banner, _, data = data.partition(b"\r\n")
        assert banner.startswith(b"SSH-2.0-"), banner
        while len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    length, padding = struct.unpack(">IB", data[:5])
    payload = data[5:4 + length - padding]
    assert payload[0] == 20, payload[0]            # SSH_MSG_KEXINIT
    offset, lists = 17, []
    for _ in range(10):
        (size,) = struct.unpack(">I", payload[offset:offset + 4])
        lists.append(payload[offset + 4:offset + 4 + size].split(b","))
        offset += 4 + size
    return {"kex": lists[0], "host key": lists[1], "cipher": lists[2] + lists[3],
            "mac": lists[4] + lists[5]}


def closed_by_server(sock, within):
    """True when the server closes ``sock`` within ``within`` seconds."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(4096):
                return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True
    return False


def connect(port, source="127.0.0.1"):
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


class InProcessAdmin(unittest.TestCase):
    timeout = 60
    admin = ""

    def setUp(self):
        keys_file = os.path.abspath(self.mktemp())
        open(keys_file, "w").close()
        self.daemon, _ = start_daemon(self, extra=(
            f"[admin]\nlisten = tcp:0:interface=127.0.0.1\nauthorized_keys = {keys_file}\n"
            + self.admin))
        listener = self.daemon.getServiceNamed("admin").services[0]
        self.port = listener._waitingForPort.result.getHost().port

    def metric(self, name, **labels):
        from prometheus_client import generate_latest
        return metric_value(generate_latest(self.daemon.registry).decode(), name, **labels)


class AlgorithmPolicyTests(InProcessAdmin):
    def test_only_modern_algorithms_are_offered(self):
        def check(offered):
            for kind, names in offered.items():
                self.assertEqual([n for n in names if n not in POLICY[kind]], [], kind)
                self.assertEqual([n for n in names if any(w in n for w in WEAK)
                                  and n not in POLICY[kind]], [], kind)
                self.assertTrue(names, kind)
            self.assertIn(b"curve25519-sha256", offered["kex"])
            self.assertEqual(offered["host key"], [b"ssh-ed25519"])
        return threads.deferToThread(server_kexinit, self.port).addCallback(check)


class LoginTimeoutTests(InProcessAdmin):
    admin = "login_timeout = 1s\n"

    def test_silent_and_stalled_connections_are_dropped(self):
        def run():
            silent = connect(self.port)
            stalled = connect(self.port)
            stalled.sendall(b"SSH-2.0-stalled\r\n")       # then never a KEXINIT
            try:
                return closed_by_server(silent, 8), closed_by_server(stalled, 8)
            finally:
                silent.close()
                stalled.close()

        def check(result):
            self.assertEqual(result, (True, True))
            self.assertEqual(self.metric("relayd_admin_login_timeouts_total"), 2)
        return threads.deferToThread(run).addCallback(check)


class CapTests(InProcessAdmin):
    admin = "max_connections = 3\nmax_connections_per_ip = 2\n"

    def test_per_ip_and_global_caps(self):
        def run():
            held = [connect(self.port), connect(self.port)]
            third = connect(self.port)                        # a third from 127.0.0.1
            per_ip = closed_by_server(third, 5)
            held.append(connect(self.port, "127.0.0.2"))      # another address is let in
            other_ok = not closed_by_server(held[-1], 0.5)
            fourth = connect(self.port, "127.0.0.3")          # but the total is capped
            total = closed_by_server(fourth, 5)
            for sock in held + [third, fourth]:
                sock.close()
            return per_ip, other_ok, total

        def check(result):
            self.assertEqual(result, (True, True, True))
            self.assertEqual(self.metric("relayd_admin_refused_total",
                                         cap="max_connections_per_ip"), 1)
            self.assertEqual(self.metric("relayd_admin_refused_total", cap="max_connections"), 1)
        return threads.deferToThread(run).addCallback(check)


class AuditLogTests(unittest.TestCase):
    """OpenSSH logs in with the modern set; logins, failures and commands are logged."""
    timeout = 120
    skip = NO_SSH

    def test_logins_failures_and_commands_are_logged(self):
        ops = OpsRelay(self, passwords=b"ops:" + bcrypt.hashpw(b"right", bcrypt.gensalt(4)))
        self.assertEqual(ops.admin("stats()")[0], 0)
        self.assertEqual(ops.admin("stats()", key=ops.wrong_key)[0], 255)
        password_ssh(ops.ports["admin"], ops.known, "mallory", "guess", "stats()")
        admin_ssh(ops.ports["admin"], ops.key, ops.known, None, tty=True,
                  stdin=b"x = 6 * 7\rbans()\r\x04")

        def fingerprint(path):       # as OpenSSH shows it
            done = subprocess.run(["ssh-keygen", "-l", "-f", path + ".pub"], check=True,
                                  capture_output=True, text=True)
            return done.stdout.split()[1]
        deadline = time.monotonic() + 10
        while "admin login failed: mallory" not in ops.relay.log():
            self.assertLess(time.monotonic(), deadline, ops.relay.log())
            time.sleep(0.1)
        log = ops.relay.log()
        self.assertIn(f"[relayd.ops.admin#info] admin login: admin from 127.0.0.1 with key "
                      f"{fingerprint(ops.key)}", log)
        self.assertIn(f"[relayd.ops.admin#warn] admin login failed: admin from 127.0.0.1 with "
                      f"key {fingerprint(ops.wrong_key)}", log)
        self.assertIn("[relayd.ops.admin#warn] admin login failed: mallory from 127.0.0.1 "
                      "with password", log)
        self.assertIn("admin command by admin: stats()", log)
        self.assertIn("admin command by admin: x = 6 * 7", log)
        self.assertIn("admin command by admin: bans()", log)
        self.assertNotIn("Got remote error", log)
        self.assertNotIn("#error]", log)


class UnreadableKeyTests(unittest.TestCase):
    def test_a_garbage_key_blob_is_refused_without_an_error_line(self):
        with capturedLogs() as events:
            d = AdminUserAuth().auth_publickey(b"\x00" + NS(b"ssh-ed25519") + NS(b"\x00garbage"))
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual([e for e in events if e["log_level"] >= LogLevel.warn], [])

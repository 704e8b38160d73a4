"""Operations end to end: a twistd relayd with [admin] and [http], driven with
OpenSSH (exec and interactive), HTTP and real relay clients."""
import os
import signal
import time

import bcrypt

from twisted.trial import unittest

from relayd import config
from tests.daemon import Relayd, wait_for_port
from tests.seedclient import LineClient
from tests.test_ops_support import (NO_SSH, OpsRelay, admin_ssh, http_get, http_json,
                                    metric_value, password_ssh)


class OpsDaemonTests(unittest.TestCase):
    timeout = 120
    skip = NO_SSH

    def setUp(self):
        self.ops = OpsRelay(self)
        self.ports, self.relay, self.admin = self.ops.ports, self.ops.relay, self.ops.admin

    def test_exec_commands_over_ssh(self):
        code, out, err = self.admin("stats()")
        self.assertEqual((code, err), (0, ""))
        self.assertIn("relay: ops1\n", out)
        self.assertIn("tcp:\n  listen: tcp:", out)
        code, out, err = self.admin("1/0")
        self.assertEqual((code, out), (1, ""))
        self.assertIn("ZeroDivisionError", err)
        code, out, _ = self.admin("peers()")
        self.assertEqual((code, out), (0, "federation: service not enabled\n"))

    def test_wrong_key_is_refused(self):
        code, out, err = self.admin("stats()", key=self.ops.wrong_key)
        self.assertEqual((code, out), (255, ""))
        self.assertIn("Permission denied", err)

    def test_authorized_keys_are_reread_on_sighup(self):
        with open(self.ops.wrong_key + ".pub") as f, \
                open(os.path.join(self.ops.workdir, "admin_keys"), "a") as keys:
            keys.write(f.read())
        self.relay.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while self.admin("stats()", key=self.ops.wrong_key)[0] != 0:
            self.assertLess(time.monotonic(), deadline, "the new key was never accepted")
            time.sleep(0.2)
        self.assertIn("admin console: 2 authorized keys", self.relay.log())

    def test_interactive_console(self):
        done = admin_ssh(self.ports["admin"], self.ops.key, self.ops.known, None, tty=True,
                         stdin=b"x = 6 * 7\rprint(x)\rclients()\r\x04")
        screen = done.stdout.decode("utf-8", "replace")
        self.assertIn("42", screen)
        self.assertIn("no clients connected", screen)

    def test_ban_refuses_new_connections_until_unban(self):
        code, out, _ = self.admin("ban('127.0.0.1', 5)")
        self.assertEqual((code, out), (0, "banned 127.0.0.1 for 5 minutes\n"))
        self.assertRegex(self.admin("bans()")[1], r"\n127\.0\.0\.1 +(29\d|300)\.\d\n")
        client = LineClient(self.ports["tcp"])
        self.addCleanup(client.close)
        client.request(type="hello", id="mallory")
        self.assertEqual(client.read()["error"], "banned")
        self.assertEqual(self.admin("unban('127.0.0.1')")[1], "unbanned 127.0.0.1\n")
        alice = LineClient(self.ports["tcp"], "alice")
        self.addCleanup(alice.close)
        self.assertEqual(alice.welcome["type"], "welcome")
        code, out, _ = self.admin("clients()")
        self.assertIn("alice", out)
        self.assertEqual(self.admin("kick('alice')")[1], "kicked alice\n")

    def test_health_stats_and_metrics_move_with_messages(self):
        status, health = http_json(self.ports["http"], "/health")
        self.assertEqual((status, health["status"]), (200, "ok"))
        self.assertEqual(health["services"], ["admin", "e2ee", "http", "journal", "tcp"])
        status, body, headers = http_get(self.ports["http"], "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version="))
        before = metric_value(body.decode(), "relayd_messages_received_total", source="client")
        self.assertIsNotNone(metric_value(body.decode(), "process_resident_memory_bytes"))
        alice = LineClient(self.ports["tcp"], "alice")
        bob = LineClient(self.ports["tcp"], "bob")
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        for n in range(3):
            alice.request(type="send", to="bob", body=f"secret {n}")
            self.assertEqual(alice.read()["type"], "ack")
            self.assertEqual(bob.read()["body"], f"secret {n}")
        text = http_get(self.ports["http"], "/metrics")[1].decode()
        self.assertEqual(metric_value(text, "relayd_messages_received_total", source="client"),
                         before + 3)
        self.assertGreaterEqual(metric_value(text, "relayd_uptime_seconds"), 0)
        status, stats = http_json(self.ports["http"], "/stats")
        self.assertEqual((status, stats["relay"], stats["tcp"]["sessions"]), (200, "ops1", 2))
        self.assertEqual(http_get(self.ports["http"], "/nothing")[0], 404)
        time.sleep(1.2)
        log = self.relay.log()
        self.assertIn("stats relay=ops1", log)
        self.assertNotIn("secret 1", log, "payloads are never logged")

    def test_host_key_survives_a_restart(self):
        with open(self.ops.host_key, "rb") as f:
            first = f.read()
        self.assertEqual(os.stat(self.ops.host_key).st_mode & 0o777, 0o600)
        # its ports listen before twistd runs the reactor and handles SIGTERM: wait for an answer
        self.assertEqual(http_json(self.ports["http"], "/health")[0], 200)
        self.assertEqual(self.relay.stop(), 0)
        for port in self.ports.values():
            self.assertFalse(wait_for_port(port, timeout=0.2))
        self.ops.start()
        with open(self.ops.host_key, "rb") as f:
            self.assertEqual(f.read(), first)
        self.assertEqual(self.ops.admin("reload()")[0], 0)


class PasswordLoginTests(unittest.TestCase):
    timeout = 120
    skip = NO_SSH

    def test_only_configured_passwords_log_in(self):
        ops = OpsRelay(self, passwords=b"ops:" + bcrypt.hashpw(b"s3cret pass", bcrypt.gensalt(4)))
        done = password_ssh(ops.ports["admin"], ops.known, "ops", "s3cret pass", "stats()")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"relay: ops1", done.stdout)
        done = password_ssh(ops.ports["admin"], ops.known, "ops", "guess", "stats()")
        self.assertEqual(done.returncode, 255)

    def test_no_password_login_without_a_password_file(self):
        ops = OpsRelay(self)
        done = password_ssh(ops.ports["admin"], ops.known, "admin", "admin", "stats()")
        self.assertEqual(done.returncode, 255)
        self.assertIn(b"Permission denied (publickey)", done.stderr)


class AdminConfigTests(unittest.TestCase):
    def test_missing_authorized_keys_is_a_config_error(self):
        relay = Relayd(self, "[relay]\ndata_dir = {data_dir}\n[admin]\n"
                             "authorized_keys = {workdir}/nope\n")
        code, output = relay.run_to_exit()
        self.assertNotEqual(code, 0)
        self.assertIn("[admin] authorized_keys: file", output)
        self.assertIn("does not exist", output)

    def test_admin_listener_defaults_to_loopback(self):
        keys = self.mktemp()
        open(keys, "w").close()
        settings = config.parse(f"[admin]\nauthorized_keys = {keys}\n[http]\n")
        self.assertEqual(settings.admin.listen, "tcp:2222:interface=127.0.0.1")
        self.assertEqual(settings.http.listen, "tcp:9001:interface=127.0.0.1")

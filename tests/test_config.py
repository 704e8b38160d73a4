"""The ini loader: typed values, defaults, and errors that name [section] key."""
import os
import subprocess
import sys

from twisted.trial import unittest

from relayd import config
from relayd.tap import Options
from twisted.python import usage

from tests.daemon import REPO
from tests.doccommands import committed_file


class ParseTests(unittest.TestCase):
    def test_defaults_fill_missing_keys(self):
        s = config.parse("[relay]\nid = r9\n[tcp]\n")
        self.assertEqual(s.relay.id, "r9")
        self.assertEqual(s.tcp.max_line, 65536)
        self.assertEqual(s.tcp.idle_timeout, 300.0)
        self.assertEqual(s.ratelimit.messages, 10)
        self.assertEqual(s.ratelimit.per_seconds, 10.0)
        self.assertTrue(s.enabled("tcp"))
        self.assertFalse(s.enabled("udp"))
        self.assertIsNone(s.get("udp"))

    def test_units(self):
        s = config.parse("[journal]\nsegment_size = 2MiB\nretention = 2d\nmax_size = 1GB\n")
        self.assertEqual(s.journal.segment_size, 2 * 1024 * 1024)
        self.assertEqual(s.journal.retention, 2 * 86400)
        self.assertEqual(s.journal.max_size, 10 ** 9)

    def assertConfigError(self, text, *fragments):
        with self.assertRaises(config.ConfigError) as cm:
            config.parse(text, source="relay.ini")
        for fragment in fragments:
            self.assertIn(fragment, str(cm.exception))

    def test_unknown_section(self):
        self.assertConfigError("[tpc]\n", "relay.ini", "[tpc]", "unknown section")

    def test_unknown_key(self):
        self.assertConfigError("[tcp]\nlisten_on = x\n", "[tcp] listen_on", "unknown key")

    def test_bad_integer(self):
        self.assertConfigError("[tcp]\nmax_connections = many\n", "[tcp] max_connections",
                               "not a whole number")

    def test_out_of_range(self):
        self.assertConfigError("[tcp]\nmax_connections = 0\n", "[tcp] max_connections", "minimum")

    def test_bad_endpoint(self):
        self.assertConfigError("[tcp]\nlisten = bogus:1234\n", "[tcp] listen", "endpoint")

    def test_bad_choice(self):
        self.assertConfigError("[journal]\nfsync = sometimes\n", "[journal] fsync", "always")

    def test_bad_duration(self):
        self.assertConfigError("[tcp]\nidle_timeout = soon\n", "[tcp] idle_timeout", "duration")

    def test_syntax_error(self):
        self.assertConfigError("no section header\n", "relay.ini")

    def test_missing_file(self):
        with self.assertRaises(config.ConfigError) as cm:
            config.load("/nonexistent/relay.ini")
        self.assertIn("/nonexistent/relay.ini", str(cm.exception))

    def test_shipped_config_is_valid(self):
        """etc/relay.ini as shipped (committed), not as the reader edited it."""
        text = committed_file("etc/relay.ini")
        if text is None:
            raise unittest.SkipTest("not a git checkout: the shipped etc/relay.ini is unknown")
        s = config.parse(text, "etc/relay.ini")
        self.assertTrue(s.enabled("tcp"))
        self.assertIn("interface=127.0.0.1", s.tcp.listen)
        for listen in (s.libp2p.listen, s.libp2p.ws_listen):           # TCP and WebSocket
            self.assertIn("interface=127.0.0.1", listen)
        self.assertEqual(s.libp2p.quic_listen, ("127.0.0.1", 4001))         # QUIC


class OptionsTests(unittest.TestCase):
    def usage_error(self, ini):
        """The UsageError twistd's option parsing gives for a config file of ``ini``."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ini)
        with self.assertRaises(usage.UsageError) as cm:
            Options().parseOptions(["--config", path])
        return str(cm.exception)

    def test_config_error_is_a_usage_error(self):
        self.assertIn("[tcp] max_line", self.usage_error("[tcp]\nmax_line = huge\n"))

    def test_wiring_error_is_a_usage_error(self):
        self.assertIn("[tor] target",
                      self.usage_error("[tor]\ncontrol_port = tcp:127.0.0.1:9051\n"))

    def test_secure_websocket_without_tls_is_a_usage_error(self):
        self.assertIn("[libp2p] wss_listen needs the [tls] section",
                      self.usage_error("[libp2p]\nwss_listen = tcp:4443\n"))

    def test_settings_parsed(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[relay]\nid = relay7\n")
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options["settings"].relay.id, "relay7")


class ValidateTests(unittest.TestCase):
    """Rules across sections, checked by ``config.validate`` without building anything."""

    def load(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return config.load(path)

    def assertRefused(self, text, *fragments):
        with self.assertRaises(config.ConfigError) as cm:
            self.load(text)
        for fragment in fragments:
            self.assertIn(fragment, str(cm.exception))

    def test_tor_target_needs_a_tcp_listener(self):
        self.assertRefused("[tor]\ncontrol_port = tcp:127.0.0.1:9051\n",
                           "[tor] target", "[tcp] is not enabled")
        self.assertRefused("[tcp]\nlisten = tcp:0:interface=127.0.0.1\n"
                           "[tor]\ncontrol_port = tcp:127.0.0.1:9051\n", "[tor] target", "port 0")
        self.assertEqual(self.load("[tcp]\n[tor]\ncontrol_port = tcp:127.0.0.1:9051\n")
                         .tor.control_port, "tcp:127.0.0.1:9051")

    def test_tls_listeners_name_stream_listeners(self):
        pem = self.mktemp()        # [tls] cert and key only need to exist for this check
        with open(pem, "w") as f:
            f.write("x")
        self.assertRefused(f"[tls]\ncert = {pem}\nkey = {pem}\nlisteners = tcp udp\n",
                           "[tls] listeners", "'udp'")
        self.assertRefused(f"[tls]\ncert = {pem}\nkey = {pem}\nlisteners = nonsense\n",
                           "[tls] listeners", "'nonsense'")

    def test_a_reload_applies_the_same_rules(self):
        from relayd.daemon import Daemon
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[tor]\ncontrol_port = tcp:127.0.0.1:9051\n")
        daemon = Daemon(config.parse(""), None, config_path=path)
        self.assertIn("[tor] target", daemon.reload())

    def test_checking_the_config_imports_no_test_double(self):
        """twistd validates before the reactor runs, with no memory reactor."""
        code = ("import sys; from relayd import tap; o = tap.Options(); "
                "o.parseOptions(['--config', sys.argv[1]]); "
                "print('twisted.internet.testing' in sys.modules)")
        shipped = committed_file("etc/relay.ini")
        if shipped is None:
            raise unittest.SkipTest("not a git checkout: the shipped etc/relay.ini is unknown")
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(shipped)
        done = subprocess.run([sys.executable, "-c", code, os.path.abspath(path)],
                              capture_output=True, text=True, cwd=REPO, check=True)
        self.assertEqual(done.stdout.strip(), "False")

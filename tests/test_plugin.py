"""twistd finds the relayd plugin, and makeService composes the enabled services."""
import os

from twisted.application.internet import TimerService
from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial import unittest

from relayd import tap
from relayd.daemon import MAILBOX_EXPIRY


class PluginTests(unittest.TestCase):
    def test_plugin_discoverable(self):
        self.assertIn("relayd", {p.tapname for p in getPlugins(IServiceMaker)})

    def options(self, text):
        """Parsed Options for a config file holding ``text``; returns (options, path)."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        options = tap.Options()
        options.parseOptions(["--config", path])
        return options, path

    def test_make_service_wires_without_listening(self):
        data_dir = os.path.abspath(self.mktemp())
        options, _ = self.options(
            f"[relay]\ndata_dir = {data_dir}\n[tcp]\nlisten = tcp:5555:interface=127.0.0.1\n")
        reactor = MemoryReactorClock()
        daemon = tap.makeService(options, reactor)
        self.assertEqual(reactor.tcpServers, [])
        self.assertFalse(os.path.exists(data_dir), "makeService touches no file")
        self.assertIsNotNone(daemon.getServiceNamed("tcp"))
        self.assertIsNotNone(daemon.getServiceNamed("journal"))
        daemon.privilegedStartService()
        self.assertEqual(reactor.tcpServers[0][0], 5555)
        self.assertTrue(os.path.exists(os.path.join(data_dir, "identity.key")))

    def test_reload_applies_new_limits(self):
        data_dir = os.path.abspath(self.mktemp())
        options, path = self.options(f"[relay]\ndata_dir = {data_dir}\n[tcp]\nlisten = tcp:0\n")
        daemon = tap.makeService(options, MemoryReactorClock())
        with open(path, "a") as f:
            f.write("max_connections = 7\n[ratelimit]\nmessages = 99\n")
        self.assertIn("reloaded", daemon.reload())
        self.assertEqual(daemon.getServiceNamed("tcp").max_connections, 7)
        self.assertEqual(daemon.guard.capacity, 99)
        with open(path, "a") as f:
            f.write("[bogus]\n")
        self.assertIn("[bogus]", daemon.reload())
        self.assertEqual(daemon.guard.capacity, 99)

    def test_mailboxes_expire_while_running(self):
        options, _ = self.options(
            f"[relay]\ndata_dir = {os.path.abspath(self.mktemp())}\n[mailbox]\nttl = 1d\n")
        reactor = MemoryReactorClock()
        daemon = tap.makeService(options, reactor)
        [timer] = [s for s in daemon if isinstance(s, TimerService)]
        timer.startService()
        self.addCleanup(timer.stopService)
        daemon.router.mailboxes.put("gone", {"msg_id": "m1", "timestamp": reactor.seconds()}, b"")
        reactor.advance(86400 - MAILBOX_EXPIRY / 2)
        self.assertEqual(daemon.router.mailboxes.total(), 1)
        reactor.advance(MAILBOX_EXPIRY)
        self.assertEqual(daemon.router.mailboxes.total(), 0, "dropped past the ttl")


class PidfileTests(unittest.TestCase):
    """twistd's pid file goes to the data directory unless --pidfile names one."""

    def twistd_options(self, *args):
        from twisted.scripts.twistd import ServerOptions
        data_dir = os.path.abspath(self.mktemp())
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f"[relay]\ndata_dir = {data_dir}\n")
        options = ServerOptions()
        options.parseOptions([*args, "relayd", "--config", path])
        return options, data_dir

    def test_default_pidfile_is_in_the_data_directory(self):
        options, data_dir = self.twistd_options("-n")
        self.assertEqual(options["pidfile"], os.path.join(data_dir, "twistd.pid"))
        self.assertTrue(os.path.isdir(data_dir))

    def test_an_explicit_pidfile_is_kept(self):
        self.assertEqual(self.twistd_options("-n", "--pidfile", "/run/r.pid")[0]["pidfile"],
                         "/run/r.pid")
        self.assertEqual(self.twistd_options("-n", "--pidfile=")[0]["pidfile"], "")

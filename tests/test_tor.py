"""The [tor] onion service: a scripted control port (txtorcon's
FakeControlProtocol), and one run against a real tor with DisableNetwork."""
import os
import shutil
import subprocess
import time

import txtorcon
from twisted.internet import defer, reactor, task
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest
from txtorcon.testutil import FakeControlProtocol

from relayd import config
from relayd.filepool import FilePool
from relayd.identity import load_or_create
from relayd.tor import KEY_FILE, OnionService, onion_target, tor_key_blob
from tests.daemon import Relayd, free_port
from tests.test_ops_support import InlinePool, http_json

INI = """
[relay]
data_dir = {data_dir}
[tcp]
listen = tcp:55665:interface=127.0.0.1
[tor]
control_port = tcp:127.0.0.1:{control}
"""


class FakeDaemon:
    def __init__(self, settings, reactor, file_pool):
        self.settings, self.reactor, self.file_pool = settings, reactor, file_pool


class FakeTor:
    def __init__(self, answers=()):
        self.protocol = FakeControlProtocol(list(answers))
        self.quits = 0

    def quit(self):
        self.quits += 1
        return defer.succeed(None)


class ScriptedTests(unittest.TestCase):
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.connected = []

    def service(self, ini=INI, tor=None, **kwargs):
        settings = config.parse(ini.format(data_dir=self.data_dir, control=9051))
        self.tor = tor or FakeTor()

        def connect(reactor, endpoint):
            self.connected.append(endpoint)
            return defer.succeed(self.tor)
        kwargs.setdefault("connect", connect)
        self.clock = MemoryReactorClock()
        daemon = FakeDaemon(settings, self.clock, InlinePool())
        return OnionService(daemon, settings, **kwargs)

    def publish(self, service):
        service.startService()
        return self.publish_pending(service)

    def publish_pending(self, service):
        """Answer the pending ADD_ONION as tor would; returns the command."""
        [(command, _)] = self.tor.protocol.commands
        self.tor.protocol.answer_pending(
            f"ServiceID={service.address[:-len('.onion')]}\nOK")
        return command

    def test_adds_the_onion_with_the_persisted_key(self):
        service = self.service()
        command = self.publish(service)
        key, created = load_or_create(os.path.join(self.data_dir, KEY_FILE))
        self.assertFalse(created, "the key was written on first start")
        self.assertEqual(command, f"ADD_ONION {tor_key_blob(key)} Port=55665,127.0.0.1:55665")
        self.assertEqual(len(self.connected), 1)
        self.assertIsNone(service.health())
        self.assertEqual(service.stats(), {"address": service.address, "port": 55665,
                                           "target": "127.0.0.1:55665", "published": True})
        self.assertEqual(len(service.address), 56 + len(".onion"))
        service.stopService()
        self.assertEqual(self.tor.quits, 1)
        again = self.service()
        self.assertEqual(self.publish(again), command, "same key, same address after a restart")
        self.assertEqual(again.address, service.address)

    def test_a_lost_control_connection_is_reported_and_retried(self):
        service = self.service()
        command = self.publish(service)
        lost, self.tor = self.tor, FakeTor()
        lost.protocol.on_disconnect.callback(None)
        self.assertIn("the tor control connection closed", service.health())
        self.assertFalse(service.stats()["published"])
        self.clock.advance(1)
        self.assertEqual(self.publish_pending(service), command)
        self.assertIsNone(service.health())
        self.assertEqual(len(self.connected), 2)

    def test_a_different_service_id_is_reported(self):
        service = self.service()
        service.startService()
        self.tor.protocol.answer_pending("ServiceID=someoneelse\nOK")
        self.assertIn("onion service not published: tor created someoneelse.onion",
                      service.health())
        self.assertFalse(service.stats()["published"])
        self.assertEqual(self.tor.quits, 1)

    def test_an_unreachable_control_port_is_retried_with_backoff(self):
        answers = [defer.fail(ConnectionRefusedError("refused")) for _ in range(3)]
        service = self.service(connect=lambda r, e: answers.pop() if answers
                               else defer.succeed(self.tor))
        service.startService()
        self.assertEqual(service.health(), "onion service not published: refused")
        for delay in (1, 2, 4):
            self.assertFalse(service.stats()["published"])
            self.clock.advance(delay)
        self.publish_pending(service)
        self.assertIsNone(service.health())
        service.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_health_waits_for_tor(self):
        pending = defer.Deferred()
        service = self.service(connect=lambda r, e: pending)
        self.assertEqual(service.health(), "starting")
        service.startService()
        self.assertEqual(service.health(), "waiting for tor")
        service.stopService()
        self.assertIsNone(service.tor)

    def test_launches_tor_without_a_control_port(self):
        launched = []

        def launch(reactor, **kwargs):
            launched.append(kwargs)
            return defer.succeed(self.tor)
        ini = INI.replace("control_port = tcp:127.0.0.1:{control}\n", "port = 80\n")
        service = self.service(ini, launch=launch)
        command = self.publish(service)
        self.assertEqual(launched, [{"tor_binary": None,
                                     "data_directory": os.path.join(self.data_dir, "tor")}])
        self.assertTrue(command.endswith(" Port=80,127.0.0.1:55665"))

    def test_target_rules(self):
        def target(ini):
            return onion_target(config.parse(ini))
        self.assertEqual(target("[tcp]\nlisten = tcp:7000\n[tor]\n"), (7000, "127.0.0.1:7000"))
        self.assertEqual(target("[tor]\ntarget = 10.0.0.2:99\nport = 443\n"), (443, "10.0.0.2:99"))
        for ini, why in [("[tor]\n", "required when [tcp] is not enabled"),
                         ("[tcp]\nlisten = tcp:0\n[tor]\n", "[tcp] listen uses port 0"),
                         ("[tor]\ntarget = nowhere\n", "is not host:port")]:
            self.assertIn(why, str(self.assertRaises(ValueError, target, ini)))


TOR = shutil.which("tor") or (os.path.exists("/usr/sbin/tor") and "/usr/sbin/tor")


class RealTorTests(unittest.TestCase):
    """A real tor with DisableNetwork 1: the onion is created from our key and
    maps the relay's port, and the address is the same after a restart."""

    timeout = 90
    skip = None if TOR else "needs the tor binary (Debian package tor)"

    @defer.inlineCallbacks
    def start_tor(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(workdir, "tor"), mode=0o700)
        port_file = os.path.join(workdir, "control-port")
        process = subprocess.Popen(
            [TOR, "--DataDirectory", os.path.join(workdir, "tor"), "--DisableNetwork", "1",
             "--SocksPort", "0", "--ControlPort", "auto", "--ControlPortWriteToFile", port_file,
             "--CookieAuthentication", "1", "--Log", "notice stdout"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop():
            process.terminate()
            process.wait(30)
        self.addCleanup(stop)
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().endswith("\n"):
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        with open(port_file) as f:
            return workdir, int(f.read().strip().rsplit(":", 1)[1])

    @defer.inlineCallbacks
    def run_service(self, settings, pool):
        commands = []

        @defer.inlineCallbacks
        def connect(reactor, endpoint):
            tor = yield txtorcon.connect(reactor, endpoint)
            send = tor.protocol.queue_command
            tor.protocol.queue_command = lambda cmd, *a: (commands.append(cmd), send(cmd, *a))[1]
            return tor
        service = OnionService(FakeDaemon(settings, reactor, pool), settings, connect=connect)
        service.startService()
        for _ in range(300):
            if service.published or "not published" in (service.problem or ""):
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertIsNone(service.health())
        current = yield service.tor.protocol.get_info("onions/current")
        yield service.stopService()
        return service, commands, current["onions/current"]

    @defer.inlineCallbacks
    def test_onion_from_the_persisted_key_maps_the_relay_port(self):
        workdir, control = yield self.start_tor()
        settings = config.parse(INI.format(data_dir=os.path.join(workdir, "var"), control=control))
        pool = FilePool(reactor)
        pool.startService()
        self.addCleanup(pool.stopService)
        first, commands, current = yield self.run_service(settings, pool)
        self.assertEqual(current + ".onion", first.address, "tor uses the key we derived from")
        [add] = [c for c in commands if c.startswith("ADD_ONION")]
        self.assertTrue(add.endswith(" Port=55665,127.0.0.1:55665"), add)
        key_file = os.path.join(workdir, "var", KEY_FILE)
        self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)
        second, _, current = yield self.run_service(settings, pool)
        self.assertEqual((second.address, current + ".onion"), (first.address, first.address))

    @defer.inlineCallbacks
    def test_daemon_shows_the_onion_in_stats_and_health(self):
        workdir, control = yield self.start_tor()
        ports = {"tcp": free_port(), "http": free_port()}
        relay = Relayd(self, INI.replace("55665", "{tcp}") + "[http]\nlisten = tcp:{http}\n",
                       workdir=os.path.join(workdir, "relay"), control=control, **ports)
        relay.start(wait_tcp=list(ports.values()))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, stats = http_json(ports["http"], "/stats")
            if stats["tor"]["published"]:
                break
            time.sleep(0.2)
        self.assertEqual(stats["tor"]["target"], f"127.0.0.1:{ports['tcp']}")
        self.assertEqual(stats["tor"]["port"], ports["tcp"])
        self.assertTrue(stats["tor"]["address"].endswith(".onion"))
        self.assertEqual(http_json(ports["http"], "/health")[0], 200)
        self.assertIn(f"onion service {stats['tor']['address']}:{ports['tcp']}", relay.log())

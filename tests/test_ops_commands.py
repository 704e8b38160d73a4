"""Admin console commands against a daemon made of fakes: readable output,
and "service not enabled" where a service is absent."""
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.trial import unittest

from relayd.ops.commands import AdminCommands, table, tree


class FakeRouter:
    def __init__(self):
        self.kicked = []

    def clients(self):
        return [{"id": "alice", "address": "127.0.0.1:4000", "dialect": "json",
                 "authenticated": True, "rooms": ["general", "ops"], "connected_for": 12.34},
                {"id": "bob", "address": "127.0.0.1:4001", "dialect": "seed",
                 "authenticated": False, "rooms": [], "connected_for": 3.0}]

    def kick(self, peer_id):
        self.kicked.append(peer_id)
        return peer_id == "alice"

    def rooms(self):
        return {"general": ["alice", "bob"], "ops": ["alice"]}


class FakeGuard:
    def __init__(self):
        self.banned = {}

    def ban(self, ip, seconds):
        self.banned[ip] = seconds

    def unban(self, ip):
        return self.banned.pop(ip, None) is not None

    def bans(self):
        return dict(self.banned)


class FakeFederation(Service):
    name = "federation"

    def peers(self):
        return [{"peer": "relay2", "state": "connected", "sent": 4}]


class FakeDaemon(MultiService):
    def stats(self):
        return {"relay": "relay1", "uptime": 5.25, "tcp": {"connections": 2, "rooms": 1}}

    def reload(self):
        return "reloaded etc/relay.ini"


class CommandTests(unittest.TestCase):
    def setUp(self):
        self.daemon = FakeDaemon()
        self.ns = AdminCommands(self.daemon).namespace()

    def enable_core(self):
        self.daemon.router, self.daemon.guard = FakeRouter(), FakeGuard()

    def test_stats_is_indented_lines(self):
        self.assertEqual(repr(self.ns["stats"]()),
                         "relay: relay1\nuptime: 5.2\ntcp:\n  connections: 2\n  rooms: 1")

    def test_clients_table(self):
        self.enable_core()
        lines = repr(self.ns["clients"]()).splitlines()
        self.assertEqual(lines[0].split(),
                         ["id", "address", "dialect", "authenticated", "rooms", "connected_for"])
        self.assertEqual(lines[1].split(),
                         ["alice", "127.0.0.1:4000", "json", "True", "general,ops", "12.3"])
        self.assertEqual(lines[2].split()[4], "-")

    def test_absent_services_say_so(self):
        for command, name in [("clients", "tcp"), ("bans", "ratelimit"), ("peers", "federation"),
                              ("udp_peers", "udp"), ("reservations", "libp2p"),
                              ("circuits", "libp2p")]:
            self.assertEqual(repr(self.ns[command]()), f"{name}: service not enabled")
        self.assertEqual(repr(self.ns["prune"]()), "journal: service not enabled")

    def test_kick(self):
        self.enable_core()
        self.assertEqual(self.ns["kick"]("alice"), "kicked alice")
        self.assertEqual(self.ns["kick"]("carol"), "no client carol connected")

    def test_ban_takes_minutes_and_checks_the_address(self):
        self.enable_core()
        self.assertEqual(self.ns["ban"]("10.0.0.9", 30), "banned 10.0.0.9 for 30 minutes")
        self.assertEqual(self.daemon.guard.banned, {"10.0.0.9": 1800})
        self.assertIn("not banned", self.ns["ban"]("not-an-ip"))
        self.assertIn("not banned", self.ns["ban"]("10.0.0.8", 0))
        self.assertIn("10.0.0.9  1800", repr(self.ns["bans"]()))
        self.assertEqual(self.ns["unban"]("10.0.0.9"), "unbanned 10.0.0.9")
        self.assertEqual(self.ns["unban"]("10.0.0.9"), "10.0.0.9 was not banned")
        self.assertEqual(repr(self.ns["bans"]()), "no bans")

    def test_ban_reads_minutes_given_as_text_and_unban_any_spelling(self):
        self.enable_core()
        self.assertEqual(self.ns["ban"]("10.0.0.7", "15"), "banned 10.0.0.7 for 15 minutes")
        self.assertIn("not banned", self.ns["ban"]("10.0.0.6", "nan"))
        self.assertEqual(self.daemon.guard.banned, {"10.0.0.7": 900})
        self.ns["ban"]("::0001", 1)
        self.assertEqual(self.ns["unban"]("0:0::1"), "unbanned ::1")
        self.assertEqual(self.ns["unban"]("not-an-ip"), "not-an-ip was not banned")

    def test_rooms(self):
        self.enable_core()
        self.assertEqual(repr(self.ns["rooms"]()), "general (2): alice, bob\nops (1): alice")

    def test_named_service_commands(self):
        FakeFederation().setServiceParent(self.daemon)
        self.assertEqual(repr(self.ns["peers"]()).splitlines()[1].split(),
                         ["relay2", "connected", "4"])

    def test_prune_waits_for_the_journal(self):
        d = defer.Deferred()
        self.daemon.journal = type("J", (), {"prune": lambda self: d})()
        result = self.ns["prune"]()
        d.callback({"removed": [{"segment": "relay_log.00000001.jsonl", "bytes": 10,
                                 "reason": "age"}], "segments": 1})
        self.assertEqual(repr(self.successResultOf(result)),
                         "pruned:\n  removed:\n    segment                   bytes  reason\n"
                         "    relay_log.00000001.jsonl  10     age\n  segments: 1")

    def test_reload_and_help(self):
        self.assertEqual(repr(self.ns["reload"]()), "reloaded etc/relay.ini")
        text = repr(self.ns["help"]())
        for name in AdminCommands.COMMANDS:
            self.assertIn(f"  {name}(", text)
        self.assertIn("ban(ip, minutes=10)", text)
        self.assertIs(self.ns["daemon"], self.daemon)


class FormatTests(unittest.TestCase):
    def test_table_pads_columns_and_reports_empty(self):
        self.assertEqual(table([{"a": 1, "bb": "x"}, {"a": 22}]), "a   bb\n1   x\n22  -")
        self.assertEqual(table([], "nothing"), "nothing")

    def test_tree_renders_lists_of_dicts_as_tables(self):
        self.assertEqual(tree({"udp": {"peers": [{"id": "p"}]}}), "udp:\n  peers:\n    id\n    p")

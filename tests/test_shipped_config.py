"""The README's ``make run`` starts the shipped etc/relay.ini (as committed,
never the reader's edited copy), and Ctrl-C stops it with status 0; the
README's quick tour (relay-chat and the seed-000 client), its relay-chat
lines, relay-chat p2p lines and UDP peer chat, and OPERATIONS.md's
monitoring commands, run verbatim, find it working.  Not run: ``make test``
and ``make bench`` (the suite and the benchmarks themselves), and the lines
naming a host or file the reader substitutes (``relay.example``)."""
import json
import re
import signal
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.doccommands import DocSandbox, shell_blocks

[[START, _]] = shell_blocks("README.md", "The two commands")      # make run, make test


def ctrl_c(testcase, sandbox, relay):
    """Ctrl-C on ``make run``: the daemon flushes its journal and shuts down
    cleanly; make returns 130, as for any interrupted command."""
    testcase.assertEqual(sandbox.stop(relay, signal.SIGINT), -signal.SIGINT)
    log = sandbox.output(relay)
    testcase.assertIn("journal: closed after", log)
    testcase.assertTrue(log.rstrip().endswith("Server Shut Down."), log[-2000:])


class ShippedConfigTests(SynchronousTestCase):
    def test_shipped_config_starts_and_serves_the_documented_commands(self):
        [[listen, send], seed_client] = shell_blocks("README.md", "Quick tour")
        [chat] = shell_blocks("README.md", "relay-chat")
        peers = next(line for line in chat if line.startswith("relay-chat peers "))
        interactive, send_hi, listen_json = (
            next(line for line in chat if line.split("#")[0].split() == words.split())
            for words in ("relay-chat --id alice", 'relay-chat --id alice send --to bob "hi"',
                          "relay-chat --id bob listen --count 1 --timeout 30 --json"))
        genkey, signed_send, publish = (line for line in chat if "~/.relay-alice.pem" in line)
        join, leave = (next(line for line in chat if line.startswith(start)) for start in (
            "relay-chat --id bob listen --join general", "relay-chat --id bob leave general"))
        [[health, stats, metrics]] = shell_blocks("docs/OPERATIONS.md",
                                                  "Monitoring over HTTP (`[http]`)")
        sandbox = DocSandbox(self)
        relay = sandbox.start(START)
        sandbox.wait_output(relay, "SIGTERM stops")
        bob = sandbox.start(listen)
        sandbox.wait_output(bob, "connected as bob")
        code, output = sandbox.run(send)
        self.assertEqual(code, 0, output)
        sandbox.wait_output(bob, "alice -> bob: hi")
        code, output = sandbox.run("\n".join(seed_client))
        self.assertEqual((code, json.loads(output)["status"]), (0, "ok"), output)
        sandbox.wait_output(bob, "carol -> bob: hello from the seed client")
        code, output = sandbox.run(peers)
        self.assertEqual(code, 0, output)
        self.assertIn("bob", output.split())
        self.relay_chat_first_lines(sandbox, bob, interactive, send_hi, listen_json)
        bob = sandbox.start(listen)
        sandbox.wait_output(bob, "connected as bob")
        for line in (genkey, signed_send):
            code, output = sandbox.run(line)
            self.assertEqual(code, 0, output)
        sandbox.wait_output(bob, "alice -> bob: it is really me")
        code, output = sandbox.run(publish)
        self.assertEqual(code, 0, output)
        self.assertIn("one-time prekeys on the relay: ", output)
        code, output = sandbox.run(health)
        self.assertEqual((code, json.loads(output)["status"]), (0, "ok"), output)
        self.assertLessEqual({"http", "journal", "libp2p", "tcp", "udp"},
                             set(json.loads(output)["services"]))
        code, output = sandbox.run(stats)
        self.assertEqual(json.loads(output)["relay"], "relay1")
        code, output = sandbox.run(metrics)
        self.assertIn("relayd_messages_received_total", output)
        self.room_kept_while_away(sandbox, join, leave)
        ctrl_c(self, sandbox, relay)

    def relay_chat_first_lines(self, sandbox, bob, interactive, send_hi, listen_json):
        """The relay-chat section's interactive line (typed at, on a terminal),
        its send line, and its ``listen --count 1 --json`` line."""
        code, output = sandbox.run_on_a_terminal(interactive, b"/to bob typed\n/quit\n")
        self.assertEqual(code, 0, output)
        sandbox.wait_output(bob, "alice -> bob: typed")
        sandbox.stop(bob)               # the next bob takes over the id
        json_bob = sandbox.start(listen_json)
        sandbox.wait_output(json_bob, "connected as bob")
        code, output = sandbox.run(send_hi)
        self.assertEqual(code, 0, output)
        self.assertEqual(json_bob.wait(30), 0, sandbox.output(json_bob))
        [line] = [text for text in sandbox.output(json_bob).splitlines() if text.startswith("{")]
        self.assertEqual({k: v for k, v in json.loads(line).items() if k in ("from", "body")},
                         {"from": "alice", "body": "hi"})
        self.assertEqual(output.split()[-1], json.loads(line)["msg_id"], "send prints the msg_id")

    def room_kept_while_away(self, sandbox, join, leave):
        """bob's ``listen --join general`` line keeps him in the room while
        he is away, until the ``leave`` line."""
        bob = sandbox.start(join)
        sandbox.wait_output(bob, "connected as bob")
        sandbox.stop(bob)
        code, output = sandbox.run('relay-chat --id dave send --room general "while away"')
        self.assertEqual(code, 0, output)
        bob = sandbox.start(join)
        sandbox.wait_output(bob, "dave -> #general: while away")
        sandbox.stop(bob)
        code, output = sandbox.run(leave)
        self.assertEqual(code, 0, output)

    def test_the_readmes_relay_chat_p2p_lines(self):
        """The README's ``relay-chat p2p`` lines against the shipped config,
        with ``$R`` the relay's address from its log and ``12D3KooW...`` the
        id of the peer the first line made."""
        [lines] = shell_blocks("README.md", "libp2p hub: DHT bootstrap and GossipSub rooms")

        def line(fragment):
            [text] = [text for text in lines if fragment in text]
            return text
        sandbox = DocSandbox(self)
        relay = sandbox.start(START)
        log = sandbox.wait_output(relay, "SIGTERM stops")
        relay_addr = re.search(r"listening on (/ip4/127.0.0.1/tcp/4001/p2p/\S+)", log).group(1)
        sandbox.env["R"] = relay_addr
        code, peer = sandbox.run(line("p2p genkey"))
        self.assertEqual(code, 0, peer)
        peer = peer.strip()
        listener = sandbox.start(line("p2p listen --key"))
        sandbox.wait_output(listener, "advertised /private-chat/1.0.0")
        for fragment, expected in (("p2p dht", peer), ("p2p find", "/ip4/127.0.0.1/tcp/"),
                                   ("p2p send", ""), ("p2p con", f"connected to {peer} directly"),
                                   ("p2p ping", f"pong from {relay_addr.split('/')[-1]}")):
            code, output = sandbox.run(line(fragment).replace("12D3KooW...", peer))
            self.assertEqual(code, 0, output)
            self.assertIn(expected, output)
        sandbox.wait_output(listener, ": hello")
        relayed = sandbox.start(line("p2p listen --relay"))
        sandbox.wait_output(relayed, f"reachable through the relay at {relay_addr}/p2p-circuit/p2p/")
        for route in (["link", "set", "lo", "multicast", "on"],     # as a LAN interface has
                      ["route", "add", "224.0.0.0/4", "dev", "lo"]):
            subprocess.run(["ip", "-n", sandbox.ns, *route], check=True)
        announced = sandbox.start(line("p2p listen --mdns"))
        shown = sandbox.wait_output(announced, "announced on mDNS")
        code, output = sandbox.run(line("p2p mdns "))
        self.assertEqual(code, 0, output)
        self.assertIn(re.search(r"listening on \S+/p2p/(\S+)", shown).group(1), output)
        carol = sandbox.start(".venv/bin/relay-chat --id carol listen --join libp2p-chat")
        sandbox.wait_output(carol, "connected as carol")
        sandbox.start(line("p2p room"), input=b"hi from the README\n")
        sandbox.wait_output(carol, ": hi from the README")
        ctrl_c(self, sandbox, relay)

    def test_the_readmes_udp_peer_chat(self):
        """The README's ``relay-chat peer`` lines against the shipped config:
        keys made, both sides up, a line typed by Bob reaches Alice."""
        [lines] = shell_blocks("README.md", "UDP rendezvous and peer chat")
        [alice_key, alice_peer, bob_key, bob_peer] = lines
        sandbox = DocSandbox(self)
        relay = sandbox.start(START)
        sandbox.wait_output(relay, "SIGTERM stops")
        for line in (alice_key, bob_key):
            code, output = sandbox.run(line)
            self.assertEqual(code, 0, output)
        alice = sandbox.start(alice_peer, input=b"")
        sandbox.wait_output(alice, "*** registered as alice (key proven)")
        bob = sandbox.start(bob_peer, input=b"")
        sandbox.wait_output(bob, "*** path: direct")
        bob.stdin.write(b"hi!\n")                  # typed once the path is up
        bob.stdin.flush()
        sandbox.wait_output(alice, "bob: hi!")
        ctrl_c(self, sandbox, relay)

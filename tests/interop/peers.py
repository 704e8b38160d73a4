"""py-libp2p peers that use relayd as their only bootstrap node and GossipSub
hub in the interop tests (the Python counterpart of peers.mjs).  They run in
their own venv (tests/pylibp2p.py builds it from py-requirements.txt), never
in relayd's.  Each command prints JSON lines: its findings, or {"error"}.

  python peers.py [--key ed25519|secp256k1|rsa] <command> ...
      (the peer's identity key type, Ed25519 unless given; py-libp2p 0.8.1
      cannot sign with its ECDSA keys, so they cannot be identities)
  python peers.py provide <relay-multiaddr> <expect>
      (seed 003: advertise /private-chat/1.0.0 through relayd's DHT, print
      {"ready"}, take <expect> chats, print them)
  python peers.py find <relay-multiaddr> <provider-peer-id> <text> [server|client]
      (seed 003: find that provider through relayd's DHT, as a DHT server or
      a client (which serves no DHT requests), dial it, send <text>;
      then look relays up as providers of /libp2p/relay and, as seed 002's
      clients do, under /descord/relays)
  python peers.py member <relay-multiaddr> <topic> <messages> <expect>
      (seed 004: join the topic through relayd alone, print {"ready"} once
      relayd is in the mesh, wait for "go" on stdin, publish <messages>
      "<peer-id>: message <n>" lines, print what the room delivered once
      <expect> messages from the others came and no duplicate followed)
"""
import hashlib
import json
import sys

import multiaddr
import trio

from libp2p import new_host
from libp2p.crypto import ed25519, rsa, secp256k1
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import (
    PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, PROTOCOL_ID_V13, PROTOCOL_ID_V14,
    PROTOCOL_ID_V20, GossipSub)
from libp2p.pubsub.pubsub import Pubsub
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

CHAT = "/private-chat/1.0.0"     # seed 003: one JSON string and "\n" per stream
# every GossipSub version py-libp2p speaks, newest first: relayd answers
# /meshsub/1.1.0 (or 1.0.0) in multistream-select
MESHSUB = [PROTOCOL_ID_V20, PROTOCOL_ID_V14, PROTOCOL_ID_V13, PROTOCOL_ID_V12,
           PROTOCOL_ID_V11, PROTOCOL_ID]
LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
KEYS = {
    "ed25519": ed25519.create_new_key_pair,
    "secp256k1": secp256k1.create_new_key_pair,
    "rsa": rsa.create_new_key_pair,
}


def new_peer(key_type):
    """A host with a fresh identity key of that type, listening on loopback."""
    return new_host(key_pair=KEYS[key_type](), listen_addrs=[LOOPBACK])


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def rendezvous(text):
    """A go-libp2p discovery rendezvous key, the sha2-256 multihash of the
    string (the DHT key of its CIDv1), as the hex py-libp2p's provide takes."""
    return "1220" + hashlib.sha256(text.encode()).hexdigest()


async def until(what, check, seconds=20.0):
    with trio.move_on_after(seconds):
        while True:
            got = check()
            if got:
                return got
            await trio.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


async def joined(host, relay):
    """Connect to relayd, the only peer this one is told about."""
    info = info_from_p2p_addr(multiaddr.Multiaddr(relay))
    await host.connect(info)
    return info.peer_id


async def dht_peer(host, relay, mode=DHTMode.SERVER):
    """A DHT node (a server unless told) with relayd, the only peer it is told
    of, in its routing table.  The DHT comes first: py-libp2p sends no
    identify push when a protocol handler is added, so a server that
    connected before it served kad would not be one to relayd."""
    dht = KadDHT(host, mode)
    relay_id = await joined(host, relay)
    with trio.fail_after(20):
        while not await dht.add_peer(relay_id):    # once identify says it serves kad
            await trio.sleep(0.1)
    return dht


async def provide(key_type, relay, expect):
    host = new_peer(key_type)
    chats = []

    async def on_chat(stream):
        text = b""
        try:
            while chunk := await stream.read():
                text += chunk
        except StreamEOF:         # py-libp2p's way of saying the writer closed
            pass
        chats.append({"from": str(stream.muxed_conn.peer_id), "message": json.loads(text)})
        await stream.close()

    async with host.run(listen_addrs=[LOOPBACK]):
        host.set_stream_handler(CHAT, on_chat)
        dht = await dht_peer(host, relay)
        async with background_trio_service(dht):
            advertised = await dht.provide(rendezvous(CHAT))
            out({"ready": str(host.get_id()), "advertised": advertised,
                 "addrs": [str(a) for a in host.get_addrs()]})
            await until("the chat messages", lambda: len(chats) >= expect, 60)
            out({"peer": str(host.get_id()), "chats": chats})


class AnyDescordAd(Validator):
    """Seed 002's relay advertisements are plain JSON, with no signature to check."""

    def validate(self, key, value):
        json.loads(value)

    def select(self, key, values):
        return 0


async def find(key_type, relay, provider, text, mode="server"):
    host = new_peer(key_type)
    async with host.run(listen_addrs=[LOOPBACK]):
        dht = await dht_peer(host, relay, DHTMode(mode.upper()))
        dht.register_validator("descord", AnyDescordAd())
        async with background_trio_service(dht):
            found = await dht.find_providers(rendezvous(CHAT))
            target = next((p for p in found if str(p.peer_id) == provider), None)
            if target is None:
                raise LookupError(f"relayd named no provider {provider}")
            await host.connect(PeerInfo(target.peer_id, target.addrs))
            stream = await host.new_stream(ID.from_base58(provider), [CHAT])
            await stream.write((json.dumps(text) + "\n").encode())
            await stream.close()
            relays = await dht.find_providers(rendezvous("/libp2p/relay"))
            advert = await dht.get_value("/descord/relays")
            out({"peer": str(host.get_id()), "said": text,
                 "providers": [{"id": str(p.peer_id), "addrs": [str(a) for a in p.addrs]}
                               for p in found],
                 "relay_providers": [str(p.peer_id) for p in relays],
                 "descord_relays": advert and json.loads(advert)})


async def member(key_type, relay, topic, messages, expect):
    host = new_peer(key_type)
    gossipsub = GossipSub(protocols=MESHSUB, degree=6, degree_low=4, degree_high=12,
                          heartbeat_initial_delay=0.1, heartbeat_interval=1)
    pubsub = Pubsub(host, gossipsub)
    heard, own = [], []

    async def listen(subscription):
        # py-libp2p, like go-libp2p, hands a peer's own publications to its own
        # subscription too (js-libp2p does not by default): kept apart
        while True:
            msg = await subscription.get()
            sender = ID(msg.from_id)
            (own if sender == host.get_id() else heard).append(
                {"from": str(sender), "text": msg.data.decode()})

    async with host.run(listen_addrs=[LOOPBACK]), trio.open_nursery() as nursery:
        async with background_trio_service(pubsub), background_trio_service(gossipsub):
            await pubsub.wait_until_ready()
            nursery.start_soon(listen, await pubsub.subscribe(topic))
            relay_id = await joined(host, relay)
            await until("relayd in the mesh",
                        lambda: relay_id in gossipsub.mesh.get(topic, ()))
            me = str(host.get_id())
            out({"ready": me, "protocol": str(gossipsub.peer_protocol.get(relay_id))})
            go = await trio.to_thread.run_sync(sys.stdin.readline)
            if go.strip() != "go":
                raise RuntimeError(f"expected go on stdin, got {go!r}")
            for n in range(messages):
                await pubsub.publish(topic, f"{me}: message {n}".encode())
            await until("the room messages", lambda: len(heard) >= expect, 60)
            await trio.sleep(1.5)     # time for a duplicate or an echo to show up
            out({"peer": me, "heard": heard, "own": [m["text"] for m in own]})
            nursery.cancel_scope.cancel()


COMMANDS = {
    "provide": lambda key, relay, expect="1": provide(key, relay, int(expect)),
    "find": find,
    "member": lambda key, relay, topic, messages, expect: member(
        key, relay, topic, int(messages), int(expect)),
}


def main(argv):
    key_type = "ed25519"
    if argv[:1] == ["--key"] and len(argv) > 1 and argv[1] in KEYS:
        key_type, argv = argv[1], argv[2:]
    if not argv or argv[0] not in COMMANDS:
        sys.stderr.write(__doc__)
        return 2
    try:
        trio.run(lambda: COMMANDS[argv[0]](key_type, *argv[1:]))
    except BaseException as err:          # trio may raise an ExceptionGroup
        out({"error": f"{type(err).__name__}: {err}"})
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

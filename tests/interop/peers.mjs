// js-libp2p 3.x peers that drive relayd's [libp2p] circuit relay in the interop
// tests and benchmarks.  Each command prints one JSON line with its findings.
//
//   node peers.mjs scenario <relay-multiaddr> <echo-MiB>
//   node peers.mjs limit <relay-multiaddr> <bytes-to-send>
//   node peers.mjs room <relay-multiaddr>                  (seed 004: a gossipsub room via relayd)
//   node peers.mjs reserve-raw <relay-multiaddr> <peers>  (hop RESERVE by hand, prints statuses)
//   node peers.mjs relay-server <port> [<ws-port> [<quic-port>]]  (the js relay, for benchmarks)
//   node peers.mjs bench <relay-multiaddr> <MiB> <circuits>
//   node peers.mjs autonat-peer <relay-multiaddr> <listen-ip> <port> <mapped-ip|-> <ms>
//       AutoNAT v1 client: listens on <listen-ip>:<port> and on the relay's circuit,
//       optionally maps that port to <mapped-ip> (as a UPnP mapping would), and
//       prints its addresses with what AutoNAT made of them
//   node peers.mjs quic-scenario <relay-quic-multiaddr> <relay-tcp-multiaddr> <echo-MiB>
//       a peer on QUIC reserves, a peer on TCP reaches it through the circuit
//   node peers.mjs bundle                                  (esbuild: browser.mjs -> build/browser.js)
//   node peers.mjs browser-host <relay-ws-multiaddr> <relay-tcp-multiaddr>
//       serves the browser page, waits for its reservation, chats with it through
//       the relay over TCP; prints {"url"} first, then the findings
//   node peers.mjs hub-server <port> <topic> <D> <Dhi>      (a js DHT server and GossipSub hub, for benchmarks)
//   node peers.mjs dht <relay-multiaddr> <kad-protocol>   (seed 003: find a peer through relayd's DHT)
//   node peers.mjs gossip <relay-multiaddr> <peers> <topic> <messages-each> [<expect-extra>]
//                                                          (seed 004: a room whose peers know only relayd)
//   node peers.mjs ipns <relay-multiaddr>                 (an IPNS name published and resolved via relayd)
//   node peers.mjs chat-peer <relay-multiaddr> <expect>  (seed 003: advertise /private-chat/1.0.0,
//                                  take <expect> chats, then answer every other advertiser)
//   node peers.mjs chat-reserved <relay-multiaddr> <expect>  (reachable only through relayd: take chats)
//   node peers.mjs say <multiaddr> <text>                 (one seed-003 chat message, circuits allowed)
//   node peers.mjs bridge <relay-multiaddr> <topic> <text> <expect>
//                                  (prints {"ready"} once in the mesh, says <text>, prints what it heard)
//   node peers.mjs member <relay-multiaddr> <topic> <messages> <expect>
//                                  (as bridge, but waits for "go" on stdin, then says
//                                   "<peer-id>: message <n>" for n < <messages>)
//   node peers.mjs find <relay-multiaddr> <provider-peer-id> <text>
//                                  (seed 003: find that /private-chat/1.0.0 provider through
//                                   relayd's DHT and say <text> to it)
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { quic } from '@chainsafe/libp2p-quic'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { circuitRelayTransport, circuitRelayServer } from '@libp2p/circuit-relay-v2'
import { lpStream } from '@libp2p/utils'
import { gossipsub } from '@libp2p/gossipsub'
import { autoNAT } from '@libp2p/autonat'
import { multiaddr } from '@multiformats/multiaddr'
import { peerIdFromString } from '@libp2p/peer-id'
import { createServer } from 'node:http'
import { createInterface } from 'node:readline'
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import * as raw from 'multiformats/codecs/raw'
import { createIPNSRecord, marshalIPNSRecord, unmarshalIPNSRecord, multihashToIPNSRoutingKey } from 'ipns'
import { ipnsValidator } from 'ipns/validator'
import { ipnsSelector } from 'ipns/selector'
import { generateKeyPair } from '@libp2p/crypto/keys'

const ECHO = '/relayd-test/echo/1.0.0'
const CHAT = '/private-chat/1.0.0' // seed 003: one JSON string and "\n" per stream
const HOP = '/libp2p/circuit/relay/0.2.0/hop'

async function peer (listen = [], extra = {}) {
  const node = await createLibp2p({
    addresses: { listen },
    transports: [tcp(), webSockets(), quic(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), ping: ping(), ...extra },
    connectionManager: { maxConnections: 4096, inboundConnectionThreshold: 100000, maxIncomingPendingConnections: 4096 }
  })
  await node.handle(ECHO, async (stream) => {
    try {
      for await (const buf of stream) {
        if (!stream.send(buf)) {
          await new Promise((resolve) => stream.addEventListener('drain', resolve, { once: true }))
        }
      }
      await stream.close()
    } catch (err) {
      stream.abort(err)
    }
  }, { runOnLimitedConnection: true, maxInboundStreams: 1024 })
  node.chats = []
  await node.handle(CHAT, async (stream, connection) => {
    let text = ''
    for await (const buf of stream) text += new TextDecoder().decode(buf.subarray())
    node.chats.push({ from: connection.remotePeer.toString(), message: JSON.parse(text) })
    await stream.close()
  }, { runOnLimitedConnection: true })
  return node
}

async function chat (node, target, message) {
  const stream = await node.dialProtocol(target, CHAT, { runOnLimitedConnection: true })
  stream.send(new TextEncoder().encode(JSON.stringify(message) + '\n'))
  await stream.close()
}

async function until (what, check, ms = 15000) {
  const end = Date.now() + ms
  while (Date.now() < end) {
    const got = check()
    if (got) return got
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

async function reservedPeer (relay, extra = {}) {
  const node = await peer([`${relay}/p2p-circuit`], extra)
  const addr = await until('a /p2p-circuit address', () =>
    node.getMultiaddrs().find((ma) => ma.toString().includes('/p2p-circuit')))
  return { node, addr }
}

// Send `bytes` through an echo stream and count what comes back.
async function echo (node, target, bytes) {
  const stream = await node.dialProtocol(target, ECHO, { runOnLimitedConnection: true })
  const chunk = new Uint8Array(64 * 1024).map((_, i) => i % 251)
  let received = 0
  const reading = (async () => {
    for await (const buf of stream) received += buf.byteLength
  })()
  const start = Date.now()
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, bytes - sent))
    if (!stream.send(part)) {
      await new Promise((resolve, reject) => {
        stream.addEventListener('drain', resolve, { once: true })
        stream.addEventListener('close', (evt) => reject(evt.error ?? new Error('stream closed')), { once: true })
      })
    }
  }
  await stream.close()
  await reading
  return { received, seconds: (Date.now() - start) / 1000 }
}

function readVarint (buf, pos) {
  let value = 0
  for (let shift = 0; ; shift += 7) {
    const byte = buf[pos++]
    value += (byte & 0x7f) * 2 ** shift
    if ((byte & 0x80) === 0) return [value, pos]
  }
}

// HopMessage.status (field 5) from a HopMessage protobuf
function hopStatus (buf) {
  let pos = 0
  while (pos < buf.length) {
    let key, value
    [key, pos] = readVarint(buf, pos)
    if ((key & 7) === 0) {
      [value, pos] = readVarint(buf, pos)
      if (key >>> 3 === 5) return value
    } else if ((key & 7) === 2) {
      [value, pos] = readVarint(buf, pos)
      pos += value
    } else {
      throw new Error(`unexpected wire type in ${key}`)
    }
  }
  return null
}

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

async function scenario (relay, mib) {
  const { node: a, addr } = await reservedPeer(relay)
  const b = await peer()
  const relayId = relay.split('/p2p/').pop()
  const target = multiaddr(`${relay}/p2p-circuit/p2p/${a.peerId}`)
  const conn = await b.dial(target)
  const rtt = await b.services.ping.ping(a.peerId)
  const relayRtt = await b.services.ping.ping(multiaddr(relay))
  const bytes = mib * 1024 * 1024
  const result = await echo(b, target, bytes)
  await chat(b, target, 'Hello, this is a test message!')
  await until('the chat message', () => a.chats.length > 0)
  const relayPeer = await b.peerStore.get(peerIdFromString(relayId))
  out({
    a: a.peerId.toString(),
    b: b.peerId.toString(),
    circuit_addr: addr.toString(),
    connection_limited: conn.limits != null,
    limits: conn.limits == null ? null : { bytes: conn.limits.bytes?.toString(), seconds: conn.limits.seconds },
    ping_rtt_ms: rtt,
    relay_ping_rtt_ms: relayRtt,
    echo_sent: bytes,
    echo_received: result.received,
    echo_seconds: result.seconds,
    chats_received: a.chats,
    relay_protocols: relayPeer.protocols,
    relay_agent: new TextDecoder().decode(relayPeer.metadata.get('AgentVersion') ?? new Uint8Array()),
    // js keeps the signed peer record only once it verified it (signer, domain, peer id)
    relay_peer_record: relayPeer.peerRecordEnvelope != null,
    relay_addrs: relayPeer.addresses.map((a) => ({ addr: a.multiaddr.toString(), certified: a.isCertified }))
  })
  await Promise.all([a.stop(), b.stop()])
}

// seed 004: a gossipsub room ("libp2p-chat") whose members meet only through relayd
async function room (relay) {
  const pubsub = () => ({ pubsub: gossipsub({ runOnLimitedConnection: true, heartbeatInterval: 200 }) })
  const { node: a } = await reservedPeer(relay, pubsub())
  const b = await peer([], pubsub())
  const topic = 'libp2p-chat'
  const received = []
  a.services.pubsub.addEventListener('message', (evt) => {
    received.push({ topic: evt.detail.topic, text: new TextDecoder().decode(evt.detail.data) })
  })
  a.services.pubsub.subscribe(topic)
  b.services.pubsub.subscribe(topic)
  await b.dial(multiaddr(`${relay}/p2p-circuit/p2p/${a.peerId}`))
  await until('b to see a in the room', () =>
    b.services.pubsub.getSubscribers(topic).some((p) => p.equals(a.peerId)))
  const line = `${b.peerId}: hello room`
  await b.services.pubsub.publish(topic, new TextEncoder().encode(line))
  await until('the room message', () => received.length > 0)
  out({ a: a.peerId.toString(), b: b.peerId.toString(), sent: line, received })
  await Promise.all([a.stop(), b.stop()])
}

// a go-libp2p discovery rendezvous: the CIDv1 (raw) of the string's sha2-256
async function rendezvous (text) {
  return CID.createV1(raw.code, await sha256.digest(new TextEncoder().encode(text)))
}

function dhtService (protocol) {
  return {
    dht: kadDHT({
      protocol,
      clientMode: false,
      peerInfoMapper: passthroughMapper,
      validators: { descord: async () => {}, ipns: ipnsValidator },
      selectors: { descord: () => 0, ipns: ipnsSelector }
    })
  }
}

async function providersOf (node, key, want) {
  const found = []
  for await (const provider of node.contentRouting.findProviders(key, { signal: AbortSignal.timeout(20000) })) {
    found.push(provider)
    if (want != null && provider.id.equals(want)) break
  }
  return found
}

// Dial relayd, the only peer `node` is told about, and wait for it in the DHT's routing table
async function joinDht (node, relay) {
  await node.dial(multiaddr(relay))
  await until('relayd in the routing table', () => node.services.dht.routingTable.size > 0)
}

// seed 003: find the /private-chat/1.0.0 provider `want` through the DHT and say `text` to it
async function findAndSay (node, want, text) {
  const found = await providersOf(node, await rendezvous(CHAT), want)
  const provider = found.find((p) => p.id.equals(want))
  if (provider == null) throw new Error(`no provider ${want} found`)
  await chat(node, provider.multiaddrs.map((ma) => ma.encapsulate(`/p2p/${want}`)), text)
  return found.map((p) => ({ id: p.id.toString(), addrs: p.multiaddrs.map((ma) => ma.toString()) }))
}

// seed 003: A advertises /private-chat/1.0.0 and B finds and dials it, both
// knowing only relayd; B also finds relayd as a relay
async function dht (relay, protocol) {
  const a = await peer(['/ip4/127.0.0.1/tcp/0'], dhtService(protocol))
  const b = await peer(['/ip4/127.0.0.1/tcp/0'], dhtService(protocol))
  const relayId = peerIdFromString(relay.split('/p2p/').pop())
  for (const node of [a, b]) await joinDht(node, relay)
  await a.contentRouting.provide(await rendezvous(CHAT))
  const providers = await findAndSay(b, a.peerId, 'found you through the DHT')
  await until('the chat message', () => a.chats.length > 0)
  const relays = await providersOf(b, await rendezvous('/libp2p/relay'), relayId)
  const ad = await b.services.dht.get(new TextEncoder().encode('/descord/relays'), { signal: AbortSignal.timeout(10000) })
  let advert = null
  for await (const event of ad) {
    if (event.name === 'VALUE') advert = JSON.parse(new TextDecoder().decode(event.value))
  }
  out({
    a: a.peerId.toString(),
    b: b.peerId.toString(),
    providers,
    chats_received: a.chats,
    relay_providers: relays.map((p) => p.id.toString()),
    descord_relays: advert
  })
  await Promise.all([a.stop(), b.stop()])
}

// seed 003's B against another implementation's A: find `provider` through relayd and chat to it
async function find (relay, provider, text) {
  const node = await peer(['/ip4/127.0.0.1/tcp/0'], dhtService('/ipfs/kad/1.0.0'))
  await joinDht(node, relay)
  const providers = await findAndSay(node, peerIdFromString(provider), text)
  out({ peer: node.peerId.toString(), said: text, providers })
  await node.stop()
}

async function gossip (relay, count, topic, each, extra) {
  const relayId = peerIdFromString(relay.split('/p2p/').pop())
  const nodes = []
  for (let i = 0; i < count; i++) {
    const node = await peer([], { pubsub: gossipsub({ heartbeatInterval: 200 }) })
    node.room = []
    node.services.pubsub.addEventListener('message', (evt) => {
      if (evt.detail.topic === topic) {
        node.room.push({ from: evt.detail.from?.toString(), text: new TextDecoder().decode(evt.detail.data) })
      }
    })
    node.services.pubsub.subscribe(topic)
    await node.dial(multiaddr(relay))
    nodes.push(node)
  }
  for (const node of nodes) {
    await until('relayd in the mesh', () =>
      node.services.pubsub.getMeshPeers(topic).some((p) => p.toString() === relayId.toString()))
  }
  for (let n = 0; n < each; n++) {
    for (const node of nodes) await node.services.pubsub.publish(topic, new TextEncoder().encode(`${node.peerId}: message ${n}`))
  }
  const expected = (count - 1) * each + extra
  await until('every message', () => nodes.every((node) => node.room.length >= expected), 30000)
  await new Promise((resolve) => setTimeout(resolve, 1500))   // time for any duplicate to show up
  out({ peers: nodes.map((node) => node.peerId.toString()), received: nodes.map((node) => node.room) })
  await Promise.all(nodes.map((node) => node.stop()))
}

// an IPNS name: A publishes two versions through relayd, B resolves each
async function ipnsName (relay) {
  const key = await generateKeyPair('Ed25519')
  const a = await peer(['/ip4/127.0.0.1/tcp/0'], dhtService('/ipfs/kad/1.0.0'))
  const b = await peer(['/ip4/127.0.0.1/tcp/0'], dhtService('/ipfs/kad/1.0.0'))
  for (const node of [a, b]) await joinDht(node, relay)
  const routingKey = multihashToIPNSRoutingKey(key.publicKey.toMultihash())
  const resolved = []
  for (const [seq, value] of [[1, '/ipfs/bafkqaaa'], [2, '/ipfs/bafkqabtimvwgy3yk']]) {
    const record = await createIPNSRecord(key, value, seq, 60 * 60 * 1000)
    for await (const event of a.services.dht.put(routingKey, marshalIPNSRecord(record), { signal: AbortSignal.timeout(10000) })) {}
    for await (const event of b.services.dht.get(routingKey, { signal: AbortSignal.timeout(10000) })) {
      if (event.name === 'VALUE') {
        const got = unmarshalIPNSRecord(event.value)
        resolved.push({ from: event.from.toString(), seq: Number(got.sequence), value: got.value })
      }
    }
  }
  out({ name: key.publicKey.toString(), resolved })
  await Promise.all([a.stop(), b.stop()])
}

async function chatPeer (relay, expect) {
  const relayId = peerIdFromString(relay.split('/p2p/').pop())
  const node = await peer(['/ip4/127.0.0.1/tcp/0'], dhtService('/ipfs/kad/1.0.0'))
  await joinDht(node, relay)
  const key = await rendezvous(CHAT)
  await node.contentRouting.provide(key)
  out({ ready: node.peerId.toString() })
  await until('the chat messages', () => node.chats.length >= expect, 60000)
  const others = (await providersOf(node, key)).filter((p) => !p.id.equals(node.peerId) && !p.id.equals(relayId))
  for (const other of others) {
    await chat(node, other.multiaddrs.map((ma) => ma.encapsulate(`/p2p/${other.id}`)), 'hello relay-chat')
  }
  out({ peer: node.peerId.toString(), chats: node.chats, answered: others.map((p) => p.id.toString()) })
  await node.stop()
}

async function chatReserved (relay, expect) {
  const { node, addr } = await reservedPeer(relay)
  out({ ready: node.peerId.toString(), addr: addr.toString() })
  await until('the chat messages', () => node.chats.length >= expect, 60000)
  out({ peer: node.peerId.toString(), chats: node.chats })
  await node.stop()
}

async function say (target, text) {
  const node = await peer()
  await chat(node, multiaddr(target), text)
  out({ peer: node.peerId.toString(), said: text })
  await node.stop()
}

// A GossipSub room member that knows only relayd: prints {"ready"} once relayd
// is in its mesh, waits for "go" on stdin if asked, publishes `lines`, and
// prints what the room delivered once `expect` messages came and no
// duplicate or echo followed.
async function roomMember (relay, topic, lines, expect, waitForGo) {
  const relayId = relay.split('/p2p/').pop()
  const node = await peer([], { pubsub: gossipsub({ heartbeatInterval: 200 }) })
  const heard = []
  node.services.pubsub.addEventListener('message', (evt) => {
    heard.push({ from: evt.detail.from?.toString(), text: new TextDecoder().decode(evt.detail.data) })
  })
  node.services.pubsub.subscribe(topic)
  await node.dial(multiaddr(relay))
  await until('relayd in the mesh', () =>
    node.services.pubsub.getMeshPeers(topic).some((p) => p.toString() === relayId))
  out({ ready: node.peerId.toString() })
  if (waitForGo) {
    const go = await stdinLine()
    if (go !== 'go') throw new Error(`expected go on stdin, got ${go}`)
  }
  for (const line of lines(node.peerId.toString())) {
    await node.services.pubsub.publish(topic, new TextEncoder().encode(line))
  }
  await until('the room messages', () => heard.length >= expect, 60000)
  await new Promise((resolve) => setTimeout(resolve, 1500))   // time for a duplicate or an echo
  out({ peer: node.peerId.toString(), heard })
  await node.stop()
}

async function stdinLine () {
  for await (const line of createInterface({ input: process.stdin })) return line
  return null
}

async function limit (relay, bytes) {
  const { node: a } = await reservedPeer(relay)
  const b = await peer()
  const target = multiaddr(`${relay}/p2p-circuit/p2p/${a.peerId}`)
  let error = null
  let result = null
  try {
    result = await echo(b, target, bytes)
  } catch (err) {
    error = `${err.name}: ${err.message}`
  }
  out({ error, received: result?.received ?? null, sent: bytes })
  await Promise.all([a.stop(), b.stop()])
}

// `count` peers each send a hop RESERVE by hand, holding their connections open
async function reserveRaw (relay, count) {
  const nodes = []
  const statuses = []
  for (let i = 0; i < count; i++) {
    const node = await peer()
    nodes.push(node)
    const stream = await node.dialProtocol(multiaddr(relay), HOP)
    const lp = lpStream(stream)
    await lp.write(Uint8Array.from([0x08, 0x00])) // HopMessage{type=RESERVE}
    statuses.push(hopStatus((await lp.read()).subarray()))
  }
  out({ statuses })
  await Promise.all(nodes.map((n) => n.stop()))
}

async function relayServer (port, wsPort, quicPort) {
  const listen = [`/ip4/127.0.0.1/tcp/${port}`]
  if (wsPort) listen.push(`/ip4/127.0.0.1/tcp/${wsPort}/ws`)
  if (quicPort) listen.push(`/ip4/127.0.0.1/udp/${quicPort}/quic-v1`)
  const node = await createLibp2p({
    addresses: { listen },
    transports: [tcp(), webSockets(), quic()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      relay: circuitRelayServer({
        reservations: { maxReservations: 1024, defaultDurationLimit: 3600 * 1000, defaultDataLimit: BigInt(1 << 30) },
        maxInboundHopStreams: 4096,
        maxOutboundStopStreams: 4096
      })
    },
    connectionManager: { maxConnections: 8192, inboundConnectionThreshold: 100000, maxIncomingPendingConnections: 4096 }
  })
  out({ addrs: node.getMultiaddrs().map((ma) => ma.toString()) })
  await new Promise(() => {})
}

function quantiles (values) {
  const sorted = [...values].sort((x, y) => x - y)
  const at = (q) => sorted.length ? Number(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))].toFixed(2)) : null
  return { median: at(0.5), p90: at(0.9), count: sorted.length }
}

const CIRCUITS_PER_TARGET = 200 // each target's circuits are streams on its one relay connection

async function hubServer (port, topic, D, Dhi) {
  const node = await createLibp2p({
    addresses: { listen: [`/ip4/127.0.0.1/tcp/${port}`] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      ping: ping(),
      dht: kadDHT({ clientMode: false, peerInfoMapper: passthroughMapper }),
      pubsub: gossipsub({ D, Dlo: 4, Dhi, maxInboundStreams: 4096, maxOutboundStreams: 4096 })
    },
    connectionManager: { maxConnections: 8192, inboundConnectionThreshold: 100000, maxIncomingPendingConnections: 4096 }
  })
  node.services.pubsub.subscribe(topic)
  out({ addrs: node.getMultiaddrs().map((ma) => ma.toString()) })
  await new Promise(() => {})
}

async function bench (relay, mib, circuits) {
  const { node: a } = await reservedPeer(relay)
  const b = await peer()
  const result = await echo(b, multiaddr(`${relay}/p2p-circuit/p2p/${a.peerId}`), mib * 1024 * 1024)
  await b.stop()
  // circuits held at once: initiators each holding a circuit to one of the
  // reserved targets (up to CIRCUITS_PER_TARGET each)
  const targets = [a]
  for (let n = CIRCUITS_PER_TARGET; n < circuits; n += CIRCUITS_PER_TARGET) {
    targets.push((await reservedPeer(relay)).node)
  }
  const initiators = []
  let held = 0
  let stopped = null
  const start = Date.now()
  const opens = []
  for (let i = 0; i < circuits; i++) {
    const node = await peer()
    initiators.push(node)
    const target = targets[i % targets.length]
    try {
      await node.dial(multiaddr(relay))
      const t0 = performance.now()
      await node.dial(multiaddr(`${relay}/p2p-circuit/p2p/${target.peerId}`)) // CONNECT, STOP, Noise, Yamux
      opens.push(performance.now() - t0)
      await node.services.ping.ping(target.peerId)
      held++
    } catch (err) {
      stopped = `${err.name}: ${err.message}`
      break
    }
  }
  out({
    throughput_mib_s: mib / result.seconds,
    echo_seconds: result.seconds,
    echo_received: result.received,
    circuits_requested: circuits,
    circuits_held: held,
    targets: targets.length,
    stopped_by: stopped,
    circuits_seconds: (Date.now() - start) / 1000,
    open_ms: quantiles(opens)
  })
  await Promise.all([...targets, ...initiators].map((n) => n.stop()))
}

// An AutoNAT v1 client; `mapped` claims a public mapping of its port (as UPnP
// would), which AutoNAT then asks the relay to verify.
async function autonatPeer (relay, ip, port, mapped, ms) {
  let addressManager = null
  const node = await createLibp2p({
    addresses: { listen: [`/ip4/${ip}/tcp/${port}`, `${relay}/p2p-circuit`] },
    transports: [tcp(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      identify: identify(),
      autoNAT: autoNAT(),
      grab: (components) => { addressManager = components.addressManager; return {} }
    },
    start: false
  })
  if (mapped !== '-') addressManager.addPublicAddressMapping(ip, port, mapped, port, 'tcp')
  await node.start()
  const publicAddr = `/ip4/${mapped === '-' ? ip : mapped}/tcp/${port}`
  const entry = () => addressManager.getAddressesWithMetadata()
    .find((a) => a.multiaddr.toString() === publicAddr)
  const end = Date.now() + ms
  while (Date.now() < end && !entry()?.verified) {
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await until('a /p2p-circuit address', () =>
    node.getMultiaddrs().find((ma) => ma.toString().includes('/p2p-circuit')))
  out({
    peer: node.peerId.toString(),
    public_addr: publicAddr,
    public_verified: entry()?.verified ?? null,
    addresses: addressManager.getAddressesWithMetadata().map((a) => ({
      addr: a.multiaddr.toString(), type: a.type, verified: a.verified
    })),
    multiaddrs: node.getMultiaddrs().map(String)
  })
  await node.stop()
}

async function quicScenario (relayQuic, relayTcp, mib) {
  const a = await createLibp2p({
    addresses: { listen: [`${relayQuic}/p2p-circuit`] },
    transports: [quic(), circuitRelayTransport()],
    connectionEncrypters: [noise()], // for the relayed connection; QUIC brings its own
    streamMuxers: [yamux()],
    services: { identify: identify(), ping: ping() }
  })
  await a.handle(ECHO, async (stream) => {
    for await (const buf of stream) {
      if (!stream.send(buf)) await new Promise((resolve) => stream.addEventListener('drain', resolve, { once: true }))
    }
    await stream.close()
  }, { runOnLimitedConnection: true })
  await until('a /p2p-circuit address', () =>
    a.getMultiaddrs().find((ma) => ma.toString().includes('/p2p-circuit')))
  const b = await peer()
  const target = multiaddr(`${relayTcp}/p2p-circuit/p2p/${a.peerId}`)
  const result = await echo(b, target, mib * 1024 * 1024)
  const relayRtt = await a.services.ping.ping(multiaddr(relayQuic))
  const relayConn = a.getConnections().find((c) => c.remoteAddr.toString().startsWith(relayQuic.split('/p2p/')[0]))
  out({
    a: a.peerId.toString(),
    b: b.peerId.toString(),
    a_addrs: a.getMultiaddrs().map(String),
    a_relay_conn: relayConn?.remoteAddr.toString() ?? null,
    echo_received: result.received,
    echo_seconds: result.seconds,
    relay_ping_rtt_ms: relayRtt
  })
  await Promise.all([a.stop(), b.stop()])
}

const HERE = dirname(fileURLToPath(import.meta.url))
const BUNDLE = join(HERE, 'build', 'browser.js')

async function bundle () {
  const esbuild = await import('esbuild')
  await esbuild.build({
    entryPoints: [join(HERE, 'browser.mjs')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'chrome120',
    outfile: BUNDLE,
    logLevel: 'warning'
  })
  out({ bundle: BUNDLE })
}

const PAGE = '<!doctype html><meta charset="utf-8"><title>relayd browser test</title>' +
  '<pre id="log"></pre><script type="module" src="/browser.js"></script>'

async function browserHost (relayWs, relayTcp) {
  const b = await peer()
  const script = await readFile(BUNDLE)
  let ready = null
  let done = null
  let pageError = null
  const server = createServer((req, res) => {
    let body = ''
    req.on('data', (chunk) => { body += chunk })
    req.on('end', () => {
      if (req.method === 'GET' && req.url.startsWith('/browser.js')) {
        res.writeHead(200, { 'content-type': 'text/javascript' }).end(script)
        return
      }
      if (req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'text/html' }).end(PAGE)
        return
      }
      const got = JSON.parse(body || '{}')
      if (req.url === '/ready') ready = got
      else if (req.url === '/done') done = got
      else pageError = got.error
      res.writeHead(204).end()
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${server.address().port}/?relay=${encodeURIComponent(relayWs)}`
  out({ url })
  const check = (get) => () => {
    if (pageError != null) throw new Error(`the page failed: ${pageError}`)
    return get()
  }
  await until('the page to reserve', check(() => ready), 45000)
  const target = multiaddr(`${relayTcp}/p2p-circuit/p2p/${ready.peer_id}`)
  const sent = `hello from node ${b.peerId}`
  await chat(b, target, sent)
  await until('the page to answer', check(() => done && b.chats.length > 0), 30000)
  out({
    browser_peer: ready.peer_id,
    browser_addrs: ready.addrs,
    browser_received: done.received,
    browser_relay_conns: done.relay_conns,
    node_peer: b.peerId.toString(),
    node_sent: sent,
    node_received: b.chats,
    node_conns: b.getConnections().map((c) => c.remoteAddr.toString())
  })
  server.close()
  await b.stop()
}

const [cmd, ...args] = process.argv.slice(2)
const commands = {
  scenario: () => scenario(args[0], Number(args[1] ?? 4)),
  limit: () => limit(args[0], Number(args[1])),
  room: () => room(args[0]),
  dht: () => dht(args[0], args[1] ?? '/ipfs/kad/1.0.0'),
  ipns: () => ipnsName(args[0]),
  'chat-reserved': () => chatReserved(args[0], Number(args[1] ?? 1)),
  say: () => say(args[0], args[1]),
  'chat-peer': () => chatPeer(args[0], Number(args[1] ?? 1)),
  bridge: () => roomMember(args[0], args[1], (me) => [`${me}: ${args[2]}`], Number(args[3] ?? 1), false),
  member: () => roomMember(args[0], args[1], (me) => Array.from({ length: Number(args[2]) }, (_, n) => `${me}: message ${n}`),
    Number(args[3]), true),
  find: () => find(args[0], args[1], args[2]),
  gossip: () => gossip(args[0], Number(args[1] ?? 3), args[2] ?? 'libp2p-chat', Number(args[3] ?? 3), Number(args[4] ?? 0)),
  'reserve-raw': () => reserveRaw(args[0], Number(args[1] ?? 1)),
  'relay-server': () => relayServer(Number(args[0] ?? 0), Number(args[1] ?? 0), Number(args[2] ?? 0)),
  bench: () => bench(args[0], Number(args[1] ?? 16), Number(args[2] ?? 50)),
  bundle: () => bundle(),
  'quic-scenario': () => quicScenario(args[0], args[1], Number(args[2] ?? 4)),
  'autonat-peer': () => autonatPeer(args[0], args[1], Number(args[2]), args[3], Number(args[4])),
  'browser-host': () => browserHost(args[0], args[1]),
  'hub-server': () => hubServer(Number(args[0] ?? 0), args[1] ?? 'bench', Number(args[2] ?? 6), Number(args[3] ?? 12))
}
if (commands[cmd] == null) {
  console.error(`unknown command ${cmd}`)
  process.exit(2)
}
commands[cmd]().then(() => process.exit(0), (err) => {
  console.error(err)
  out({ error: `${err.name}: ${err.message}` })
  process.exit(1)
})

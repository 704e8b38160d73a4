// The page's js-libp2p peer, bundled by esbuild (`node peers.mjs bundle`) and run
// in headless Chromium by tests/test_libp2p_browser.py.  It reaches relayd over
// WebSocket (the relay multiaddr comes in ?relay=), reserves a slot, tells the
// page's host (peers.mjs browser-host) its circuit address, answers the host's
// chat message through the circuit and reports what it received.
import { createLibp2p } from 'libp2p'
import { webSockets } from '@libp2p/websockets'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { circuitRelayTransport } from '@libp2p/circuit-relay-v2'

const CHAT = '/private-chat/1.0.0'
const relay = new URLSearchParams(location.search).get('relay')
const log = (line) => { document.getElementById('log').textContent += line + '\n' }
const post = (path, body) => fetch(path, { method: 'POST', body: JSON.stringify(body) })

async function main () {
  const node = await createLibp2p({
    addresses: { listen: [`${relay}/p2p-circuit`] },
    transports: [webSockets(), circuitRelayTransport()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify() },
    // browsers refuse loopback and private addresses by default; relayd is on loopback here
    connectionGater: { denyDialMultiaddr: async () => false }
  })
  const received = []
  await node.handle(CHAT, async (stream, connection) => {
    try {
      let text = ''
      for await (const buf of stream) text += new TextDecoder().decode(buf.subarray())
      const message = JSON.parse(text)
      received.push({ from: connection.remotePeer.toString(), message, limited: connection.limits != null })
      log(`received: ${message}`)
      const reply = await connection.newStream(CHAT, { runOnLimitedConnection: true })
      reply.send(new TextEncoder().encode(JSON.stringify(`browser got: ${message}`) + '\n'))
      await reply.close()
      await post('/done', { received, relay_conns: node.getConnections().map((c) => c.remoteAddr.toString()) })
    } catch (err) {
      await post('/error', { error: `${err.name}: ${err.message}` })
    }
  }, { runOnLimitedConnection: true })
  let circuit = null
  while (circuit == null) {
    circuit = node.getMultiaddrs().find((ma) => ma.toString().includes('/p2p-circuit'))
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  log(`reserved: ${circuit}`)
  await post('/ready', { peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })
}

window.addEventListener('error', (evt) => post('/error', { error: String(evt.message) }))
main().catch((err) => post('/error', { error: `${err.name}: ${err.message}` }))

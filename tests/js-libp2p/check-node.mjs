// What a js-libp2p peer sees of a pluresdb node: dials it over each address
// given (TCP, WebSocket), and checks identify, a Kademlia lookup through it,
// and that the sync protocol refuses a peer without the network secret with
// a reason. One line per check ("ok ..." or "FAIL ..."); exits 1 if any
// check failed, 2 on bad arguments. Every step has a deadline.
//
//   node_modules/.bin/node check-node.mjs --peer-id 12D3KooW... \
//     --addr /ip4/127.0.0.1/tcp/4001 --addr /ip4/127.0.0.1/tcp/4002/ws
//
// Runs on Node 22 (js-libp2p 3 needs Promise.withResolvers): `npm ci` here
// installs it as node_modules/.bin/node.

import { parseArgs } from 'node:util'
import { randomBytes } from 'node:crypto'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { noise } from '@libp2p/noise'
import { yamux } from '@libp2p/yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import * as cbor from 'cborg'

const SYNC_PROTOCOL = '/pluresdb/sync/1'

// docs/protocol.md, "Frames".
const FRAME_VERSION = 1
const FRAME_HEADER_BYTES = 6
const HANDSHAKE_FRAME_LIMIT = 64 * 1024
const KIND_NAMES = { 1: 'hello', 2: 'heartbeat', 3: 'sync', 4: 'goodbye', 5: 'error', 6: 'peers' }
const KIND = { hello: 1, sync: 3, error: 5 }
const ERROR_NAMES = {
  1: 'unsupported_version',
  2: 'bad_frame',
  3: 'access_denied',
  4: 'rate_limited',
  5: 'too_many_connections',
  6: 'handshake_timeout',
  7: 'unexpected_message'
}
const ACCESS_DENIED = 3

function usage (message) {
  console.error(`check-node: ${message}`)
  console.error('usage: check-node.mjs --peer-id ID --addr MULTIADDR [--addr MULTIADDR ...] [--timeout-ms MS]')
  process.exit(2)
}

let options
try {
  options = parseArgs({
    options: {
      'peer-id': { type: 'string' },
      addr: { type: 'string', multiple: true },
      'timeout-ms': { type: 'string', default: '15000' }
    },
    strict: true
  }).values
} catch (err) {
  usage(err.message)
}
if (options['peer-id'] == null) usage('--peer-id is required')
if (options.addr == null || options.addr.length === 0) usage('at least one --addr is required')
const STEP_TIMEOUT_MS = Number.parseInt(options['timeout-ms'], 10)
if (!(STEP_TIMEOUT_MS > 0)) usage('--timeout-ms must be a positive number')

let nodeId
try {
  nodeId = peerIdFromString(options['peer-id'])
} catch (err) {
  usage(`--peer-id ${options['peer-id']}: ${err.message}`)
}
const targets = []
for (const text of options.addr) {
  let addr
  try {
    addr = multiaddr(text)
  } catch (err) {
    usage(`--addr ${text}: ${err.message}`)
  }
  const protocols = addr.getComponents().map(c => c.name)
  if (protocols.includes('p2p')) usage(`--addr ${text}: give the address without /p2p (the peer id goes in --peer-id)`)
  if (!protocols.includes('tcp')) usage(`--addr ${text}: only TCP and WebSocket addresses are checked`)
  const transport = protocols.includes('ws') || protocols.includes('wss') ? 'ws' : 'tcp'
  targets.push({ transport, addr, dialAddr: addr.encapsulate(`/p2p/${nodeId}`) })
}

// A last resort should a step hang past its own deadline (each target's
// checks take at most about a dozen steps).
setTimeout(() => {
  console.log(`FAIL watchdog: the checks did not finish within ${15 * targets.length} step deadlines`)
  process.exit(1)
}, 15 * targets.length * STEP_TIMEOUT_MS).unref()

let failures = 0
let passes = 0
function pass (transport, check, detail) {
  passes++
  console.log(`ok ${transport} ${check}: ${detail}`)
}
function fail (transport, check, detail) {
  failures++
  console.log(`FAIL ${transport} ${check}: ${detail}`)
}

/** Runs `work(signal)`, failing with a named error after STEP_TIMEOUT_MS. */
async function step (label, work) {
  const controller = new AbortController()
  let timer
  const deadline = new Promise((resolve, reject) => {
    timer = setTimeout(() => {
      const err = new Error(`${label}: no answer within ${STEP_TIMEOUT_MS} ms`)
      controller.abort(err)
      reject(err)
    }, STEP_TIMEOUT_MS)
  })
  try {
    return await Promise.race([work(controller.signal), deadline])
  } finally {
    clearTimeout(timer)
  }
}

/** Waits (up to STEP_TIMEOUT_MS) until `condition()` holds, polling. */
async function until (label, condition) {
  const giveUp = Date.now() + STEP_TIMEOUT_MS
  for (;;) {
    if (await condition()) return
    if (Date.now() > giveUp) throw new Error(`${label}: not within ${STEP_TIMEOUT_MS} ms`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

function transportsFor (transport) {
  return transport === 'ws' ? [webSockets(), tcp()] : [tcp()]
}

/**
 * A js-libp2p node as a user would configure one, with a DHT that keeps
 * loopback addresses (the default mapper drops private addresses, and the
 * test runs on loopback) and speaks the node's Kademlia protocol.
 */
async function newPeer ({ transport, kadProtocol, listen }) {
  const services = { identify: identify(), ping: ping() }
  if (kadProtocol != null) {
    services.dht = kadDHT({ protocol: kadProtocol, clientMode: false, peerInfoMapper: passthroughMapper })
  }
  return createLibp2p({
    addresses: { listen: listen ? ['/ip4/127.0.0.1/tcp/0'] : [] },
    transports: transportsFor(transport),
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services
  })
}

// ---- identify ---------------------------------------------------------------

/** Dials the node and returns the connection and its identify result. */
async function connectAndIdentify (peer, target) {
  // libp2p runs identify on every new connection: take that result (a
  // second identify stream on the same connection would be refused).
  const identified = new Promise(resolve => {
    peer.addEventListener('peer:identify', event => {
      if (event.detail.peerId.equals(nodeId)) resolve(event.detail)
    })
  })
  const connection = await step('dial', signal => peer.dial(target.dialAddr, { signal }))
  if (!connection.remotePeer.equals(nodeId)) {
    throw new Error(`the connection authenticated ${connection.remotePeer}, not ${nodeId}`)
  }
  const result = await step('identify', () => identified)
  return { connection, result }
}

function checkIdentify (target, result) {
  const protocols = [...result.protocols].sort()
  const kadProtocol = protocols.find(p => p.endsWith('/kad/1.0.0'))
  const missing = [SYNC_PROTOCOL, '/ipfs/id/1.0.0', '/ipfs/ping/1.0.0'].filter(p => !protocols.includes(p))
  if (kadProtocol == null) missing.push('a Kademlia protocol (.../kad/1.0.0)')
  const listen = result.listenAddrs.map(a => a.toString())
  if (!result.peerId.equals(nodeId)) {
    fail(target.transport, 'identify', `identify names ${result.peerId}, not ${nodeId}`)
  } else if (missing.length > 0) {
    fail(target.transport, 'identify', `protocols [${protocols.join(', ')}] lack ${missing.join(', ')}`)
  } else if (!listen.includes(target.addr.toString())) {
    fail(target.transport, 'identify', `listen addresses [${listen.join(', ')}] lack the dialled ${target.addr}`)
  } else {
    pass(target.transport, 'identify', `agent "${result.agentVersion}", protocols [${protocols.join(', ')}], listen [${listen.join(', ')}]`)
  }
  return kadProtocol
}

// ---- the sync protocol without the secret -------------------------------------

function encodeFrame (kind, payload) {
  const body = cbor.encode(payload)
  const frame = new Uint8Array(FRAME_HEADER_BYTES + body.length)
  frame[0] = FRAME_VERSION
  frame[1] = kind
  new DataView(frame.buffer).setUint32(2, body.length)
  frame.set(body, FRAME_HEADER_BYTES)
  return frame
}

/** Splits a byte stream into frames (docs/protocol.md, "Frame format"). */
async function * frames (stream) {
  let buffered = new Uint8Array(0)
  for await (const chunk of stream) {
    const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray()
    const joined = new Uint8Array(buffered.length + bytes.length)
    joined.set(buffered)
    joined.set(bytes, buffered.length)
    buffered = joined
    while (buffered.length >= FRAME_HEADER_BYTES) {
      if (buffered[0] !== FRAME_VERSION) throw new Error(`frame of format version ${buffered[0]}, not ${FRAME_VERSION}`)
      const length = new DataView(buffered.buffer, buffered.byteOffset).getUint32(2)
      if (length > HANDSHAKE_FRAME_LIMIT) throw new Error(`a ${length}-byte frame during the handshake (limit ${HANDSHAKE_FRAME_LIMIT})`)
      if (buffered.length < FRAME_HEADER_BYTES + length) break
      const kind = buffered[1]
      const payload = cbor.decode(buffered.subarray(FRAME_HEADER_BYTES, FRAME_HEADER_BYTES + length))
      buffered = buffered.subarray(FRAME_HEADER_BYTES + length)
      yield { kind, payload }
    }
  }
  if (buffered.length > 0) throw new Error(`the stream ended inside a frame (${buffered.length} bytes left)`)
}

function hello (peer, extra) {
  return encodeFrame(KIND.hello, {
    protocol_version: 1,
    peer_id: peer.peerId.toString(),
    listen_addresses: [],
    proof: null,
    ...extra
  })
}

/**
 * Opens the sync protocol as a peer without the network secret would
 * (docs/protocol.md, "libp2p", session binding): a `hello` with a `nonce`
 * (32 random bytes as 64 hex digits) and no proof; after the node's two
 * `hello`s (its nonce, then its proof), the `hello` that would carry ours
 * over the session binding, with `proof: null`.
 * Returns the node's `error` frame and the kinds of the frames before it.
 */
async function syncWithoutSecret (peer, connection) {
  return step('sync refusal', async signal => {
    const stream = await connection.newStream(SYNC_PROTOCOL, { signal })
    if (stream.protocol !== SYNC_PROTOCOL) throw new Error(`negotiated ${stream.protocol}, not ${SYNC_PROTOCOL}`)
    stream.send(hello(peer, { nonce: randomBytes(32).toString('hex') }))
    const before = []
    try {
      for await (const frame of frames(stream)) {
        if (frame.kind === KIND.error) return { error: frame.payload, before }
        before.push(KIND_NAMES[frame.kind] ?? `kind ${frame.kind}`)
        if (frame.kind === KIND.sync) break
        // The node's nonce hello, then its proof hello: ours would go now.
        if (frame.kind === KIND.hello && before.length === 2) stream.send(hello(peer, {}))
      }
    } finally {
      stream.abort(new Error('check done'))
    }
    return { error: null, before }
  })
}

function checkRefusal (target, { error, before }) {
  if (before.includes('sync')) {
    fail(target.transport, 'sync refused', `the node sent a sync frame to a peer without the secret (frames: ${before.join(', ')})`)
  } else if (error == null) {
    fail(target.transport, 'sync refused', `the stream ended without an error frame (frames: ${before.join(', ') || 'none'})`)
  } else if (error.code !== ACCESS_DENIED || typeof error.message !== 'string' || error.message.length === 0) {
    fail(target.transport, 'sync refused', `error frame ${JSON.stringify(error)}, expected code ${ACCESS_DENIED} (access_denied) with a message`)
  } else {
    const seen = before.length > 0 ? ` after ${before.join(', ')}` : ''
    pass(target.transport, 'sync refused', `error frame code ${error.code} (${ERROR_NAMES[error.code]}): "${error.message}"${seen}`)
  }
}

// ---- Kademlia -------------------------------------------------------------------

/** A multiaddr as text without its `/p2p/<id>` part, if it has one. */
function withoutPeerId (address) {
  return address.getComponents().filter(c => c.name !== 'p2p').map(c => `/${c.name}${c.value != null ? `/${c.value}` : ''}`).join('')
}

/**
 * Runs a lookup of `id` from `peer` through the DHT (not its local cache)
 * to its end. Returns what each queried peer answered and the records of
 * `id` the lookup found.
 */
async function lookUp (peer, id) {
  return step(`lookup of ${id}`, async signal => {
    const answers = []
    const records = []
    try {
      for await (const event of peer.services.dht.findPeer(id, { signal, useCache: false })) {
        if (event.name === 'PEER_RESPONSE') answers.push(event)
        if (event.name === 'FINAL_PEER' && event.peer.id.equals(id)) records.push(event)
      }
    } catch (err) {
      if (records.length === 0 && err.name !== 'NotFoundError') throw err
    }
    return { answers, records }
  })
}

/**
 * Two JS peers, A and B, each given only the node as bootstrap (B listens,
 * A does not dial anything else). A looks up B and then the node, through
 * the DHT (its local cache off):
 * - the node's answer to A's FIND_NODE for B must name B with an address B
 *   listens on: the node serves Kademlia to js-libp2p and keeps a peer that
 *   connected to it in its routing table, with an address it can be dialled
 *   at (what makes a node a bootstrap for others);
 * - A's lookup of the node must find the node's record holding the
 *   address the script was given: the node's listen addresses, as it
 *   announces them, travel through the DHT (rust-libp2p's node does not
 *   name itself, so the record comes from B, who learned it from the
 *   node's identify).
 */
async function checkKademlia (target, kadProtocol) {
  const a = await newPeer({ transport: target.transport, kadProtocol, listen: false })
  const b = await newPeer({ transport: target.transport, kadProtocol, listen: true })
  try {
    await step('B dials the node', signal => b.dial(target.dialAddr, { signal }))
    await step('A dials the node', signal => a.dial(target.dialAddr, { signal }))
    await until('the node in A\'s routing table', () => a.services.dht.routingTable.find(nodeId) != null)
    await until('the node in B\'s routing table', () => b.services.dht.routingTable.find(nodeId) != null)

    // The node takes a moment to put B in its routing table (it learns B's
    // addresses from B's identify): ask again until the deadline.
    const bListen = b.getMultiaddrs().map(withoutPeerId)
    let answer
    let lastAnswers = []
    await until('the node names B with its address in its answer to A', async () => {
      const { answers } = await lookUp(a, b.peerId)
      lastAnswers = answers.filter(event => event.from.equals(nodeId))
      answer = lastAnswers
        .flatMap(event => event.closer)
        .find(p => p.id.equals(b.peerId) && p.multiaddrs.some(m => bListen.includes(withoutPeerId(m))))
      return answer != null
    }).catch(err => {
      const said = lastAnswers.map(event => `[${event.closer.map(p => `${p.id} ${p.multiaddrs.join(' ')}`).join('; ')}]`)
      throw new Error(`${err.message} (B listens on ${bListen.join(', ')}; the node answered ${said.join(', ') || 'nothing'})`)
    })

    // A lookup goes only to peers closer to the key than the one that named
    // them, and none is closer to the node's id than the node: A asks B
    // once B is in A's routing table (A met B through the node's answer).
    await until('B in A\'s routing table', () => a.services.dht.routingTable.find(b.peerId) != null)
    let record
    let records = []
    await until('A finds the node\'s record', async () => {
      try {
        records = (await lookUp(a, nodeId)).records
      } catch {
        return false
      }
      record = records.find(event => event.peer.multiaddrs.some(m => withoutPeerId(m) === target.addr.toString()))
      return record != null
    }).catch(err => {
      const seen = records.map(event => `from ${event.from}: [${event.peer.multiaddrs.join(', ')}]`)
      throw new Error(`${err.message}: no record with ${target.addr} (${seen.join('; ') || 'none'})`)
    })
    const via = record.from.equals(b.peerId) ? 'B' : record.from.equals(nodeId) ? 'the node' : record.from.toString()
    pass(target.transport, 'kad', `the node answered A's lookup of B with [${answer.multiaddrs.join(', ')}]; ` +
      `A's lookup of the node found its record via ${via}: [${record.peer.multiaddrs.join(', ')}]`)
  } finally {
    await Promise.allSettled([a.stop(), b.stop()])
  }
}

// ---- main -----------------------------------------------------------------------

for (const target of targets) {
  const t = target.transport
  let peer
  try {
    peer = await newPeer({ transport: t, listen: false })
    let identified
    try {
      identified = await connectAndIdentify(peer, target)
    } catch (err) {
      fail(t, 'connect', `${target.dialAddr}: ${err.message}`)
      fail(t, 'identify', 'not connected')
      fail(t, 'sync refused', 'not connected')
      fail(t, 'kad', 'not connected')
      continue
    }
    const { connection, result } = identified
    pass(t, 'connect', `${connection.remoteAddr} (${connection.encryption}, ${connection.multiplexer})`)
    const kadProtocol = checkIdentify(target, result)

    try {
      checkRefusal(target, await syncWithoutSecret(peer, connection))
    } catch (err) {
      fail(t, 'sync refused', err.message)
    }

    if (kadProtocol == null) {
      fail(t, 'kad', 'the node lists no Kademlia protocol')
    } else {
      try {
        await checkKademlia(target, kadProtocol)
      } catch (err) {
        fail(t, 'kad', err.message)
      }
    }
  } finally {
    if (peer != null) await Promise.allSettled([peer.stop()])
  }
}

console.log(failures === 0 ? `all ${passes} checks passed` : `${failures} of ${passes + failures} checks failed`)
process.exit(failures === 0 ? 0 : 1)

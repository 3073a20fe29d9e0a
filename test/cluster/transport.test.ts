// The peer transport over real TCP: three nodes on 127.0.0.11-13 with the
// same port, plus hostile and broken peers on raw sockets. Tests run in order
// and share nodes 1-3; each leaves them connected.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { Role } from "../../src/replication/auth.js";
import { encodeFrame, encodeFrameHeader, FrameDecoder, FrameType } from "../../src/replication/frame.js";
import { addressOf, closeServer, hostOf, port, rawServer, RawPeer, sleep, startNode, tapProxy, waitFor, type TestNode } from "./transport-helpers.js";

const MiB = 1024 * 1024;
const nodes = new Map<number, TestNode>();
const node = (id: number): TestNode => {
  const n = nodes.get(id);
  if (n === undefined) throw new Error(`node ${id} is not running`);
  return n;
};
const core = [1, 2, 3];

function connectedAll(ids: number[]): boolean {
  return ids.every((a) => ids.every((b) => a === b || node(a).listener.transport.isConnected(b)));
}

function payload(from: number, to: number, seq: number, bytes: number): Uint8Array {
  const b = new Uint8Array(bytes);
  new Prng(from * 1_000_003 + to * 10_007 + seq).fill(b);
  return b;
}

interface Msg {
  seq: number;
  data: Uint8Array;
}

/** Sends `count` messages from every node in `ids` to every other; every 750th carries `bigBytes`. */
function sendAll(ids: number[], count: number, bigBytes: number, seqBase = 0): void {
  for (let seq = seqBase; seq < seqBase + count; seq++) {
    for (const a of ids) {
      for (const b of ids) {
        if (a === b) continue;
        const bytes = seq % 750 === 0 ? bigBytes : (seq * 31) % 200;
        assert.ok(node(a).listener.transport.send(b, { seq, data: payload(a, b, seq, bytes) }), `send ${a}->${b} #${seq}`);
      }
    }
  }
}

/** Every node in `ids` got exactly seq base..base+count-1 from every other, in order, byte-exact. */
function checkAll(ids: number[], count: number, bigBytes: number, seqBase = 0): void {
  for (const b of ids) {
    for (const a of ids) {
      if (a === b) continue;
      const got = (node(b).got.get(a) ?? []) as Msg[];
      assert.is(got.length, count, `${a}->${b} count`);
      got.forEach((m, i) => {
        const seq = seqBase + i;
        if (m.seq !== seq) assert.unreachable(`${a}->${b}: message ${i} has seq ${m.seq}, expected ${seq}`);
        const bytes = seq % 750 === 0 ? bigBytes : (seq * 31) % 200;
        if (m.data.length !== bytes || !Buffer.from(m.data).equals(Buffer.from(payload(a, b, seq, bytes)))) assert.unreachable(`${a}->${b} #${seq}: payload differs`);
      });
    }
  }
}

function clearGot(ids: number[]): void {
  for (const id of ids) node(id).got.clear();
}

const delivered = (to: number, from: number): number => node(to).got.get(from)?.length ?? 0;

test.before(async () => {
  for (const id of core) nodes.set(id, await startNode(id, { peers: core }));
  await waitFor(() => connectedAll(core), 5_000, "nodes 1-3 to connect");
});

test.after(async () => {
  for (const n of nodes.values()) await n.close();
});

test("three nodes exchange thousands of messages and 4 MiB payloads both ways, in order, over one connection per pair", async () => {
  const count = 3000;
  sendAll(core, count, 4 * MiB);
  await waitFor(() => core.every((b) => core.every((a) => a === b || delivered(b, a) >= count)), 20_000, "all messages");
  checkAll(core, count, 4 * MiB);
  for (const id of core) {
    for (const p of node(id).listener.transport.stats().peers) {
      assert.is(p.connections, 1, `node ${id} has one connection to ${p.id}`);
      assert.ok(p.framesSent >= count && p.bytesSent > 16 * MiB, `node ${id} counted what it sent to ${p.id}`);
      assert.ok(p.framesReceived >= count && p.bytesReceived > 16 * MiB, `node ${id} counted what it got from ${p.id}`);
    }
  }
  clearGot(core);
});

test("a wrong secret is refused and logged on both sides, and no message passes", async () => {
  const bad = await startNode(4, { peers: [1], secret: Buffer.from("not-the-cluster-secret-at-all!!!") });
  nodes.set(4, bad);
  node(1).listener.transport.setPeers([...core, 4].map(addressOf));
  bad.listener.transport.send(1, { seq: 0, data: new Uint8Array(1) });
  node(1).listener.transport.send(4, { seq: 0, data: new Uint8Array(1) });
  await waitFor(() => node(1).logs.some((l) => l.includes("127.0.0.14") && l.includes("authentication failed")), 3_000, "node 1 to log the refusal");
  await waitFor(() => bad.logs.some((l) => l.includes("authentication failed") || l.includes("refused by the peer")), 3_000, "node 4 to log the refusal");
  await sleep(300);
  assert.is(delivered(1, 4), 0);
  assert.is(delivered(4, 1), 0);
  assert.not.ok(node(1).listener.transport.isConnected(4));
  assert.ok(node(1).listener.transport.stats().authFailures > 0);
  const secretText = "s3cret-s3cret";
  for (const l of [...node(1).logs, ...bad.logs]) assert.not.ok(l.includes(secretText), `log line leaks the secret: ${l}`);
  node(1).listener.transport.setPeers(core.map(addressOf));
  await bad.close();
  nodes.delete(4);
});

test("a proof captured on a real connection and replayed by a raw client is refused", async () => {
  // Node 5 reaches node 2 through a tap on 127.0.0.16 that records what node 5 sends.
  const tap = await tapProxy(hostOf(6), port, { host: hostOf(2), port });
  node(2).listener.transport.setPeers([...core, 5].map(addressOf));
  const n5 = await startNode(5);
  nodes.set(5, n5);
  n5.listener.transport.setPeers([{ id: 2, host: hostOf(6), port }]);
  const recorded: { type: number; body: Buffer }[] = [];
  const d = new FrameDecoder({ frame: (type, body) => void recorded.push({ type, body: Buffer.from(body) }), error: () => {} }, 1 << 20);
  await waitFor(() => {
    recorded.length = 0;
    for (const c of tap.clientBytes) d.push(c);
    tap.clientBytes.length = 0;
    return recorded.some((f) => f.type === FrameType.proof);
  }, 3_000, "node 5 to prove itself through the tap");
  const replay = await RawPeer.connect(hostOf(2), port, hostOf(5));
  for (const f of recorded.filter((x) => x.type === FrameType.hello || x.type === FrameType.proof)) replay.write(encodeFrame(f.type as FrameType, f.body));
  replay.sendMessage({ seq: 999, data: new Uint8Array(3) });
  await replay.waitClosed();
  const refusal = replay.frames.find((f) => f.type === FrameType.refuse);
  assert.match(refusal?.body.toString() ?? "", /authentication failed for node 5/);
  assert.ok(node(2).logs.some((l) => /127\.0\.0\.15:\d+: handshake failed: authentication failed for node 5/.test(l)), "node 2 logged the address and reason");
  assert.not.ok((node(2).got.get(5) ?? []).some((m) => (m as Msg).seq === 999), "the replayed message never arrived");
  node(2).listener.transport.setPeers(core.map(addressOf));
  await n5.close();
  nodes.delete(5);
  await closeServer(tap.server);
});

test("oversized frames from raw clients close only their connection; the nodes keep serving each other", async () => {
  // Before authentication the bound is 256 bytes.
  const stranger = await RawPeer.connect(hostOf(1), port);
  stranger.write(encodeFrameHeader(FrameType.message, 100 * MiB));
  await stranger.waitClosed();
  assert.ok(node(1).logs.some((l) => /handshake failed: frame of 104857600 bytes exceeds the limit of 256/.test(l)));
  // After authentication the bound is 64 MiB: a known node 6 (raw) proves itself, then oversteps.
  node(1).listener.transport.setPeers([...core, 6].map(addressOf));
  const six = await RawPeer.connect(hostOf(1), port, hostOf(6));
  await six.handshake(Role.dialer, 6, 1);
  six.sendMessage({ seq: 0, data: new Uint8Array(5) });
  await waitFor(() => delivered(1, 6) === 1, 2_000, "node 6's first message");
  six.write(encodeFrameHeader(FrameType.message, 64 * MiB + 1));
  await six.waitClosed();
  assert.ok(node(1).logs.some((l) => /node 6 .*closing: frame of 67108865 bytes exceeds the limit of 67108864/.test(l)));
  // Garbage msgpack after authentication closes too.
  const six2 = await RawPeer.connect(hostOf(1), port, hostOf(6));
  await six2.handshake(Role.dialer, 6, 1);
  six2.sendStart();
  six2.write(encodeFrame(FrameType.message, Buffer.from([0xd9, 0x05, 0x61])));
  await six2.waitClosed();
  assert.ok(node(1).logs.some((l) => l.includes("malformed message body")));
  node(1).listener.transport.setPeers(core.map(addressOf));
  sendAll(core, 200, 64 * 1024);
  await waitFor(() => core.every((b) => core.every((a) => a === b || delivered(b, a) >= 200)), 5_000, "traffic after the attacks");
  checkAll(core, 200, 64 * 1024);
  clearGot(core);
});

test("a peer that says nothing is cut at the handshake timeout, with a log line", async () => {
  const mute = await RawPeer.connect(hostOf(2), port);
  const hello = await mute.nextFrame();
  assert.is(hello.type, FrameType.hello);
  await mute.waitClosed(3_000);
  assert.ok(node(2).logs.some((l) => /127\.0\.0\.1:\d+: handshake failed: timed out after 1000 ms/.test(l)));
});

test("a peer that is killed and restarted is reconnected to, and messages flow again", async () => {
  await node(3).close();
  nodes.delete(3);
  await waitFor(() => !node(1).listener.transport.isConnected(3) && !node(2).listener.transport.isConnected(3), 2_000, "1 and 2 to see 3 gone");
  // Once a redial fails the peer is unreachable: send refuses at once instead of queueing.
  await waitFor(() => !node(1).listener.transport.send(3, { seq: -1, data: new Uint8Array(0) }), 2_000, "send to a dead peer to return false");
  nodes.set(3, await startNode(3, { peers: core }));
  await waitFor(() => connectedAll(core), 5_000, "3 to be reconnected");
  sendAll(core, 100, 4 * MiB);
  await waitFor(() => core.every((b) => core.every((a) => a === b || delivered(b, a) >= 100)), 5_000, "traffic after the restart");
  checkAll(core, 100, 4 * MiB);
  const s1 = node(1).listener.transport.stats().peers.find((p) => p.id === 3);
  assert.ok((s1?.reconnects ?? 0) >= 1, "node 1 counted a reconnect to 3");
  assert.ok((s1?.messagesDropped ?? 0) >= 1, "node 1 counted what it refused to queue");
  clearGot(core);
});

test("simultaneous dials end with exactly one connection, and nothing queued is lost", async () => {
  const a = await startNode(7);
  const b = await startNode(8);
  nodes.set(7, a).set(8, b);
  for (let round = 0; round < 3; round++) {
    // Both dial in the same turn; both have messages queued before either connection is up.
    a.listener.transport.setPeers([addressOf(8)]);
    b.listener.transport.setPeers([addressOf(7)]);
    sendAll([7, 8], 300, 0);
    await waitFor(() => delivered(7, 8) >= 300 && delivered(8, 7) >= 300, 5_000, `round ${round} messages`);
    checkAll([7, 8], 300, 0);
    await waitFor(() => [a, b].every((n) => n.listener.transport.stats().peers[0]?.connections === 1), 2_000, "one connection each");
    await sleep(100);
    for (const n of [a, b]) assert.is(n.listener.transport.stats().peers[0]?.connections, 1);
    clearGot([7, 8]);
    a.listener.transport.setPeers([]);
    b.listener.transport.setPeers([]);
    await sleep(50);
  }
  await a.close();
  await b.close();
  nodes.delete(7);
  nodes.delete(8);
});

test("a slow reader makes send return false at the queue bound instead of growing memory; nothing accepted is lost", async () => {
  const queueBytesMax = 8 * MiB;
  const highWater = 1 * MiB;
  let raw: RawPeer | undefined;
  const server = await rawServer(hostOf(10), port, (r) => {
    raw = r;
    void r.handshake(Role.acceptor, 10, 9).then(() => r.socket.pause());
  });
  const n9 = await startNode(9, { limits: { queueBytesMax, frameBytesMax: 4 * MiB, socketBytesHighWater: highWater } });
  nodes.set(9, n9);
  n9.listener.transport.setPeers([addressOf(10)]);
  await waitFor(() => n9.listener.transport.isConnected(10), 3_000, "node 9 to reach the raw reader");
  const t = n9.listener.transport;
  let accepted = 0;
  let refused = false;
  const data = new Uint8Array(64 * 1024);
  for (let turn = 0; turn < 2000 && !refused; turn++) {
    for (let i = 0; i < 16; i++) {
      if (!t.send(10, { seq: accepted, data })) {
        refused = true;
        break;
      }
      accepted++;
    }
    await sleep(1); // let the socket and the kernel take what they will
  }
  assert.ok(refused, "send returned false");
  const stats = t.stats().peers[0];
  assert.ok((stats?.queuedBytes ?? Infinity) <= queueBytesMax, `queued ${stats?.queuedBytes} <= ${queueBytesMax}`);
  // Queue + socket high water + what the kernel buffers on loopback: bounded, not proportional to the attempts.
  assert.ok(accepted * data.length < queueBytesMax + highWater + 48 * MiB, `accepted ${accepted} messages before refusing`);
  assert.ok((stats?.messagesDropped ?? 0) >= 1);
  const r = raw;
  if (r === undefined) throw new Error("the raw reader never connected");
  r.socket.resume();
  await waitFor(() => r.frames.filter((f) => f.type === FrameType.message).length >= accepted, 10_000, "the reader to catch up");
  const seqs = r.messages().map((m) => (m as Msg).seq);
  assert.equal(seqs, Array.from({ length: accepted }, (_, i) => i), "every accepted message, in order");
  r.destroy();
  await n9.close();
  nodes.delete(9);
  await closeServer(server);
});

test("close() leaves no socket, server or timer behind", async () => {
  for (const n of nodes.values()) await n.close();
  nodes.clear();
  await sleep(20);
  const left = process.getActiveResourcesInfo().filter((r) => r !== "TTYWrap" && r !== "PipeWrap");
  assert.equal(left, [], `active resources after close: ${left.join(", ")}`);
});

test.run();

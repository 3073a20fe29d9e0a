// The peer handshake state machine (docs/formats/peer-protocol.md,
// "Handshake"), two ends wired back to back without sockets, with node:crypto.

import { createHmac } from "node:crypto";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { checkCredentials, decodeHello, encodeHello, Handshake, proofInput, Role, type HandshakeStep } from "../../src/replication/auth.js";
import { FrameDecoder, FrameType } from "../../src/replication/frame.js";
import { nodePeerCrypto } from "../../src/os/peer-listener.js";

const secret = Buffer.from("0123456789abcdef0123456789abcdef");
const cluster = "c1";

function end(role: Role, nodeId: number, opts: { secret?: Buffer; clusterId?: string; accepts?: (id: number) => boolean } = {}): Handshake {
  return new Handshake({
    role,
    nodeId,
    clusterId: opts.clusterId ?? cluster,
    secret: opts.secret ?? secret,
    crypto: nodePeerCrypto,
    acceptsPeer: opts.accepts ?? (() => true),
  });
}

/** Splits whole frames into (type, body) pairs. */
function frames(bufs: Buffer[]): { type: number; body: Buffer }[] {
  const out: { type: number; body: Buffer }[] = [];
  const d = new FrameDecoder({ frame: (type, body) => void out.push({ type, body: Buffer.from(body) }), error: (r) => assert.unreachable(r) }, 256);
  for (const b of bufs) d.push(b);
  return out;
}

interface Outcome {
  dialer: HandshakeStep[];
  acceptor: HandshakeStep[];
}

/** Runs both ends until neither has anything to send. */
function run(d: Handshake, a: Handshake): Outcome {
  const out: Outcome = { dialer: [], acceptor: [] };
  let toA = d.start().send;
  let toD = a.start().send;
  for (let round = 0; round < 4 && (toA.length > 0 || toD.length > 0); round++) {
    const nextD: Buffer[] = [];
    const nextA: Buffer[] = [];
    for (const f of frames(toA)) {
      const s = a.step(f.type, f.body);
      out.acceptor.push(s);
      nextD.push(...s.send);
    }
    for (const f of frames(toD)) {
      const s = d.step(f.type, f.body);
      out.dialer.push(s);
      nextA.push(...s.send);
    }
    toA = out.dialer.some((s) => s.failure) ? [] : nextA;
    toD = out.acceptor.some((s) => s.failure) && nextD.length === 0 ? [] : nextD;
    if (out.dialer.some((s) => s.failure)) break;
  }
  return out;
}

const failure = (steps: HandshakeStep[]): string | undefined => steps.find((s) => s.failure !== undefined)?.failure;
const peer = (steps: HandshakeStep[]): number | undefined => steps.find((s) => s.peerId !== undefined)?.peerId;

test("hello layout: magic PXDP, version 1, role, u64 BE id, 32-byte nonce, u8 length, cluster id", () => {
  const nonce = Buffer.alloc(32, 0xab);
  const b = encodeHello({ role: Role.dialer, nodeId: 2 ** 32 + 5, nonce, clusterId: "c1" });
  assert.is(b.toString("hex"), "50584450" + "01" + "44" + "0000000100000005" + "ab".repeat(32) + "02" + "6331");
  assert.equal(decodeHello(b), { role: Role.dialer, nodeId: 2 ** 32 + 5, nonce: new Uint8Array(nonce), clusterId: "c1" });
  assert.match(String(decodeHello(b.subarray(0, 20))), /too short/);
  assert.match(String(decodeHello(Buffer.concat([Buffer.from("HTTP"), b.subarray(4)]))), /bad magic/);
  assert.match(String(decodeHello(Buffer.concat([b, Buffer.from("x")]))), /disagrees/);
});

test("proof input: label, role, cluster, prover id, verifier nonce, verifier id, prover nonce", () => {
  const nV = Buffer.alloc(32, 0x11);
  const nP = Buffer.alloc(32, 0x22);
  const input = proofInput(Role.acceptor, "c1", 3, nV, 1, nP);
  const want = Buffer.from("pxd-peer-auth-v1").toString("hex") + "41" + "02" + "6331" + "0000000000000003" + "11".repeat(32) + "0000000000000001" + "22".repeat(32);
  assert.is(input.toString("hex"), want);
  // And the proof is HMAC-SHA256 of exactly that, computed independently here.
  assert.is(Buffer.from(nodePeerCrypto.hmacSha256(secret, input)).toString("hex"), createHmac("sha256", secret).update(input).digest("hex"));
});

test("same secret: both ends authenticate each other; the acceptor proves only after the dialer", () => {
  const o = run(end(Role.dialer, 1, { accepts: (id) => id === 2 }), end(Role.acceptor, 2));
  assert.is(failure(o.dialer), undefined);
  assert.is(failure(o.acceptor), undefined);
  assert.is(peer(o.dialer), 1 + 1);
  assert.is(peer(o.acceptor), 1);
  // The acceptor's reply to the hello carries no proof.
  assert.equal(o.acceptor[0]?.send, []);
});

test("wrong secret: the acceptor refuses with a reason that names neither secret nor proof, the dialer learns it", () => {
  const o = run(end(Role.dialer, 1, { secret: Buffer.from("another-secret-of-32-bytes-long!") }), end(Role.acceptor, 2));
  assert.match(failure(o.acceptor) ?? "", /authentication failed for node 1/);
  assert.match(failure(o.dialer) ?? "", /refused by the peer: authentication failed/);
  assert.is(peer(o.acceptor), undefined);
  assert.is(peer(o.dialer), undefined);
  const said = Buffer.concat(o.acceptor.flatMap((s) => s.send)).toString("latin1");
  assert.not.ok(said.includes(secret.toString("latin1")));
});

test("wrong cluster id, unexpected node id, own id and same role are refused at the hello", () => {
  assert.match(failure(run(end(Role.dialer, 1, { clusterId: "other" }), end(Role.acceptor, 2)).acceptor) ?? "", /wrong cluster id "other"/);
  assert.match(failure(run(end(Role.dialer, 9), end(Role.acceptor, 2, { accepts: (id) => id !== 9 })).acceptor) ?? "", /unexpected node id 9/);
  assert.match(failure(run(end(Role.dialer, 2), end(Role.acceptor, 2)).acceptor) ?? "", /own id/);
  assert.match(failure(run(end(Role.dialer, 1, { accepts: (id) => id === 3 }), end(Role.acceptor, 2)).dialer) ?? "", /unexpected node id 2/);
  assert.match(failure(run(end(Role.acceptor, 1), end(Role.acceptor, 2)).acceptor) ?? "", /same role/);
});

test("a proof captured on one connection is refused on another (fresh nonce)", () => {
  // Record a good dialer proof on connection 1.
  const d1 = end(Role.dialer, 1);
  const a1 = end(Role.acceptor, 2);
  d1.start();
  const helloA1 = frames(a1.start().send)[0];
  const proof1 = frames(d1.step(FrameType.hello, helloA1?.body ?? Buffer.alloc(0)).send)[0];
  assert.is(proof1?.type, FrameType.proof);
  // Replay hello and proof of node 1 verbatim against a fresh acceptor.
  const a2 = end(Role.acceptor, 2);
  a2.start();
  const helloD1 = frames(end(Role.dialer, 1).start().send)[0];
  assert.equal(a2.step(FrameType.hello, helloD1?.body ?? Buffer.alloc(0)).send, []);
  const r = a2.step(FrameType.proof, proof1?.body ?? Buffer.alloc(0));
  assert.match(r.failure ?? "", /authentication failed/);
});

test("an acceptor's proof reflected back as a dialer's proof is refused (role and id order are bound)", () => {
  // Attacker M talks to node 2 twice, claiming to be node 1; it wants node 2 to answer its own challenge.
  const a = end(Role.acceptor, 2);
  const helloA = frames(a.start().send)[0];
  const fake = end(Role.dialer, 1); // M's hello (nonce known to M), no secret use
  a.step(FrameType.hello, frames(fake.start().send)[0]?.body ?? Buffer.alloc(0));
  // Whatever M sends must be HMAC(secret, 'D'|...|id1|nonceA|id2|nonceM). The only HMACs node 2
  // produces are acceptor proofs HMAC('A'|...|id2|...), so the best M can send is one of those:
  const helloFields = decodeHello(helloA?.body ?? Buffer.alloc(0));
  assert.ok(typeof helloFields !== "string");
  const reflected = nodePeerCrypto.hmacSha256(secret, proofInput(Role.acceptor, cluster, 2, Buffer.alloc(32), 1, helloFields.nonce));
  assert.match(a.step(FrameType.proof, reflected).failure ?? "", /authentication failed/);
});

test("frames out of order or after a failure are refused", () => {
  const a = end(Role.acceptor, 2);
  a.start();
  assert.match(a.step(FrameType.proof, Buffer.alloc(32)).failure ?? "", /unexpected proof frame/);
  const b = end(Role.acceptor, 2);
  b.start();
  assert.match(b.step(FrameType.message, Buffer.alloc(1)).failure ?? "", /unexpected message frame before authentication/);
  const c = end(Role.acceptor, 2);
  c.start();
  c.step(FrameType.hello, frames(end(Role.dialer, 1).start().send)[0]?.body ?? Buffer.alloc(0));
  assert.match(c.step(FrameType.proof, Buffer.alloc(31)).failure ?? "", /authentication failed/);
});

test("credentials: short secrets and bad cluster ids are refused with advice", () => {
  assert.throws(() => checkCredentials(Buffer.alloc(8), "c"), /at least 16 random bytes/);
  assert.throws(() => checkCredentials(secret, ""), /cluster id/);
  assert.throws(() => checkCredentials(secret, "x".repeat(65)), /cluster id/);
  checkCredentials(secret, "c1");
});

test.run();

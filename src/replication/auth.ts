// The peer handshake (docs/formats/peer-protocol.md, "Handshake"): mutual
// challenge-response over a shared cluster secret. Pure: HMAC and randomness
// come in through PeerCrypto, frames go out as return values.
//
//   dialer D                                   acceptor A
//   HELLO(role D, idD, nonceD, cluster) --->   <--- HELLO(role A, idA, nonceA, cluster)
//   PROOF(D) = HMAC(secret, label|'D'|cluster|idD|nonceA|idA|nonceD) --->
//                                              checks it, then
//                                         <--- PROOF(A) = HMAC(secret, label|'A'|cluster|idA|nonceD|idD|nonceA)
//
// Each proof binds both nonces (a proof captured on another connection is
// useless: the verifier's nonce is fresh), both ids and the prover's role
// (a proof cannot be reflected back to its sender, nor relayed from an
// accepted connection into a dialed one). The acceptor proves only after the
// dialer has, so a stranger who connects learns no HMAC output to guess the
// secret from offline.

import { assert } from "../base/assert.js";
import { peerClusterIdBytesMax, peerSecretBytesMin } from "../constants.js";
import type { NodeId } from "../raft/types.js";
import { encodeFrame, FrameType, frameTypeName } from "./frame.js";
import type { PeerCrypto } from "./ports.js";

export const helloMagic = Buffer.from("PXDP", "ascii");
export const protocolVersion = 1;
export const nonceBytes = 32;
export const proofBytes = 32;
/** Bytes of a refusal's reason; well inside peerHandshakeFrameBytesMax. */
export const refuseReasonBytesMax = 200;
/** Domain separation: these HMAC outputs mean nothing in any other protocol that shares the key. */
export const proofLabel = Buffer.from("pxd-peer-auth-v1", "ascii");

export const Role = { dialer: 0x44 /* 'D' */, acceptor: 0x41 /* 'A' */ } as const;
export type Role = (typeof Role)[keyof typeof Role];

export interface Hello {
  role: Role;
  nodeId: NodeId;
  nonce: Uint8Array;
  clusterId: string;
}

const helloFixedBytes = 4 + 1 + 1 + 8 + nonceBytes + 1;

export function encodeHello(h: Hello): Buffer {
  const cluster = Buffer.from(h.clusterId, "utf8");
  assert(cluster.length <= peerClusterIdBytesMax, "cluster id length checked by the transport");
  assert(h.nonce.length === nonceBytes, "nonce is 32 bytes");
  const b = Buffer.alloc(helloFixedBytes + cluster.length);
  helloMagic.copy(b, 0);
  b.writeUInt8(protocolVersion, 4);
  b.writeUInt8(h.role, 5);
  writeNodeId(b, 6, h.nodeId);
  b.set(h.nonce, 14);
  b.writeUInt8(cluster.length, 14 + nonceBytes);
  cluster.copy(b, helloFixedBytes);
  return b;
}

/** Parses a hello body; a string is the reason it is malformed. */
export function decodeHello(body: Uint8Array): Hello | string {
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (b.length < helloFixedBytes) return `hello of ${b.length} bytes is too short`;
  if (!b.subarray(0, 4).equals(helloMagic)) return "hello has a bad magic (not a pxd peer)";
  const version = b.readUInt8(4);
  if (version !== protocolVersion) return `peer speaks protocol version ${version}, this node ${protocolVersion}`;
  const role = b.readUInt8(5);
  if (role !== Role.dialer && role !== Role.acceptor) return `hello has an unknown role 0x${role.toString(16)}`;
  const hi = b.readUInt32BE(6);
  const nodeId = hi * 2 ** 32 + b.readUInt32BE(10);
  if (!Number.isSafeInteger(nodeId) || nodeId <= 0) return `hello has an invalid node id`;
  const clusterLen = b.readUInt8(14 + nonceBytes);
  if (b.length !== helloFixedBytes + clusterLen) return `hello length ${b.length} disagrees with its cluster id length ${clusterLen}`;
  const nonce = new Uint8Array(b.subarray(14, 14 + nonceBytes)); // a copy: the frame buffer may be reused
  const clusterId = b.subarray(helloFixedBytes).toString("utf8");
  return { role, nodeId, nonce, clusterId };
}

function writeNodeId(b: Buffer, at: number, id: NodeId): void {
  assert(Number.isSafeInteger(id) && id > 0, `node id ${id} is a positive safe integer`);
  b.writeUInt32BE(Math.floor(id / 2 ** 32), at);
  b.writeUInt32BE(id >>> 0, at + 4);
}

/** The exact bytes the prover MACs; docs/formats/peer-protocol.md lists them. */
export function proofInput(prover: Role, clusterId: string, proverId: NodeId, verifierNonce: Uint8Array, verifierId: NodeId, proverNonce: Uint8Array): Buffer {
  const cluster = Buffer.from(clusterId, "utf8");
  const b = Buffer.alloc(proofLabel.length + 1 + 1 + cluster.length + 8 + nonceBytes + 8 + nonceBytes);
  let at = proofLabel.copy(b, 0);
  b.writeUInt8(prover, at++);
  b.writeUInt8(cluster.length, at++);
  at += cluster.copy(b, at);
  writeNodeId(b, at, proverId);
  b.set(verifierNonce, (at += 8));
  writeNodeId(b, (at += nonceBytes), verifierId);
  b.set(proverNonce, (at += 8));
  assert(at + nonceBytes === b.length, "proof input is fully written");
  return b;
}

/** Checks a secret and cluster id before a transport uses them. */
export function checkCredentials(secret: Uint8Array, clusterId: string): void {
  if (secret.length < peerSecretBytesMin) throw new Error(`the cluster secret has ${secret.length} bytes; use at least ${peerSecretBytesMin} random bytes`);
  const n = Buffer.byteLength(clusterId, "utf8");
  if (n === 0 || n > peerClusterIdBytesMax) throw new Error(`the cluster id must be 1 to ${peerClusterIdBytesMax} bytes of UTF-8, not ${n}`);
}

export interface HandshakeConfig {
  role: Role;
  nodeId: NodeId;
  clusterId: string;
  secret: Uint8Array;
  crypto: PeerCrypto;
  /** The dialer knows whom it dialed; the acceptor accepts any id this returns true for. */
  acceptsPeer(id: NodeId): boolean;
}

/** What to do after a handshake step. */
export interface HandshakeStep {
  /** Whole frames to write, in order. */
  send: Buffer[];
  /** Set once this side is satisfied: the authenticated peer. */
  peerId?: NodeId;
  /** Set when the handshake failed; send holds a refusal, then close. Never names the secret or a proof. */
  failure?: string;
}

export class Handshake {
  private readonly nonce: Uint8Array;
  private peer: Hello | undefined;
  private done = false;

  constructor(private readonly cfg: HandshakeConfig) {
    this.nonce = cfg.crypto.randomBytes(nonceBytes);
    assert(this.nonce.length === nonceBytes, "crypto returns the asked number of bytes");
  }

  /** The hello both sides send at once on connect. */
  start(): HandshakeStep {
    const hello = encodeHello({ role: this.cfg.role, nodeId: this.cfg.nodeId, nonce: this.nonce, clusterId: this.cfg.clusterId });
    return { send: [encodeFrame(FrameType.hello, hello)] };
  }

  /** One handshake frame from the peer. */
  step(type: number, body: Uint8Array): HandshakeStep {
    assert(!this.done, "no handshake frames after the handshake");
    if (type === FrameType.refuse) return { send: [], failure: `refused by the peer: ${safeReason(body)}` };
    if (type === FrameType.hello && this.peer === undefined) return this.onHello(body);
    if (type === FrameType.proof && this.peer !== undefined) return this.onProof(body);
    return refuse(`unexpected ${frameTypeName(type)} frame before authentication`);
  }

  private onHello(body: Uint8Array): HandshakeStep {
    const h = decodeHello(body);
    if (typeof h === "string") return refuse(h);
    const problem = this.checkHello(h);
    if (problem !== undefined) return refuse(problem);
    this.peer = h;
    // The dialer proves first; the acceptor answers only a valid proof.
    if (this.cfg.role === Role.dialer) return { send: [encodeFrame(FrameType.proof, this.ownProof(h))] };
    return { send: [] };
  }

  private checkHello(h: Hello): string | undefined {
    const expectedRole = this.cfg.role === Role.dialer ? Role.acceptor : Role.dialer;
    if (h.role !== expectedRole) return "both ends claim the same role (connected to itself?)";
    if (h.clusterId !== this.cfg.clusterId) return `wrong cluster id "${printable(h.clusterId)}"`;
    if (h.nodeId === this.cfg.nodeId) return `peer claims this node's own id ${h.nodeId}`;
    if (!this.cfg.acceptsPeer(h.nodeId)) return `unexpected node id ${h.nodeId}`;
    return undefined;
  }

  private onProof(body: Uint8Array): HandshakeStep {
    const peer = this.peer;
    assert(peer !== undefined, "a proof is read only after the hello");
    if (!this.proofValid(peer, body)) return refuse(`authentication failed for node ${peer.nodeId} (wrong cluster secret?)`);
    this.done = true;
    const send = this.cfg.role === Role.acceptor ? [encodeFrame(FrameType.proof, this.ownProof(peer))] : [];
    return { send, peerId: peer.nodeId };
  }

  private ownProof(peer: Hello): Uint8Array {
    const c = this.cfg;
    return c.crypto.hmacSha256(c.secret, proofInput(c.role, c.clusterId, c.nodeId, peer.nonce, peer.nodeId, this.nonce));
  }

  private proofValid(peer: Hello, body: Uint8Array): boolean {
    const c = this.cfg;
    const expected = c.crypto.hmacSha256(c.secret, proofInput(peer.role, c.clusterId, peer.nodeId, this.nonce, c.nodeId, peer.nonce));
    // Lengths are public; the comparison of the bytes is constant-time.
    return body.length === proofBytes && c.crypto.timingSafeEqual(body, expected);
  }
}

function refuse(reason: string): HandshakeStep {
  // A refusal must fit the handshake frame bound of the other side.
  const text = Buffer.from(reason, "utf8").subarray(0, refuseReasonBytesMax);
  return { send: [encodeFrame(FrameType.refuse, text)], failure: reason };
}

/** A peer-supplied reason, made safe for one log line. */
function safeReason(body: Uint8Array): string {
  return printable(Buffer.from(body.buffer, body.byteOffset, Math.min(body.byteLength, refuseReasonBytesMax)).toString("utf8"));
}

function printable(s: string): string {
  return s.replace(/[^\x20-\x7e]/g, "?");
}

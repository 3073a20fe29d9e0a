// An encrypted volume's data as the leader proposes it and as reads return
// it (docs/architecture.md, "Encryption at rest"). The volume is cut into
// 4 KiB data units, each encrypted on its own (AES-256-XTS, the unit's
// index as the tweak; the primitive comes from src/os/xts-cipher.ts), so
// ciphertext is exactly as long as the data and a unit is written and read
// whole: writes that cover part of a unit are merged with it on the leader
// (VolumeReplica's read-modify-write), trims deallocate whole units only.
//
// A hole reads as zeroes from the store. A unit whose bytes are all zero is
// therefore a hole, not ciphertext, and reads as zeroes: an encryption that
// came out as 4096 zero bytes has odds of 2^-32768.

import { assert } from "../base/assert.js";

/** The data unit: what one XTS tweak covers, the volume's write granularity. */
export const cipherUnitBytes = 4096;

/** The block cipher of one volume, one data unit at a time (its index is the tweak). */
export interface UnitCipher {
  encrypt(unit: number, data: Uint8Array): Uint8Array;
  decrypt(unit: number, data: Uint8Array): Uint8Array;
}

/**
 * How an encrypted volume's requests are served where this node has no key
 * (no cluster key, or one that does not open the volume's): the reason,
 * for the client's error and the log.
 */
export interface MissingKey {
  missing: string;
}

export class VolumeCipher {
  constructor(private readonly units: UnitCipher) {}

  /** The ciphertext of whole units at `offsetBytes` (a new buffer; `data` is left as it is). */
  encrypt(offsetBytes: number, data: readonly Uint8Array[], lengthBytes: number): Buffer {
    assert(offsetBytes % cipherUnitBytes === 0 && lengthBytes % cipherUnitBytes === 0, () => `an encrypted write is whole ${cipherUnitBytes}-byte units, not [${offsetBytes}, +${lengthBytes})`);
    const plain = data.length === 1 ? data[0]! : Buffer.concat(data as Uint8Array[], lengthBytes);
    assert(plain.length === lengthBytes, "write payload matches its length");
    const out = Buffer.allocUnsafe(lengthBytes);
    const first = offsetBytes / cipherUnitBytes;
    for (let at = 0; at < lengthBytes; at += cipherUnitBytes) {
      const c = this.units.encrypt(first + at / cipherUnitBytes, plain.subarray(at, at + cipherUnitBytes));
      assert(c.length === cipherUnitBytes, "XTS keeps a unit's length");
      out.set(c, at);
    }
    return out;
  }

  /** Decrypts whole units in place; an all-zero unit is a hole and stays zeroes. Returns `data`. */
  decryptInPlace(offsetBytes: number, data: Buffer): Buffer {
    assert(offsetBytes % cipherUnitBytes === 0 && data.length % cipherUnitBytes === 0, () => `an encrypted read is whole ${cipherUnitBytes}-byte units, not [${offsetBytes}, +${data.length})`);
    const first = offsetBytes / cipherUnitBytes;
    for (let at = 0; at < data.length; at += cipherUnitBytes) {
      const unit = data.subarray(at, at + cipherUnitBytes);
      if (isZero(unit)) continue;
      unit.set(this.units.decrypt(first + at / cipherUnitBytes, unit));
    }
    return data;
  }
}

const zeroUnit = Buffer.alloc(cipherUnitBytes);
function isZero(unit: Buffer): boolean {
  return unit.equals(zeroUnit);
}

/** The whole units that cover [offset, offset + length). */
export function coveringUnits(offsetBytes: number, lengthBytes: number): { from: number; to: number } {
  return { from: Math.floor(offsetBytes / cipherUnitBytes) * cipherUnitBytes, to: Math.ceil((offsetBytes + lengthBytes) / cipherUnitBytes) * cipherUnitBytes };
}

/**
 * A plaintext read of [offset, +length) from a store read of the covering
 * units, decrypted. Served synchronously, the answer is in `into` when given
 * (the caller's pooled buffer); served later (a repair), it is a buffer of
 * its own, never `into`, which the caller has taken back by then.
 */
export function decryptedRead(
  cipher: VolumeCipher,
  offsetBytes: number,
  lengthBytes: number,
  into: Buffer | undefined,
  readRaw: (offsetBytes: number, lengthBytes: number, into?: Buffer) => Buffer | Promise<Buffer>,
): Buffer | Promise<Buffer> {
  const { from, to } = coveringUnits(offsetBytes, lengthBytes);
  const aligned = from === offsetBytes && to === offsetBytes + lengthBytes;
  const plain = (raw: Buffer): Buffer => cipher.decryptInPlace(from, raw).subarray(offsetBytes - from, offsetBytes - from + lengthBytes);
  const r = aligned ? readRaw(from, to - from, into) : readRaw(from, to - from);
  if (r instanceof Promise) {
    return r.then((raw) => {
      const part = plain(raw);
      return aligned ? raw : part; // aligned, `part` is all of `raw`: `into` itself when the read resolved to it
    });
  }
  const part = plain(r);
  if (aligned) return r; // decrypted in place: `into` when given
  if (into === undefined) return part;
  assert(into.length === lengthBytes, "a read's buffer is as long as the read");
  into.set(part);
  return into;
}

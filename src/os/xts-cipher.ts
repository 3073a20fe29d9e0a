// AES-256-XTS over 4 KiB data units (IEEE 1619, as dm-crypt's aes-xts-plain64):
// the tweak is the unit's index as a 16-byte little-endian number, so the same
// plaintext at two places encrypts differently, and a unit's ciphertext is as
// long as its plaintext (docs/architecture.md, "Encryption at rest").

import { createCipheriv, createDecipheriv } from "node:crypto";
import { cipherUnitBytes, VolumeCipher, type UnitCipher } from "../replication/volume-cipher.js";

/** XTS takes two AES-256 keys: 64 bytes. */
export const xtsKeyBytes = 64;
export const xtsCipherName = "aes-256-xts";

export function xtsVolumeCipher(key: Uint8Array): VolumeCipher {
  if (key.length !== xtsKeyBytes) throw new Error(`an ${xtsCipherName} key is ${xtsKeyBytes} bytes, not ${key.length}`);
  const k = Buffer.from(key);
  const tweak = Buffer.alloc(16);
  const tweakOf = (unit: number): Buffer => {
    tweak.fill(0);
    tweak.writeUIntLE(unit, 0, 6); // a volume has fewer than 2^48 units
    return tweak;
  };
  const units: UnitCipher = {
    encrypt: (unit, data) => oneUnit(createCipheriv(xtsCipherName, k, tweakOf(unit)), data),
    decrypt: (unit, data) => oneUnit(createDecipheriv(xtsCipherName, k, tweakOf(unit)), data),
  };
  return new VolumeCipher(units);
}

function oneUnit(c: { update(d: Uint8Array): Buffer; final(): Buffer }, data: Uint8Array): Buffer {
  if (data.length !== cipherUnitBytes) throw new Error(`an XTS data unit here is ${cipherUnitBytes} bytes, not ${data.length}`);
  const out = c.update(data);
  c.final();
  return out;
}

// Damage on disk for the checksum tests: one bit flipped inside data the
// test wrote, found by its bytes in a store file.

import { closeSync, openSync, readFileSync, readSync, writeSync } from "node:fs";
import * as assert from "uvu/assert";

/** Flips one bit of the first copy of `needle` in a file, `into` bytes into it. */
export function flipInFile(file: string, needle: Buffer, into: number): void {
  const whole = readFileSync(file);
  const at = whole.indexOf(needle);
  assert.ok(at >= 0, `the data is in ${file}`);
  const fd = openSync(file, "r+");
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at + into);
  b[0] = b[0]! ^ 0x10;
  writeSync(fd, b, 0, 1, at + into);
  closeSync(fd);
}

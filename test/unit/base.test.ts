import { test } from "uvu";
import * as assert from "uvu/assert";
import { crc32c, crc32cJs, crc32cOf, crc32cImplementation } from "../../src/base/crc32c.js";
import { parseSize, formatSize } from "../../src/base/sizes.js";
import { Prng } from "../../src/base/prng.js";
import { BufferPool } from "../../src/base/buffer-pool.js";
import { printable } from "../../src/base/printable.js";
import { checkConstants } from "../../src/constants.js";

test("crc32c matches the standard check value and chains over buffers", () => {
  assert.is(crc32c(Buffer.from("123456789")), 0xe3069283);
  const whole = Buffer.from("hello, block storage world");
  assert.is(crc32cOf([whole.subarray(0, 5), whole.subarray(5, 13), whole.subarray(13)]), crc32c(whole));
  assert.is(crc32c(Buffer.alloc(0)), 0);
});

test("the native crc32c is in use here and agrees with the portable one", () => {
  assert.is(crc32cImplementation, "native");
  const prng = new Prng(7);
  for (const n of [0, 1, 7, 8, 9, 63, 64, 4096, 65537]) {
    const b = Buffer.alloc(n);
    prng.fill(b);
    assert.is(crc32c(b), crc32cJs(b), `length ${n}`);
    assert.is(crc32c(b, 0x12345678), crc32cJs(b, 0x12345678), `length ${n}, chained`);
  }
});

test("sizes parse with K/M/G/T suffixes and reject junk", () => {
  assert.is(parseSize("1G"), 1024 ** 3);
  assert.is(parseSize("512M"), 512 * 1024 ** 2);
  assert.is(parseSize("4096"), 4096);
  assert.is(parseSize("1.5k"), 1536);
  assert.is(parseSize("2GiB"), 2 * 1024 ** 3);
  assert.throws(() => parseSize("ten gigs"), /not a size/);
  assert.throws(() => parseSize("-1G"), /not a size/);
  assert.is(formatSize(1024 ** 3), "1.00 GiB");
});

test("printable escapes every control and invisible character, caps the length, and is idempotent", () => {
  assert.is(printable("\x1b[31m\nforged", 100), "\\x1b[31m\\x0aforged");
  assert.is(printable("tab\there\r\0\x7f\x85", 100), "tab\\x09here\\x0d\\x00\\x7f\\x85");
  assert.is(printable("a\u202eb\u200bc\u2028d\ud800e", 100), "a\\u{202e}b\\u{200b}c\\u{2028}d\\u{d800}e");
  assert.is(printable("plain ümlaut 日本 🙂 C:\\path", 100), "plain ümlaut 日本 🙂 C:\\path");
  assert.is(printable("x".repeat(300), 256), `${"x".repeat(256)}… (44 more characters)`);
  const once = printable("\x1b]0;title\x07\u{e000}", 100);
  assert.is(printable(once, 100), once);
  assert.not.match(once, /[\x00-\x1f\x7f-\x9f]/);
});

test("prng replays from a seed", () => {
  const a = new Prng(42);
  const b = new Prng(42);
  for (let i = 0; i < 100; i++) assert.is(a.nextU32(), b.nextU32());
  assert.is.not(new Prng(1).nextU32(), new Prng(2).nextU32());
});

test("constants agree with each other", () => {
  checkConstants();
});

test("buffer pool recycles large buffers by size class and stays within its bound", () => {
  const pool = new BufferPool(64 * 1024, 1024 * 1024, 2 * 1024 * 1024);
  const a = pool.take(1000 * 1000);
  assert.is(a.length, 1000 * 1000);
  assert.is(a.buffer.byteLength, 1024 * 1024);
  pool.give(a);
  const b = pool.take(600 * 1024);
  assert.is(b.buffer, a.buffer, "the same memory comes back");
  assert.is(pool.reused, 1);
  const small = pool.take(100);
  assert.is(small.length, 100);
  pool.give(small); // not from the pool: ignored
  const c = pool.take(1024 * 1024);
  const d = pool.take(1024 * 1024);
  const e = pool.take(1024 * 1024);
  pool.give(b);
  pool.give(c);
  pool.give(d); // over the 2 MiB bound: dropped
  pool.give(e);
  const f = pool.take(1024 * 1024);
  const g = pool.take(1024 * 1024);
  const h = pool.take(1024 * 1024);
  assert.is(pool.reused, 3, "only two buffers were kept");
  assert.ok(f.buffer !== g.buffer && g.buffer !== h.buffer);
});

test.run();

import { test } from "uvu";
import * as assert from "uvu/assert";
import { crc32c, crc32cOf } from "../../src/base/crc32c.js";
import { parseSize, formatSize } from "../../src/base/sizes.js";
import { Prng } from "../../src/base/prng.js";
import { checkConstants } from "../../src/constants.js";

test("crc32c matches the standard check value and chains over buffers", () => {
  assert.is(crc32c(Buffer.from("123456789")), 0xe3069283);
  const whole = Buffer.from("hello, block storage world");
  assert.is(crc32cOf([whole.subarray(0, 5), whole.subarray(5, 13), whole.subarray(13)]), crc32c(whole));
  assert.is(crc32c(Buffer.alloc(0)), 0);
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

test("prng replays from a seed", () => {
  const a = new Prng(42);
  const b = new Prng(42);
  for (let i = 0; i < 100; i++) assert.is(a.nextU32(), b.nextU32());
  assert.is.not(new Prng(1).nextU32(), new Prng(2).nextU32());
});

test("constants agree with each other", () => {
  checkConstants();
});

test.run();

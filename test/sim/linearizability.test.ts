// The register checker the simulator runs over its clients' history: it
// accepts what a linearizable register may do and refuses what it may not.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { Prng } from "../../src/base/prng.js";
import { checkRegister, checkRegisterBySearch, checkRegisters, RegisterHistory } from "./linearizability.js";

const stepsMax = 1_000_000;

/** A history from a script: "w a" / "r a" invoke, "ok N" completes the Nth op invoked (reads with the value they got). */
function history(script: string[]): RegisterHistory {
  const h = new RegisterHistory();
  const ids: number[] = [];
  for (const line of script) {
    const [verb, arg, got] = line.split(" ");
    if (verb === "w") ids.push(h.invoke("write", 0, arg ?? "", line));
    else if (verb === "r") ids.push(h.invoke("read", 0, "", line));
    else if (verb === "ok") h.complete(ids[Number(arg)] as number, got);
    else if (verb === "fail") h.fail(ids[Number(arg)] as number);
  }
  return h;
}

/** Both checkers, which must agree. */
function ok(script: string[]): boolean {
  const ops = history(script).ops();
  const zones = checkRegister(ops, "").ok;
  assert.is(checkRegisterBySearch(ops, "", stepsMax).ok, zones, `the checkers disagree on ${script.join(", ")}`);
  return zones;
}

test("a read after a completed write returns it; one returning the value before is stale", () => {
  assert.ok(ok(["w a", "ok 0", "r", "ok 1 a"]));
  assert.not.ok(ok(["w a", "ok 0", "w b", "ok 1", "r", "ok 2 a"]));
  assert.not.ok(ok(["w a", "ok 0", "r", "ok 1 "]), "the initial value after a write completed");
});

test("a read concurrent with a write returns the old value or the new one", () => {
  assert.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 a", "ok 1"]));
  assert.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 b", "ok 1"]));
  assert.not.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 c", "ok 1"]), "a value nobody wrote");
});

test("once a read returned a new value, a later read does not return the older one", () => {
  assert.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 b", "r", "ok 3 b", "ok 1"]));
  assert.not.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 b", "r", "ok 3 a", "ok 1"]));
});

test("a write whose outcome the client never saw may take effect (a later read sees it) or not", () => {
  assert.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 b"]), "it took effect");
  assert.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 a", "r", "ok 3 b"]), "it took effect late");
  assert.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 a"]), "it never took effect");
  assert.not.ok(ok(["w a", "ok 0", "w b", "r", "ok 2 b", "r", "ok 3 a"]), "but not undone");
});

test("a write that certainly failed leaves the history; a read nobody answered has no effect", () => {
  assert.not.ok(ok(["w a", "ok 0", "w b", "fail 1", "r", "ok 2 b"]), "a failed write's value cannot be read");
  assert.ok(ok(["w a", "ok 0", "r", "w b", "ok 2", "r", "ok 3 b"]));
});

test("keys are checked one by one: a stale read on one key fails the whole history", () => {
  const h = new RegisterHistory();
  const w1 = h.invoke("write", 1, "x", "");
  h.complete(w1);
  const w2 = h.invoke("write", 2, "y", "");
  h.complete(w2);
  const r = h.invoke("read", 2, "", "");
  h.complete(r, "");
  const result = checkRegisters(h.ops(), "");
  assert.ok(!result.ok && result.why.startsWith("key 2:"), JSON.stringify(result));
});

test("many concurrent writes with few reads: the zone check is not thrown by overlap", () => {
  const h = new RegisterHistory();
  const open: number[] = [];
  for (let i = 0; i < 200; i++) {
    open.push(h.invoke("write", 0, `v${i}`, ""));
    if (open.length > 6) h.complete(open.shift() as number);
    if (i % 10 === 9) {
      const r = h.invoke("read", 0, "", "");
      h.complete(r, `v${i - 6}`);
    }
  }
  const result = checkRegister(h.ops(), "");
  assert.ok(result.ok, JSON.stringify(result));
});

test("the zone check agrees with the general search on 20,000 random small histories", () => {
  const rng = new Prng(7);
  let linearizable = 0;
  for (let round = 0; round < 20_000; round++) {
    // A register driven by 1 to 4 clients, each with one operation at a time; some never see their last one complete.
    const h = new RegisterHistory();
    const clients = 1 + rng.int(4);
    const busy: ({ id: number; kind: "write" | "read" } | null)[] = new Array(clients).fill(null);
    const written: string[] = [""];
    let values = 0;
    for (let step = 0; step < 12; step++) {
      const c = rng.int(clients);
      const op = busy[c];
      if (op === null || op === undefined) {
        if (rng.chance(0.5)) {
          const v = `v${++values}`;
          written.push(v);
          busy[c] = { id: h.invoke("write", 0, v, ""), kind: "write" };
        } else busy[c] = { id: h.invoke("read", 0, "", ""), kind: "read" };
      } else {
        // A read returns some value written so far (often the newest): linearizable or not, both checkers judge it.
        const value = rng.chance(0.6) ? (written[written.length - 1] as string) : (written[rng.int(written.length)] as string);
        h.complete(op.id, op.kind === "read" ? value : undefined);
        busy[c] = null;
      }
    }
    const zones = checkRegister(h.ops(), "");
    const search = checkRegisterBySearch(h.ops(), "", stepsMax);
    if (zones.ok !== search.ok) assert.unreachable(`round ${round}: zones ${JSON.stringify(zones)}, search ${JSON.stringify(search)}\n${JSON.stringify(h.ops())}`);
    if (zones.ok) linearizable++;
  }
  // Both kinds occur, or the comparison shows little.
  assert.ok(linearizable > 4000 && linearizable < 16_000, `${linearizable} of 20000 linearizable`);
});

test.run();

// Linearizability of registers (Herlihy & Wing 1990), checked over what clients
// saw: each operation's invocation and completion, in one sequence of events.
//
// Every value is written once, so each read names the write it saw, and the
// check is Gibbons & Korach's (1997), in the zone form of Golab, Li & Shah
// ("Analyzing consistency properties for fun and profit", PODC 2011): the
// cluster of a value is its write and the reads that returned it; its zone runs
// from the first completion in the cluster (f) to the last invocation (s). If
// f < s the zone is "forward": the value must be the register's from f to s,
// so nothing else can be linearized there; otherwise "backward". A history
// (where no read returns a value written after it completed) is linearizable
// iff no two forward zones overlap and no backward zone lies inside a forward
// one. That is O(n^2) in the values of one register, whatever the concurrency.
//
// checkRegisterBySearch is the general search (Wing & Gong with Lowe's
// memoization of (operations taken, value), as in Porcupine), exponential
// when many writes overlap; the unit tests check that both agree.
//
// An operation the client never saw complete (its node crashed, the outcome was
// lost) completes "at infinity": a write may take effect at any point after its
// invocation, or never (an unseen write nobody read is dropped: taking it at the
// end changes nothing); a read with no answer has no effect and is dropped.

export type RegisterOpKind = "write" | "read";

export interface RegisterOp {
  id: number;
  kind: RegisterOpKind;
  key: number;
  /** write: the value written (unique within a history); read: the value returned. */
  value: string;
  /** Event numbers of the invocation and of the completion the client saw (Infinity: none). */
  call: number;
  ret: number;
  /** Where it ran (node, index, term), for a failure report. */
  where: string;
}

/** A client-visible history: operations as they are invoked and as their outcomes become known. */
export class RegisterHistory {
  private events = 0;
  private nextId = 1;
  private readonly open = new Map<number, RegisterOp>();
  private readonly done: RegisterOp[] = [];

  invoke(kind: RegisterOpKind, key: number, value: string, where: string): number {
    const op: RegisterOp = { id: this.nextId++, kind, key, value, call: ++this.events, ret: Infinity, where };
    this.open.set(op.id, op);
    return op.id;
  }

  /** The client saw the operation complete; a read says what it returned. */
  complete(id: number, readValue?: string): void {
    const op = this.open.get(id);
    if (op === undefined) throw new Error(`operation ${id} completes twice or was never invoked`);
    this.open.delete(id);
    op.ret = ++this.events;
    if (op.kind === "read") {
      if (readValue === undefined) throw new Error(`read ${id} completes without a value`);
      op.value = readValue;
    }
    this.done.push(op);
  }

  /** The operation certainly had no effect (a write whose log entry was replaced, a read refused): it leaves the history. */
  fail(id: number): void {
    this.open.delete(id);
  }

  /** Completed operations and those still open (completion at infinity). */
  ops(): RegisterOp[] {
    return [...this.done, ...this.open.values()];
  }
}

export type CheckResult = { ok: true; ops: number } | { ok: false; why: string };

/** Checks every key's history on its own (linearizability is compositional, Herlihy & Wing §3.3). */
export function checkRegisters(ops: readonly RegisterOp[], initial: string): CheckResult {
  const keys = new Map<number, RegisterOp[]>();
  for (const op of ops) {
    let list = keys.get(op.key);
    if (list === undefined) keys.set(op.key, (list = []));
    list.push(op);
  }
  let checked = 0;
  for (const [key, list] of [...keys].sort((a, b) => a[0] - b[0])) {
    const r = checkRegister(list, initial);
    if (!r.ok) return { ok: false, why: `key ${key}: ${r.why}` };
    checked += r.ops;
  }
  return { ok: true, ops: checked };
}

interface Event {
  op: RegisterOp;
  /** The invocation event points at its completion; a completion has null. */
  match: Event | null;
  /** The operation's index among those searched (its bit in the linearized set). */
  bit: number;
  prev: Event | null;
  next: Event | null;
}

/** The operations that matter (see the header), or why the history is refused before any ordering is tried. */
function relevant(all: readonly RegisterOp[], initial: string): { ops: RegisterOp[]; written: Map<string, RegisterOp> } | string {
  const readValues = new Set<string>();
  for (const op of all) if (op.kind === "read" && op.ret !== Infinity) readValues.add(op.value);
  const ops = all.filter((op) => (op.kind === "read" ? op.ret !== Infinity : op.ret !== Infinity || readValues.has(op.value)));
  const written = new Map<string, RegisterOp>();
  for (const op of ops) {
    if (op.kind !== "write") continue;
    if (written.has(op.value) || op.value === initial) return `value ${op.value} is written twice`;
    written.set(op.value, op);
  }
  for (const op of ops) {
    if (op.kind === "read" && op.value !== initial && !written.has(op.value)) return `read ${show(op)} returned ${op.value}, which no client wrote`;
  }
  return { ops, written };
}

interface Zone {
  value: string;
  /** The first completion and the last invocation in the value's cluster. */
  f: number;
  s: number;
}

/** One register's history (values written once each): linearizable, or why not. */
export function checkRegister(all: readonly RegisterOp[], initial: string): CheckResult {
  const r = relevant(all, initial);
  if (typeof r === "string") return { ok: false, why: r };
  const zones = new Map<string, Zone>();
  // The initial value is written before every event (event numbers start at 1).
  zones.set(initial, { value: initial, f: 0, s: 0 });
  for (const op of r.ops) {
    if (op.kind === "read") {
      const w = r.written.get(op.value);
      if (w !== undefined && op.ret < w.call) return { ok: false, why: `read ${show(op)} completed before the write of ${op.value} began (${show(w)})` };
    }
    const z = zones.get(op.value);
    if (z === undefined) zones.set(op.value, { value: op.value, f: op.ret, s: op.call });
    else {
      z.f = Math.min(z.f, op.ret);
      z.s = Math.max(z.s, op.call);
    }
  }
  const list = [...zones.values()];
  const forward = list.filter((z) => z.f < z.s);
  for (const a of forward) {
    for (const b of list) {
      // b overlaps a forward zone a (for a backward b: lies inside it). Two backward zones never conflict.
      if (b === a || !(a.f < b.s && b.f < a.s)) continue;
      const what = b.f < b.s ? `overlaps the span where ${show1(a.value)} must be the value` : `lies inside the span where ${show1(a.value)} must be the value`;
      return {
        ok: false,
        why: `${show1(b.value)} (its write and reads span events ${fmt(b.s)}..${fmt(b.f)}) ${what}: ` +
          `an operation on ${show1(a.value)} completed at event ${fmt(a.f)} and a read invoked at event ${fmt(a.s)} still returned it\n` +
          `    ${a.value}: ${r.ops.filter((o) => o.value === a.value).map(show).join("; ")}\n` +
          `    ${b.value}: ${r.ops.filter((o) => o.value === b.value).map(show).join("; ")}`,
      };
    }
  }
  return { ok: true, ops: r.ops.length };
}

/** The general search (Wing & Gong, Lowe's memoization); exponential in overlapping writes. */
export function checkRegisterBySearch(all: readonly RegisterOp[], initial: string, stepsMax: number): CheckResult {
  const r = relevant(all, initial);
  if (typeof r === "string") return { ok: false, why: r };
  const ops = r.ops;
  const head = linkEvents(ops);
  const words = Math.ceil(ops.length / 32);
  const linearized = new Uint32Array(words);
  const seen = new Set<string>();
  const stack: { call: Event; value: string }[] = [];
  let value = initial;
  let entry = head.next;
  let steps = 0;
  let deepest = 0;
  let stuckAt: RegisterOp | null = null;
  while (head.next !== null) {
    if (++steps > stepsMax) return { ok: false, why: `the search gave up after ${stepsMax} steps over ${ops.length} operations` };
    const e = entry as Event;
    if (e.match !== null) {
      const op = e.op;
      const after = op.kind === "write" ? op.value : value;
      if (op.kind === "write" || op.value === value) {
        linearized[e.bit >>> 5]! |= 1 << (e.bit & 31);
        const key = `${linearized.join(",")}|${after}`;
        if (!seen.has(key)) {
          seen.add(key);
          stack.push({ call: e, value });
          value = after;
          lift(e);
          if (stack.length > deepest) deepest = stack.length;
          entry = head.next;
          continue;
        }
        linearized[e.bit >>> 5]! &= ~(1 << (e.bit & 31));
      }
      entry = e.next;
      continue;
    }
    // A completion whose operation did not take effect yet: undo the last choice.
    if (stack.length === deepest && stuckAt === null) stuckAt = e.op;
    const top = stack.pop();
    if (top === undefined) {
      return { ok: false, why: `no order of the ${ops.length} operations explains what clients saw; at best ${deepest} took effect, then ${stuckAt === null ? "?" : show(stuckAt)} could not` };
    }
    value = top.value;
    linearized[top.call.bit >>> 5]! &= ~(1 << (top.call.bit & 31));
    unlift(top.call);
    entry = top.call.next;
  }
  return { ok: true, ops: ops.length };
}

/** The events in order behind a head sentinel: invocations and completions by event number, open completions last. */
function linkEvents(ops: readonly RegisterOp[]): Event {
  const events: { at: number; e: Event }[] = [];
  ops.forEach((op, bit) => {
    const ret: Event = { op, match: null, bit, prev: null, next: null };
    const call: Event = { op, match: ret, bit, prev: null, next: null };
    events.push({ at: op.call, e: call }, { at: op.ret === Infinity ? Number.MAX_SAFE_INTEGER - ops.length + bit : op.ret, e: ret });
  });
  events.sort((a, b) => a.at - b.at);
  const head: Event = { op: null as unknown as RegisterOp, match: null, bit: -1, prev: null, next: null };
  let last = head;
  for (const { e } of events) {
    last.next = e;
    e.prev = last;
    last = e;
  }
  return head;
}

/** Takes an operation out of the list: its invocation and its completion. */
function lift(call: Event): void {
  const ret = call.match as Event;
  (call.prev as Event).next = call.next;
  (call.next as Event).prev = call.prev;
  (ret.prev as Event).next = ret.next;
  if (ret.next !== null) ret.next.prev = ret.prev;
}

/** Puts it back where it was (the reverse of lift). */
function unlift(call: Event): void {
  const ret = call.match as Event;
  (ret.prev as Event).next = ret;
  if (ret.next !== null) ret.next.prev = ret;
  (call.prev as Event).next = call;
  (call.next as Event).prev = call;
}

function fmt(event: number): string {
  return event === Infinity ? "never" : String(event);
}

function show1(value: string): string {
  return value === "" ? "the initial value" : value;
}

function show(op: RegisterOp): string {
  const ret = op.ret === Infinity ? "never seen" : String(op.ret);
  return `${op.kind} ${op.value === "" ? '""' : op.value} (${op.where}; events ${op.call}..${ret})`;
}

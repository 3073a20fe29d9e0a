// Fail-stop (STYLE.md, TigerBeetle): a broken invariant, or an exception no
// code was written to expect, ends the process at once. Going on would run
// with state half-changed by the code that threw (a Raft core stepped halfway,
// a block map updated without its log record); a restart rebuilds everything
// from what is on disk, which is the only state recovery trusts.
//
// Code that catches decides what it expects (a client's bad request, a peer's
// bad message, a full or failing disk, a peer gone) and hands everything else
// to failStop(). The handler is installed by the composition root
// (src/daemon/fail-stop.ts: one log line with the stack, then exit), so this
// file, and the layers that call it, touch nothing of node:*.

import { AssertionError } from "./assert.js";

/** Reports a fatal error; the process must not run on after it returns (the daemon's exits). */
export type FailStopHandler = (err: unknown, where: string) => void;

/**
 * Without an installed handler (a unit test, a tool) the error is rethrown
 * from a microtask, where nothing can catch it: the runtime's uncaught
 * exception path ends the process.
 */
const rethrowUncaught: FailStopHandler = (err) => {
  queueMicrotask(() => {
    throw err;
  });
};

let handler: FailStopHandler = rethrowUncaught;

/** Installs the process's fail-stop handler; returns the one it replaces. */
export function installFailStop(h: FailStopHandler): FailStopHandler {
  const previous = handler;
  handler = h;
  return previous;
}

/**
 * Ends the process: `where` names the code that caught `err` (a log line's
 * subject). Never returns: should a handler return, the error is thrown on,
 * so no caller proceeds as if it had been handled.
 */
export function failStop(err: unknown, where: string): never {
  handler(err, where);
  throw err;
}

/**
 * An error only a bug in pxd throws: a broken assertion, or the language
 * refusing an operation (a property of undefined, a wrong type, a value out of
 * range). For catch sites whose expected failures are open-ended (anything a
 * disk or a library may report), this is what must still stop the process.
 */
export function isBug(err: unknown): boolean {
  return err instanceof AssertionError || err instanceof TypeError || err instanceof ReferenceError || err instanceof RangeError;
}

/** A one-line description of a thrown value with its stack, for the fail-stop log line. */
export function describeFailure(err: unknown): string {
  if (err instanceof Error) return err.stack ?? `${err.name}: ${err.message}`;
  return `a thrown ${typeof err}: ${String(err)}`;
}

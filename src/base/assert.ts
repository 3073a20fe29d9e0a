// Assertions are always on (TigerBeetle style): a failed assertion is a bug in
// pxd, never a user error, so it throws an AssertionError that names the rule.

export class AssertionError extends Error {
  override name = "AssertionError";
}

/**
 * Throws when the condition is false. On a hot path pass the message as a
 * function: a template literal is built on every call, passing or not (number
 * to string conversions showed in the profile of a replicated write).
 */
export function assert(condition: unknown, message: string | (() => string) = "assertion failed"): asserts condition {
  if (!condition) throw new AssertionError(typeof message === "string" ? message : message());
}

export function assertNever(value: never, message = "unexpected value"): never {
  throw new AssertionError(`${message}: ${String(value)}`);
}

/** A safe integer in [min, max]; lengths and offsets use this before any arithmetic. */
export function assertIntInRange(value: number, min: number, max: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new AssertionError(`${what} = ${value} is outside [${min}, ${max}]`);
  }
}

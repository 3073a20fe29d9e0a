// Where backups go: one interface over a directory (file:///DIR) and an
// S3-compatible bucket (s3://BUCKET/PREFIX). Keys are relative paths
// ("chunks/ab/abcd...", "backups/db/20260101T000000Z-1a2b3c.json"), checked
// here so no key leaves its target. What a target returns is untrusted: a
// get is bounded by the caller's `bytesMax` before anything is read.

import { fileTarget } from "./file-target.js";
import type { S3Options } from "./s3-target.js";

export interface BackupTarget {
  /** The URL as given, for messages. */
  readonly url: string;
  /** Writes the whole object, replacing one of the same key; a reader never sees a part of it. */
  put(key: string, data: Buffer): Promise<void>;
  /** The object, or undefined when there is none; an object above `bytesMax` is an error, found before it is read. */
  get(key: string, bytesMax: number): Promise<Buffer | undefined>;
  exists(key: string): Promise<boolean>;
  /** Every key under `prefix` (a folder: ends with "/"), at most `keysMax` of them (more is an error). */
  list(prefix: string, keysMax: number): Promise<string[]>;
  /** Removes the object; a missing one is not an error. */
  delete(key: string): Promise<void>;
  close(): void;
}

/** A key: "/"-separated segments of [A-Za-z0-9._-], none "." or "..". */
const keyPattern = /^(?:[A-Za-z0-9_-][A-Za-z0-9._-]*\/)*[A-Za-z0-9_-][A-Za-z0-9._-]*\/?$/;

export function checkKey(key: string): void {
  if (!keyPattern.test(key) || key.length > 512) throw new Error(`bad backup target key ${JSON.stringify(key)}`);
}

/** An object is larger than the caller's bound: the target holds something that is not what its key says. */
export class ObjectTooLargeError extends Error {
  override name = "ObjectTooLargeError";
}

/** A target URL the user gave is wrong or names nothing usable: the CLI reports it as a usage error. */
export class TargetUrlError extends Error {
  override name = "TargetUrlError";
}

export type TargetOptions = S3Options;

export async function openTarget(url: string, o: TargetOptions = {}): Promise<BackupTarget> {
  if (url.startsWith("file://")) return fileTarget(url);
  // Loaded only for s3://: the AWS SDK takes longer to load than the rest of the CLI.
  if (url.startsWith("s3://")) return (await import("./s3-target.js")).s3Target(url, o);
  throw new TargetUrlError(`${JSON.stringify(url)} is not a backup target; use file:///DIR (any mounted filesystem) or s3://BUCKET/PREFIX`);
}

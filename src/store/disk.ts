// The store's only view of storage: a directory of files. src/os/node-disk.ts
// implements it over node:fs, the only implementation: the store's tests run
// on real files and inject crashes by killing the daemon or truncating and
// flipping bytes in them (an in-memory disk with tear injection was planned
// and not built).
//
// Contract:
// - readSync may be called on the event loop (DESIGN §9: synchronous reads of
//   page-cached data are what reach nbdkit's rate).
// - write(buffers, position) writes the buffers back to back (pwritev); the data
//   is durable only after a later datasync() resolves.
// - rename/remove/create change the directory; they are durable only after
//   syncDir() resolves.
// - A failure of the disk is thrown (or rejected) as an Error whose `code`, if
//   any, is the errno name ("ENOSPC", "EIO"); readSync throws a StoreError
//   "EIO". The store tells a full disk from a failing one by it.

export interface DiskFile {
  readonly name: string;
  sizeBytes(): number;
  /** Reads up to `length` bytes at `position` into `into[intoOffset..]`; returns the bytes read (short at end of file). */
  readSync(into: Uint8Array, intoOffset: number, length: number, position: number): number;
  write(buffers: readonly Uint8Array[], position: number): Promise<void>;
  datasync(): Promise<void>;
  close(): void;
}

export interface Disk {
  /** File names in the directory, unordered. */
  list(): string[];
  exists(name: string): boolean;
  /** Opens an existing file, or creates an empty one when create is true. */
  open(name: string, create: boolean): DiskFile;
  rename(from: string, to: string): void;
  remove(name: string): void;
  syncDir(): Promise<void>;
}

/** Runs fn soon, after the I/O callbacks of this event-loop turn (setImmediate in src/os). */
export type Defer = (fn: () => void) => void;

export async function writeFileDurably(disk: Disk, name: string, data: readonly Uint8Array[]): Promise<void> {
  const tmp = `${name}.tmp`;
  if (disk.exists(tmp)) disk.remove(tmp);
  const file = disk.open(tmp, true);
  try {
    await file.write(data, 0);
    await file.datasync();
  } finally {
    file.close();
  }
  disk.rename(tmp, name);
  await disk.syncDir();
}

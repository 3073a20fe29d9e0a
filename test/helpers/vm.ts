// A tiny Linux guest under qemu for tests of the Linux kernel's NBD client
// (docs/testing-vm.md). test/vm/build-guest.sh builds (once, cached) a Debian
// 12 kernel and an initramfs with busybox, the kernel's nbd/virtio-net/ext4
// modules and mkfs.ext4/e2fsck/blkid; bootGuest adds this run's files (a
// test script, the agent binary, nbd-client...) as a second cpio archive,
// boots it under TCG (PXD_VM_ACCEL=kvm to try KVM), and gives the console's lines.
//
//   const vm = vmAvailable();                  // { ok: false, why } when qemu etc. are missing
//   const g = await bootGuest({
//     script: `nbd-client 10.0.2.101 10809 /dev/nbd0 -N vol\necho attached\nread go\n...`,
//     binaries: ["/usr/sbin/nbd-client"],      // host programs, copied with their shared libs
//     files: { "/bin/pxd-attach": "native/pxd-attach" },
//     forwards: [{ guest: "10.0.2.101:10809", host: "127.0.0.11:10809" }],
//   });
//   await g.waitFor(/^attached$/);             // a line the guest printed
//   g.send("go");                              // a line the guest script reads with `read`
//   assert.is(await g.exit, 0);                // the script's exit code
//
// Console protocol (test/vm/guest-init.sh): "PXD-GUEST-READY" when the script
// starts, "kernel: [ts] msg" for each kernel message after boot, the script's
// own output, then "PXD-GUEST-EXIT=<code>" and power-off.
//
// Host -> guest: send(line) writes the line to the serial console; the script's
// stdin is that console (canonical mode, echo off), so `read x` gets one line.
// Lines sent before the script reads wait in the tty's buffer. A command in the
// script that reads stdin would eat them: give it </dev/null.
//
// Forwards: each { guest: "IP:PORT", host: "127.x.x.x:PORT" } is a qemu
// user-net guestfwd whose target is a command run per connection
// (test/vm/relay.pl HOST PORT), so every guest connection is its own host TCP
// connection, reconnects included. (A guestfwd to a `tcp:` chardev makes one
// host connection when qemu starts and shares it among all guest connections:
// the second NBD connection gets no greeting. And `busybox nc` as the command
// costs ~44 ms per NBD write: relay.pl says why.) The guest's connect always
// succeeds (slirp accepts it, then runs the relay): a host port with no
// listener shows up in the guest as a connection closed at once, not as
// ECONNREFUSED. restrict=on: the guest reaches nothing but the forwards.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync, realpathSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, posix } from "node:path";
import { fileURLToPath } from "node:url";
import { tempDir } from "./tmp.js";

export const guestCacheDir = process.env["PXD_VM_CACHE"] ?? "/var/cache/pxd-vm";

/** The guest's own address on qemu user-net, and the host as the guest sees it. */
export const guestAddress = "10.0.2.15";
export const gatewayAddress = "10.0.2.2";

export interface Forward {
  /** "IP:PORT" the guest connects to: an unused address in 10.0.2.0/24, e.g. 10.0.2.101:10809. */
  guest: string;
  /** "IP:PORT" on the host's loopback (127.0.0.0/8) that each guest connection is relayed to. */
  host: string;
}

export interface BootOptions {
  /** /test.sh, run by busybox sh with the console as stdin/stdout/stderr. */
  script: string;
  /** guest path -> host path: files copied in, keeping the host file's mode. */
  files?: Record<string, string>;
  /** guest path -> contents (mode 0644; 0755 when it starts with "#!"). */
  data?: Record<string, string | Buffer>;
  /** Host executables put at the same path in the guest, with the shared libraries ldd names. */
  binaries?: string[];
  forwards?: Forward[];
  memMiB?: number;
  smp?: number;
  /** The whole run, boot to power-off; then qemu is killed and `exit` rejects. Default 120 s. */
  timeoutMs?: number;
  /** More kernel command line parameters. */
  append?: string;
  /** Print every console line to stderr as it comes (also PXD_VM_LOG=1). */
  echo?: boolean;
}

export interface Guest {
  /** Every console line so far, "\r" stripped (kernel messages as "kernel: [ts] msg"). */
  readonly lines: string[];
  /** qemu's own stderr lines. */
  readonly qemuErrors: string[];
  /**
   * The first line from the cursor on that matches; the cursor then moves past
   * it, so two waitFor calls with the same pattern see two different lines.
   * Rejects on timeout (default 60 s) or when the guest ends first.
   */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  /** One line to the guest's console (the script reads it with `read`). */
  send(line: string): void;
  /** ms from qemu's start to PXD-GUEST-READY (the script starts). */
  readonly ready: Promise<number>;
  /** The script's exit code (PXD-GUEST-EXIT); rejects if the guest ended without it. */
  readonly exit: Promise<number>;
  /** SIGKILL qemu (no-op once it ended) and wait for it. */
  kill(): Promise<void>;
  /** The console so far as one string, for assertion messages. */
  output(): string;
}

const repoRoot = ((): string => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, "test/vm/build-guest.sh"))) return dir;
    dir = dirname(dir);
  }
  throw new Error("test/vm/build-guest.sh not found above " + fileURLToPath(import.meta.url));
})();
export const buildGuestScript = join(repoRoot, "test/vm/build-guest.sh");
const relayScript = join(repoRoot, "test/vm/relay.pl");

function which(cmd: string): string | undefined {
  for (const d of (process.env["PATH"] ?? "/usr/bin:/bin").split(":")) {
    const p = join(d, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

interface GuestImage {
  kernel: string;
  initramfs: string;
  env: Record<string, string>;
}

let built: { ok: true; image: GuestImage } | { ok: false; why: string } | undefined;

/**
 * Whether a guest can boot here. Builds the guest (test/vm/build-guest.sh,
 * cached; the first time it downloads the kernel package, ~15 s) and checks
 * qemu; the reason is one line, e.g. "qemu-system-x86_64 not found: apt-get
 * install qemu-system-x86".
 */
export function vmAvailable(): { ok: true } | { ok: false; why: string } {
  if (!built) built = buildGuest();
  return built.ok ? { ok: true } : built;
}

function buildGuest(): { ok: true; image: GuestImage } | { ok: false; why: string } {
  if (process.platform !== "linux" || process.arch !== "x64") return { ok: false, why: `the guest is x86_64 Linux; this is ${process.platform}/${process.arch}` };
  if (!which("perl")) return { ok: false, why: "perl not found: apt-get install perl-base (test/vm/relay.pl relays the forwards)" };
  const r = spawnSync("bash", [buildGuestScript], { encoding: "utf8", env: { ...process.env, PXD_VM_CACHE: guestCacheDir } });
  if (r.status !== 0) {
    const lines = `${r.stderr ?? ""}${r.stdout ?? ""}`.split("\n").filter((l) => l.startsWith("build-guest:"));
    return { ok: false, why: lines.at(-1) ?? `test/vm/build-guest.sh exited ${r.status}: ${r.stderr}` };
  }
  const env: Record<string, string> = {};
  for (const line of readFileSync(join(guestCacheDir, "guest.env"), "utf8").split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
  }
  return { ok: true, image: { kernel: join(guestCacheDir, env["KERNEL_IMAGE"] ?? "vmlinuz"), initramfs: join(guestCacheDir, "initramfs.cpio.gz"), env } };
}

/** What build-guest.sh recorded: KERNEL_PACKAGE, KERNEL_VERSION, KERNEL_IMAGE, MODULES, ... */
export function guestInfo(): Record<string, string> {
  const v = vmAvailable();
  if (!v.ok) throw new Error(v.why);
  return (built as { image: GuestImage }).image.env;
}

// ---- cpio (newc) ------------------------------------------------------------

export type CpioEntry =
  | { path: string; type: "file"; data: Buffer; mode?: number }
  | { path: string; type: "dir"; mode?: number }
  | { path: string; type: "symlink"; target: string };

/**
 * A newc cpio archive (uncompressed), parent directories first. The kernel
 * unpacks concatenated archives in order, a later entry replacing an earlier
 * one, so this appended to the cached initramfs adds or overrides files.
 */
export function cpioArchive(entries: CpioEntry[]): Buffer {
  const out: Buffer[] = [];
  let ino = 1;
  let size = 0;
  const push = (b: Buffer): void => {
    out.push(b);
    size += b.length;
  };
  const pad = (): void => {
    if (size % 4) push(Buffer.alloc(4 - (size % 4)));
  };
  const header = (name: string, mode: number, nlink: number, data: Buffer): void => {
    const nameBuf = Buffer.from(name + "\0");
    const fields = [ino++, mode, 0, 0, nlink, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0];
    push(Buffer.from("070701" + fields.map((f) => f.toString(16).padStart(8, "0")).join(""), "ascii"));
    push(nameBuf);
    pad();
    push(data);
    pad();
  };
  const dirs = new Set<string>();
  const addDirs = (p: string): void => {
    const parent = posix.dirname(p);
    if (parent === "/" || parent === "." || dirs.has(parent)) return;
    addDirs(parent);
    dirs.add(parent);
    header(parent.slice(1), 0o040755, 2, Buffer.alloc(0));
  };
  for (const e of entries) {
    if (!e.path.startsWith("/")) throw new Error(`guest path must be absolute: ${e.path}`);
    const p = posix.normalize(e.path);
    addDirs(p);
    if (e.type === "dir") {
      dirs.add(p);
      header(p.slice(1), 0o040000 | (e.mode ?? 0o755), 2, Buffer.alloc(0));
    } else if (e.type === "symlink") header(p.slice(1), 0o120777, 1, Buffer.from(e.target));
    else header(p.slice(1), 0o100000 | (e.mode ?? 0o644), 1, e.data);
  }
  header("TRAILER!!!", 0, 1, Buffer.alloc(0));
  return Buffer.concat(out);
}

/** A host executable and the shared libraries (and loader) ldd names, at their host paths. */
export function binaryWithLibs(hostPath: string, guestPath = hostPath): CpioEntry[] {
  const entries: CpioEntry[] = [{ path: guestPath, type: "file", data: readFileSync(hostPath), mode: statSync(hostPath).mode & 0o7777 }];
  const r = spawnSync("ldd", [hostPath], { encoding: "utf8" });
  if (r.status === 0) {
    for (const line of r.stdout.split("\n")) {
      const m = /=>\s*(\/\S+)/.exec(line) ?? /^\s*(\/\S+)/.exec(line);
      if (m?.[1]) entries.push({ path: m[1], type: "file", data: readFileSync(realpathSync(m[1])), mode: 0o755 });
    }
  } // else: static ("not a dynamic executable")
  return entries;
}

function runEntries(opts: BootOptions): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const add = (e: CpioEntry): void => void entries.push(e); // a later entry for a path replaces an earlier one
  const libs = new Set<string>();
  for (const b of opts.binaries ?? []) {
    for (const e of binaryWithLibs(b)) {
      if (e.path !== b && libs.has(e.path)) continue; // a library two binaries share
      libs.add(e.path);
      add(e);
    }
  }
  for (const [guest, host] of Object.entries(opts.files ?? {})) {
    add({ path: guest, type: "file", data: readFileSync(host), mode: statSync(host).mode & 0o7777 });
  }
  for (const [guest, content] of Object.entries(opts.data ?? {})) {
    const data = Buffer.isBuffer(content) ? content : Buffer.from(content);
    add({ path: guest, type: "file", data, mode: data.subarray(0, 2).toString() === "#!" ? 0o755 : 0o644 });
  }
  add({ path: "/test.sh", type: "file", data: Buffer.from(opts.script.endsWith("\n") ? opts.script : opts.script + "\n"), mode: 0o755 });
  return entries;
}

// ---- qemu ---------------------------------------------------------------------

function splitHostPort(s: string, what: string): [string, number] {
  const m = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(s);
  if (!m) throw new Error(`${what} must be IPv4:PORT, got ${JSON.stringify(s)}`);
  return [m[1]!, Number(m[2])];
}

function forwardArg(f: Forward, perl: string): string {
  const [gip, gport] = splitHostPort(f.guest, "forward.guest");
  const [hip, hport] = splitHostPort(f.host, "forward.host");
  const last = Number(gip.split(".")[3]);
  if (!gip.startsWith("10.0.2.") || [0, 2, 3, 15, 255].includes(last)) {
    throw new Error(`forward.guest ${f.guest}: use an unused address in 10.0.2.0/24 (not .2 gateway, .3 DNS, .15 the guest)`);
  }
  // The guest's traffic goes nowhere but the host's loopback.
  if (!hip.startsWith("127.")) throw new Error(`forward.host ${f.host}: only loopback (127.0.0.0/8) targets`);
  if (/[\s,]/.test(perl + relayScript)) throw new Error(`the relay's path has a space or comma, qemu's option syntax cannot take it: ${perl} ${relayScript}`);
  return `guestfwd=tcp:${gip}:${gport}-cmd:${perl} ${relayScript} ${hip} ${hport}`;
}

const live = new Set<ChildProcess>();
let exitHook = false;
function killGroup(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, "SIGKILL"); // the group: `timeout` and qemu
  } catch {
    /* gone */
  }
}

export async function bootGuest(opts: BootOptions): Promise<Guest> {
  const v = vmAvailable();
  if (!v.ok) throw new Error(`no VM: ${v.why}`);
  const image = (built as { image: GuestImage }).image;
  const perl = which("perl")!;
  const qemu = which("qemu-system-x86_64")!;
  const timeoutMs = opts.timeoutMs ?? 120_000;
  const echo = opts.echo ?? process.env["PXD_VM_LOG"] !== undefined;

  // The per-run initrd: the cached archive, zero padding to a 4-byte boundary
  // (the kernel looks for a cpio header only there), then this run's archive.
  const t = tempDir("vm");
  const base = readFileSync(image.initramfs);
  const extra = cpioArchive(runEntries(opts));
  const initrd = join(t.dir, "initrd");
  writeFileSync(initrd, Buffer.concat([base, Buffer.alloc((4 - (base.length % 4)) % 4), extra]));

  const netdev = ["user", "id=n0", "restrict=on", ...(opts.forwards ?? []).map((f) => forwardArg(f, perl))].join(",");
  // TCG unless asked: this workplace's /dev/kvm exists but fails on the guest
  // kernel's first cmpxchg16b ("KVM internal error. Suberror: 1", then qemu hangs).
  const accel = ["-accel", process.env["PXD_VM_ACCEL"] ?? "tcg"];
  const qemuArgs = [
    "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
    ...accel, "-m", String(opts.memMiB ?? 256), "-smp", String(opts.smp ?? 1), "-no-reboot",
    "-kernel", image.kernel, "-initrd", initrd,
    "-append", `console=ttyS0 quiet panic=-1 ${opts.append ?? ""}`.trim(),
    "-netdev", netdev,
    "-device", "virtio-net-pci,netdev=n0,romfile=", // no PXE option ROM: the kernel is loaded directly
  ];
  // `timeout` is the backstop should this process die without killing qemu;
  // the group (detached) lets kill() take both.
  const backstop = Math.ceil(timeoutMs / 1000) + 15;
  const started = Date.now();
  const child = spawn("timeout", ["-s", "KILL", String(backstop), qemu, ...qemuArgs], { stdio: ["pipe", "pipe", "pipe"], detached: true });
  live.add(child);
  if (!exitHook) {
    exitHook = true;
    process.on("exit", () => {
      for (const c of live) killGroup(c);
    });
  }

  const lines: string[] = [];
  const qemuErrors: string[] = [];
  let cursor = 0;
  let ended = false;
  let exitCode: number | undefined;
  let endWhy = "";
  type Waiter = { re: RegExp; resolve(m: RegExpMatchArray): void; reject(e: Error): void; timer: NodeJS.Timeout };
  const waiters: Waiter[] = [];
  const tail = (): string => lines.slice(-60).join("\n");

  let resolveReady!: (ms: number) => void;
  let rejectReady!: (e: Error) => void;
  const ready = new Promise<number>((res, rej) => ((resolveReady = res), (rejectReady = rej)));
  ready.catch(() => {});

  const scan = (): void => {
    for (let i = 0; i < waiters.length; ) {
      const w = waiters[i]!;
      let hit: RegExpMatchArray | null = null;
      for (let j = cursor; j < lines.length && !hit; j++) {
        hit = lines[j]!.match(w.re);
        if (hit) cursor = j + 1;
      }
      if (hit) {
        clearTimeout(w.timer);
        waiters.splice(i, 1);
        w.resolve(hit);
      } else i++;
    }
  };
  const onLine = (raw: string): void => {
    const line = raw.replace(/\r/g, "");
    lines.push(line);
    if (echo) process.stderr.write(`[guest] ${line}\n`);
    if (line.includes("PXD-GUEST-READY")) resolveReady(Date.now() - started);
    const m = /PXD-GUEST-EXIT=(\d+)/.exec(line);
    if (m) exitCode = Number(m[1]);
    scan();
  };
  let partial = "";
  child.stdout!.on("data", (d: Buffer) => {
    const parts = (partial + d.toString("utf8")).split("\n");
    partial = parts.pop()!;
    for (const p of parts) onLine(p);
  });
  let errPartial = "";
  child.stderr!.on("data", (d: Buffer) => {
    const parts = (errPartial + d.toString("utf8")).split("\n");
    errPartial = parts.pop()!;
    for (const p of parts) {
      qemuErrors.push(p);
      if (echo) process.stderr.write(`[qemu] ${p}\n`);
    }
  });
  child.stdin!.on("error", () => {}); // EPIPE after qemu ended
  child.on("error", (e) => (endWhy ||= `cannot run qemu: ${e.message}`));

  const closed = new Promise<void>((resolve) => child.once("close", () => resolve()));
  const timer = setTimeout(() => {
    endWhy = `timed out after ${timeoutMs} ms`;
    killGroup(child);
  }, timeoutMs);
  const exit = closed.then(() => {
    clearTimeout(timer);
    live.delete(child);
    if (partial) onLine(partial);
    ended = true;
    t.remove();
    const why = endWhy || (exitCode === undefined ? `qemu exited (${child.exitCode ?? child.signalCode}) without PXD-GUEST-EXIT` : "");
    for (const w of waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new Error(`guest ended before a line matched ${w.re} (${why || "script exited " + exitCode}):\n${tail()}`));
    }
    rejectReady(new Error(`guest ended before PXD-GUEST-READY (${why}):\n${tail()}\n${qemuErrors.join("\n")}`));
    if (why) throw new Error(`guest: ${why}:\n${tail()}\n${qemuErrors.join("\n")}`);
    return exitCode!;
  });
  exit.catch(() => {}); // the test awaits it or not; an unawaited failure is not a crash

  return {
    lines,
    qemuErrors,
    ready,
    exit,
    output: () => lines.join("\n"),
    send(line: string) {
      if (ended) throw new Error("guest has ended");
      child.stdin!.write(line + "\n");
    },
    waitFor(re: RegExp, ms = 60_000) {
      return new Promise<RegExpMatchArray>((resolve, reject) => {
        if (ended) {
          for (let j = cursor; j < lines.length; j++) {
            const hit = lines[j]!.match(re);
            if (hit) {
              cursor = j + 1;
              return resolve(hit);
            }
          }
          return reject(new Error(`guest has ended; no line matched ${re}:\n${tail()}`));
        }
        const w: Waiter = {
          re,
          resolve,
          reject,
          timer: setTimeout(() => {
            waiters.splice(waiters.indexOf(w), 1);
            reject(new Error(`no guest line matched ${re} within ${ms} ms:\n${tail()}`));
          }, ms),
        };
        waiters.push(w);
        scan();
      });
    },
    async kill() {
      if (!endWhy) endWhy = "killed";
      killGroup(child);
      await closed;
      await exit.catch(() => {});
    },
  };
}

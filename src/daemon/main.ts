// `pxd daemon`: runs one node in the foreground until SIGTERM or SIGINT.

import { mkdirSync } from "node:fs";
import { Daemon } from "./daemon.js";
import type { DaemonOptions, Logger } from "./daemon-options.js";
import { missingDaemonNodeFlags } from "../os/node-flags.js";
import { makePrivate } from "../os/private-files.js";
import { printable } from "../base/printable.js";
import { failStop, isBug } from "../base/fail-stop.js";
import { installProcessFailStop } from "./fail-stop.js";
import { logLineCharsMax } from "../constants.js";

function stamp(): string {
  return new Date().toISOString();
}

/**
 * One event, one line: a message may carry what a client sent (a join's
 * fields, an NBD export name, an HTTP path), so every control character is
 * escaped here, whatever the caller did (a stack trace's newlines too).
 */
const line = (level: string, m: string): string => `${stamp()} ${level} ${printable(m, logLineCharsMax)}`;

const log: Logger = {
  info: (m) => console.log(line("info", m)),
  warn: (m) => console.log(line("warn", m)),
  error: (m) => console.error(line("error", m)),
};

export async function runDaemon(options: DaemonOptions): Promise<void> {
  // From here on, a bug anywhere ends the process with one line saying what failed.
  installProcessFailStop(log.error);
  // Volume data, the node's state and the cluster secret are the daemon user's
  // alone: files 0600 and directories 0700 from the first one created (the
  // NBD Unix socket too: only that user, or root, can connect to it).
  process.umask(0o077);
  let daemon: Daemon;
  try {
    mkdirSync(options.dataDir, { recursive: true });
    const tightened = makePrivate(options.dataDir);
    if (tightened > 0) log.info(`made ${tightened} files and directories under ${options.dataDir} private to this user (0600/0700)`);
    daemon = await Daemon.start(options, log);
  } catch (e) {
    if (isBug(e)) failStop(e, "starting the daemon");
    log.error(`pxd daemon could not start: ${(e as Error).message}`);
    process.exitCode = 1;
    return;
  }
  const missing = missingDaemonNodeFlags();
  if (missing.length > 0) {
    log.warn(`node runs without ${missing.join(" ")}: replicated writes are about a quarter slower (frequent full GCs); start the daemon with "pxd daemon" (bin/pxd passes it) or "node ${missing.join(" ")} dist/bin/pxd.js daemon"`);
  }
  log.info(`serving NBD on ${options.listen}:${daemon.nbdPort}, control API on ${options.listen}:${options.apiPort}, data in ${options.dataDir}`);
  const watchdog = watchEventLoop();
  await new Promise<void>((resolve) => {
    const onSignal = (signal: string): void => {
      log.info(`${signal}: shutting down (stop accepting, finish in-flight requests, flush, checkpoint)`);
      process.off("SIGTERM", onTerm);
      process.off("SIGINT", onInt);
      void daemon.stop().then(resolve);
    };
    const onTerm = (): void => onSignal("SIGTERM");
    const onInt = (): void => onSignal("SIGINT");
    process.on("SIGTERM", onTerm);
    process.on("SIGINT", onInt);
  });
  clearInterval(watchdog);
  log.info("stopped");
}

/** Everything the daemon serves waits while its event loop is blocked: say so when it was, for long. */
const watchdogTickMs = 500;
const watchdogReportMs = 1000;

function watchEventLoop(): NodeJS.Timeout {
  let last = performance.now();
  const t = setInterval(() => {
    const now = performance.now();
    const late = now - last - watchdogTickMs;
    last = now;
    if (late >= watchdogReportMs) log.warn(`the event loop was blocked for ${Math.round(late)} ms: requests, Raft messages and heartbeats waited that long`);
  }, watchdogTickMs);
  t.unref();
  return t;
}

// `pxd daemon`: runs one node in the foreground until SIGTERM or SIGINT.

import { mkdirSync } from "node:fs";
import { Daemon, type DaemonOptions, type Logger } from "./daemon.js";
import { missingDaemonNodeFlags } from "../os/node-flags.js";
import { printable } from "../base/printable.js";
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
  mkdirSync(options.dataDir, { recursive: true });
  let daemon: Daemon;
  try {
    daemon = await Daemon.start(options, log);
  } catch (e) {
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

// pxd daemon: parses the daemon's options and hands them to src/daemon.
//
// Layering exception (DESIGN.md section 7): the CLI talks to a daemon only
// through the API client, except here, where it *is* the daemon process. The
// import is dynamic so that every other command loads none of the daemon.

import { Option, type Command } from "commander";
import { defaultApiPort, defaultNbdPort, defaultPeerPort, nbdIdleTimeoutMs, resyncBandwidthBytesPerSecDefault } from "../constants.js";
import { intArg, byteCountArg, durationArg, rateLimitArg } from "./args.js";
import { CliError } from "./errors.js";

// The contract with src/daemon/main.ts; a type-only import, erased at run time.
import type { DaemonOptions } from "../daemon/daemon-options.js";
import type { NbdTlsMode } from "../os/nbd-tls.js";

type RunDaemon = (options: DaemonOptions) => Promise<void>;

export function registerDaemon(program: Command): void {
  const port = intArg(1, 65535);
  program
    .command("daemon")
    .description("run a pxd node in the foreground (pxd up starts one in the background)")
    .requiredOption("--data-dir <dir>", "directory for this node's store")
    .option("--listen <host>", "address to bind the NBD, API and peer ports", "127.0.0.1")
    .option("--nbd-port <port>", "NBD port", port, defaultNbdPort)
    .option("--api-port <port>", "control API port", port, defaultApiPort)
    .option("--peer-port <port>", "peer (Raft) port", port, defaultPeerPort)
    .option("--join <addr>", "join the cluster of the node whose control API is at ADDR[:PORT] (first start only)")
    .option("--cluster-secret-file <file>", "a file holding the cluster's shared secret (or set PXD_CLUSTER_SECRET); a new cluster makes one in DIR/cluster.secret, a joined node keeps it there")
    .option("--cluster-secret <secret>", "the secret itself (shown by ps: prefer PXD_CLUSTER_SECRET or --cluster-secret-file)")
    .option("--cluster-key-file <file>", "a file holding the cluster key (32 bytes, raw or as 64 hex digits; or set PXD_CLUSTER_KEY) that wraps encrypted volumes' keys; give every node the same one")
    .option("--name <name>", "this node's name in the cluster (default node-ID)")
    .option("--zone <zone>", "this node's zone label, for spreading replicas")
    .option(
      "--log-retain <size>",
      "Raft log a volume's leader keeps for a replica that is down (default 256M); a replica away longer gets a full copy when it returns",
      byteCountArg,
    )
    .option(
      "--replace-down-after <seconds>",
      "when this node leads the catalog: move replicas off a node that has been down this long (default 600; 0: never)",
      intArg(0, 365 * 24 * 3600),
    )
    .option("--scrub-interval <duration>", "scrub everything on this node this long after the last scrub finished, e.g. 7d, 24h, 30m (default 7d; 0: never)", durationArg)
    .option("--scrub-bandwidth <size>", "bytes a second the scrub reads at most, e.g. 32M (default 32M)", byteCountArg)
    .option("--resync-bandwidth <size>", `bytes a second all volume copies this node sends (new replicas, replicas back from away) take together, e.g. 200M (default ${resyncBandwidthBytesPerSecDefault / 1024 / 1024}M; 0 or none: no limit)`, rateLimitArg)
    .option("--unsafe-debug-api", "fault injection for tests: serve POST /v1/debug/catalog-propose, which commits catalog entries without validation; never on a cluster that holds data")
    .option(
      "--nbd-idle-timeout <seconds>",
      `an NBD connection that sent nothing for this long may be closed when a new client needs its slot (default ${nbdIdleTimeoutMs / 1000})`,
      intArg(1, 365 * 24 * 3600),
    )
    .option("--api-plain-http", "serve the control API in plain HTTP, for local trials only (tokens travel in clear); by default it is HTTPS with this node's certificate from the cluster CA (DIR/tls), which clients trust with PXD_CA_FILE=DIR/tls/ca-cert.pem (give it to every node)")
    .option("--tls-name <names>", "more host names or IPs for this node's certificate, comma-separated, besides --listen: names API clients dial instead (e.g. a Kubernetes Service, pxd-api.pxd.svc)", (v: string) => v.split(",").map((x) => x.trim()).filter((x) => x !== ""))
    .option("--peer-plain", "run the peer transport in plain TCP, for local trials only; by default it is TLS, this node's certificate from the cluster CA and every peer's checked against it (give it to every node)")
    // What older scripts pass: TLS is the default now.
    .addOption(new Option("--api-tls", "HTTPS, the default (kept for older scripts)").hideHelp())
    .addOption(new Option("--peer-tls", "TLS, the default (kept for older scripts)").hideHelp())
    .addOption(new Option("--nbd-tls <mode>", "NBD STARTTLS: off; on (offered to clients that ask); require (a TCP client must upgrade before anything else)").choices(["off", "on", "require"]).default("off"))
    .option("--nbd-tls-dir <dir>", "X.509 for NBD TLS: DIR/server-cert.pem, DIR/server-key.pem, and DIR/ca-cert.pem to require client certificates it signed")
    .option("--nbd-tls-owners", "with --nbd-tls require: a TCP client reaches only the volumes whose owner (the API token name that created them) is the identity it proved over TLS (its certificate's CN, or its PSK identity); the Unix socket reaches all")
    .option("--nbd-tls-psk <file>", "pre-shared keys for NBD TLS: identity:hexkey lines (gnutls psktool's format)")
    .option("--no-metrics", "keep no per-volume I/O counters (for measuring their cost); /metrics then shows only the node's own counters")
    .action(async (options: Omit<DaemonOptions, "nbdTls"> & { nbdTls?: string; nbdTlsDir?: string; nbdTlsPsk?: string; clusterSecret?: string; clusterSecretFile?: string; clusterKeyFile?: string; logRetain?: number; replaceDownAfter?: number; scrubInterval?: number; scrubBandwidth?: number; resyncBandwidth?: number; nbdIdleTimeout?: number }) => {
      let daemon: { runDaemon: RunDaemon };
      try {
        daemon = await import("../daemon/main.js");
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        if (e.code !== "ERR_MODULE_NOT_FOUND" || !e.message.includes("daemon/main.js")) throw err;
        throw new CliError(`this build of pxd has no daemon (${e.message.replace(/^Cannot find module /, "").split(" imported")[0]} is missing); rebuild with "npm run build"`);
      }
      const { runDaemon } = daemon;
      const o = options as typeof options & { apiTls?: boolean; peerTls?: boolean };
      if (o.apiTls === true && options.apiPlainHttp === true) throw new CliError("--api-tls and --api-plain-http ask for opposite things; give one (HTTPS is the default)");
      if (o.peerTls === true && options.peerPlain === true) throw new CliError("--peer-tls and --peer-plain ask for opposite things; give one (TLS is the default)");
      await runDaemon({
        dataDir: options.dataDir,
        listen: options.listen,
        nbdPort: options.nbdPort,
        apiPort: options.apiPort,
        peerPort: options.peerPort,
        ...(options.join !== undefined ? { join: options.join } : {}),
        ...(options.clusterSecret !== undefined ? { secret: options.clusterSecret } : {}),
        ...(options.clusterSecretFile !== undefined ? { secretFile: options.clusterSecretFile } : {}),
        ...(options.clusterKeyFile !== undefined ? { clusterKeyFile: options.clusterKeyFile } : {}),
        ...(options.name !== undefined ? { name: options.name } : {}),
        ...(options.zone !== undefined ? { zone: options.zone } : {}),
        ...(options.logRetain !== undefined ? { logRetainBytes: options.logRetain } : {}),
        ...(options.replaceDownAfter !== undefined ? { replaceDownAfterMs: options.replaceDownAfter * 1000 } : {}),
        ...(options.scrubInterval !== undefined ? { scrubIntervalMs: options.scrubInterval } : {}),
        ...(options.scrubBandwidth !== undefined ? { scrubBandwidthBytesPerSec: options.scrubBandwidth } : {}),
        ...(options.resyncBandwidth !== undefined ? { resyncBandwidthBytesPerSec: options.resyncBandwidth } : {}),
        ...(options.unsafeDebugApi === true ? { unsafeDebugApi: true } : {}),
        ...(options.nbdIdleTimeout !== undefined ? { nbdIdleTimeoutMs: options.nbdIdleTimeout * 1000 } : {}),
        ...(options.metrics === false ? { metrics: false } : {}),
        ...(options.apiPlainHttp === true ? { apiPlainHttp: true } : {}),
        ...(options.peerPlain === true ? { peerPlain: true } : {}),
        ...(options.tlsNames !== undefined ? { tlsNames: options.tlsNames } : {}),
        ...(options.nbdTlsOwners === true ? { nbdTlsOwners: true } : {}),
        nbdTls: {
          mode: (options.nbdTls ?? "off") as NbdTlsMode,
          ...(options.nbdTlsDir !== undefined ? { certDir: options.nbdTlsDir } : {}),
          ...(options.nbdTlsPsk !== undefined ? { pskFile: options.nbdTlsPsk } : {}),
        },
      });
    });
}

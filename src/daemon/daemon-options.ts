// What one node is started with (`pxd daemon` and its flags, src/cli/daemon.ts),
// and where it logs: the contract between the CLI and the composition root.

import type { NbdTlsConfig } from "../os/nbd-tls.js";

export interface DaemonOptions {
  dataDir: string;
  listen: string;
  nbdPort: number;
  apiPort: number;
  peerPort: number;
  /** API address (HOST[:PORT]) of a member of the cluster to join; absent: bootstrap a new cluster (or restart). */
  join?: string;
  /** The cluster secret; else PXD_CLUSTER_SECRET, else DIR/cluster.secret (made when bootstrapping, kept by a join). */
  secret?: string;
  /** A file holding the cluster secret (instead of `secret`, which a command line would show to ps). */
  secretFile?: string;
  name?: string;
  zone?: string;
  /** Raft log kept for a replica that is down before it will need a full copy (default raftLogRetainBytes). */
  logRetainBytes?: number;
  /** When this node leads the catalog: replicas on a node marked down this long are replaced on another node (0: never; default 600 s). */
  replaceDownAfterMs?: number;
  /** A scrub of everything here runs this long after the last one finished (0: never; default scrubIntervalMsDefault). */
  scrubIntervalMs?: number;
  /** The scrub's average read rate (default scrubBandwidthBytesPerSecDefault). */
  scrubBandwidthBytesPerSec?: number;
  /** Bytes a second every volume copy this node sends takes together (0: no limit; default resyncBandwidthBytesPerSecDefault). */
  resyncBandwidthBytesPerSec?: number;
  /** Fault injection for tests: serve POST /v1/debug/catalog-propose, which commits catalog entries without validation. */
  unsafeDebugApi?: boolean;
  /** An NBD connection idle this long may be closed when a new client needs its slot (default nbdIdleTimeoutMs). */
  nbdIdleTimeoutMs?: number;
  /** false (--no-metrics): no per-volume I/O counters on the request path; /metrics shows only what the parts count anyway. */
  metrics?: boolean;
  /** NBD STARTTLS: off (default), on (offered), require (TCP clients must upgrade); with a certificate dir and/or a PSK file. */
  nbdTls?: NbdTlsConfig;
  /**
   * The control API in plain HTTP (--api-plain-http, local trials only); by
   * default it is HTTPS with this node's certificate from the cluster CA, and
   * the node speaks HTTPS to the other nodes too.
   */
  apiPlainHttp?: boolean;
  /** More names (or IPs) this node's certificate carries besides --listen: what API clients dial instead, e.g. a Kubernetes Service (--tls-name). */
  tlsNames?: string[];
  /** The peer transport in plain TCP (--peer-plain, local trials only); by default TLS, this node's certificate from the cluster CA, every peer's checked against it. */
  peerPlain?: boolean;
  /** A TCP NBD client reaches only the volumes whose owner is the identity it proved over TLS (needs nbdTls require); the Unix socket reaches all. */
  nbdTlsOwners?: boolean;
  /** A file holding the cluster key (32 bytes, raw or hex) that wraps encrypted volumes' keys; else PXD_CLUSTER_KEY; else none (no encrypted volumes here). */
  clusterKeyFile?: string;
}

export interface Logger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

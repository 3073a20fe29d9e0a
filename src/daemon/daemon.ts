// The composition root of one pxd node: node state, store, multi-raft driver,
// peer transport, meta group (the catalog), volume I/O, NBD and control API,
// wired together, and their orderly shutdown (docs/architecture.md).
//
// Every node runs the meta group's state machine (src/cluster), rebuilt at
// start from its latest catalog snapshot and the log after it; a node hosts
// the Raft groups of the volumes placed on it, and any node serves any volume
// over NBD (VolumeIo forwards to the leader).
//
// Daemon implements the control API's Controller. A catalog change is made on
// the catalog's leader, forwarded there from any other node (onMetaLeader);
// snapshots, attachments, scrubs, what is served over NBD, and metrics,
// events and samples are the parts' (snapshots.ts, volume-attachments.ts,
// scrub-control.ts, nbd-exports.ts, node-observer.ts), each given what it
// needs of the node as an interface.

import { timingSafeEqual } from "node:crypto";
import { mkdirSync, statfsSync } from "node:fs";
import { join } from "node:path";
import { ApiClient, DaemonUnreachableError, hostPort, parseApiAddress } from "../api/client.js";
import { startApiServer, type ApiServer } from "../api/server.js";
import {
  ApiError,
  type Controller,
  type CreateVolumeRequest,
  type DeleteVolumeOptions,
  type DebugController,
  type DrainNodeRequest,
  type DebugProposeRequest,
  type DebugProposeResponse,
  type JoinRequest,
  type JoinResponse,
  type NodeConnections,
  type NodeInfo,
  type NodeStatus,
  type ReplicaInfo,
  type ScrubRequest,
  type ScrubResponse,
  type SetSettingRequest,
  type SettingInfo,
  type UpdateVolumeRequest,
  type VolumeInfo,
  type AttachmentInfo,
  type AttachRequest,
  type EventsResponse,
  type VolumeStatsResponse,
  type Caller,
  type AuditQuery,
  type AuditResponse,
  type CreateTokenRequest,
  type RevokeTokenRequest,
  type TokenInfo,
  type CreateSnapshotRequest,
  type RollbackRequest,
  type RollbackResult,
  type SnapshotHolding,
  type SnapshotInfo,
  type SnapshotScheduleRequest,
} from "../api/types.js";
import { printable } from "../base/printable.js";
import { failStop, isBug } from "../base/fail-stop.js";
import { Prng } from "../base/prng.js";
import { formatSize } from "../base/sizes.js";
import {
  catalogSettings,
  attachedProblem,
  CatalogCommandError,
  encodeCommand,
  encodeCommandUnchecked,
  listNames,
  replicaSetFor,
  resizeRefusal,
  settingValue,
  validateCommand,
  type ApplyResult,
  type CatalogNode,
  type CatalogCommand,
  type CatalogState,
  type CatalogVolume,
  type CloneSource,
  type VolumeEncryption,
  cloneSourceName,
  qosSummary,
  admitNode,
} from "../cluster/index.js";
import {
  checkClusterConstants,
  checkConstants,
  checkReplicationConstants,
  apiTokenTtlMsMax,
  logFieldCharsMax,
  ioNodeRequestsInFlightMax,
  resyncBandwidthBytesPerSecDefault,
  scrubBandwidthBytesPerSecDefault,
  scrubIntervalMsDefault,
} from "../constants.js";
import { listenNbd, type NbdListener } from "../os/nbd-listener.js";
import { loadNbdTls, type NbdTls } from "../os/nbd-tls.js";
import { nodeCertificate, readClusterCa, sealCa } from "../os/cluster-ca.js";
import { deferImmediate, NodeDisk } from "../os/node-disk.js";
import { monotonicMs, nodeTimers } from "../os/timers.js";
import { packageVersion } from "../os/package-version.js";
import { resolveHost } from "../os/resolve.js";
import { releaseSupervisorLock } from "../os/attachments.js";
import { attachmentInfos, VolumeAttachments } from "./volume-attachments.js";
import { startPeerTransport, type PeerListener } from "../os/peer-listener.js";
import { ConfChangeType } from "../raft/confchange.js";
import { MultiRaft, NotLeaderError, ProposalDroppedError } from "../replication/driver.js";
import { errorKindOf } from "../replication/errors.js";
import { Repairer } from "../replication/repair.js";
import { Scrubber } from "../replication/scrub.js";
import { ScrubControl } from "./scrub-control.js";
import { VolumeIo } from "../replication/volume-io.js";
import { dispatchPeerMessage } from "../replication/dispatch.js";
import type { ChecksumError } from "../store/errors.js";
import { Store } from "../store/store.js";
import { ClusterNode, metaGroupId } from "../node/cluster-node.js";
import { Access, checkReach, mayReach, ownerFor } from "./access.js";
import { checkSameCluster, clusterSecret, keepClusterSecret, makeCaAtBootstrap, usesTls, writeFirstAdminToken } from "./node-credentials.js";
import { AuditLog } from "./audit-log.js";
import { healthReasons, type HealthFacts } from "./health.js";
import { NodeState } from "./node-state.js";
import { NbdExports } from "./nbd-exports.js";
import type { DaemonOptions, Logger } from "./daemon-options.js";
import { describeSelf, enterCluster, joinProof } from "./cluster-join.js";
import { VolumeKeys } from "./volume-keys.js";
import { clusterKeySource } from "../os/cluster-key.js";
import { Snapshots } from "./snapshots.js";
import { NodeAdmission, resyncPacer } from "./qos.js";
import { NodeObserver } from "./node-observer.js";

const version = packageVersion;
export { metaGroupId };
const tickMs = 100;
const forwardDeadlineMs = 15000;
/** How long pxd audit waits for each other node's records. */
const auditAskTimeoutMs = 5000;
const selfRegisterEveryMs = 300;
const registerWaitMs = 10000;
/** How long an API write waits for the catalog's group to elect a leader before answering 503. */
const metaLeaderWaitMs = 5000;
/**
 * An NBD client naming a volume this node's catalog does not know waits at
 * most this long for the catalog to catch up with the meta leader (a node
 * just restarted, or a volume just created through another node). Below the
 * NBD handshake timeout, so the client gets an answer, not a closed socket.
 */
const catalogCatchUpMs = 6000;
const healthCheckEveryMs = 1000;
const replaceDownAfterMsDefault = 600_000;
/** How often each node converges the groups it leads to the catalog's replica sets. */
const reconcileEveryMs = 500;
/** How often the daemon looks whether a scheduled scrub is due. */
const scrubCheckEveryMs = 60_000;
/** How often the catalog's leader looks at the volumes' snapshot schedules (a schedule is at least a minute). */
const snapshotScheduleCheckEveryMs = 10_000;
/** How often the daemon looks for this host's attach agents that died (docs/attach.md). */
const agentCheckEveryMs = 5_000;
/** A delete asks every node for its NBD connections to the volume; one that has not answered within this is named in the refusal. */
const deleteAskTimeoutMs = 2000;
/** How often each volume's I/O counters are sampled for the console's graphs (VolumeStats.sample). */
const sampleEveryMs = 1000;

export class Daemon implements Controller {
  /** The catalog, the replicas it places here and the control loops (src/node). */
  private node!: ClusterNode;
  /** Each volume's QoS limits and the node's fair share between volumes, where NBD requests enter (src/daemon/qos.ts). */
  private readonly admission = new NodeAdmission({ now: monotonicMs, after: (ms, fn) => nodeTimers.setTimeout(fn, ms) }, ioNodeRequestsInFlightMax, (name) => this.catalog.volumes.get(name)?.qos);
  /** /metrics, the console's samples, events and copy progress (src/daemon/node-observer.ts). */
  private observer!: NodeObserver;
  /** What this node serves over NBD, and its connections (src/daemon/nbd-exports.ts). */
  private exports!: NbdExports;
  private readonly startedAt = process.hrtime.bigint();
  private attachments!: VolumeAttachments;
  private driver!: MultiRaft;
  private io!: VolumeIo;
  private snapshots!: Snapshots;
  private repairer!: Repairer;
  private scrubs!: ScrubControl;
  private peer: PeerListener | undefined;
  private nbd: NbdListener | undefined;
  private api: ApiServer | undefined;
  private timers: NodeJS.Timeout[] = [];
  private stopping: Promise<void> | undefined;
  private access!: Access;
  /** The cluster CA's certificate, which the API clients of this node trust (undefined with --api-plain-http). */
  private apiCa: string | undefined;
  private nbdTls: NbdTls | undefined;
  private auditLog!: AuditLog;
  private volumeKeys!: VolumeKeys;

  private constructor(
    readonly options: DaemonOptions,
    private readonly state: NodeState,
    private readonly store: Store,
    private readonly secret: Buffer,
    private readonly log: Logger,
    /** Where the store reports damage found in the background (GC); set once the repairer exists. */
    private readonly damage: { report(e: ChecksumError): void },
    /** The address --listen resolves to: every socket binds there (the catalog keeps the name as given, which the other nodes resolve). */
    private readonly bindAddress: string,
  ) {}

  static async start(options: DaemonOptions, log: Logger): Promise<Daemon> {
    checkConstants();
    checkReplicationConstants();
    checkClusterConstants();
    // TLS material is read before anything else, so a wrong path stops the start at once, with what to fix.
    const nbdTls = loadNbdTls(options.nbdTls ?? { mode: "off" });
    const keySource = clusterKeySource(options.clusterKeyFile);
    if (options.nbdTlsOwners === true && options.nbdTls?.mode !== "require") {
      throw new Error("--nbd-tls-owners needs --nbd-tls require: a client that has not proved an identity over TLS could reach no volume");
    }
    mkdirSync(options.dataDir, { recursive: true });
    const bindAddress = await resolveHost(options.listen, "--listen");
    if (bindAddress !== options.listen) log.info(`--listen ${options.listen} resolves to ${bindAddress}: the NBD, API and peer ports bind there`);
    if (options.join !== undefined) await resolveHost(parseApiAddress(options.join).host, "--join");
    const state = await NodeState.open(join(options.dataDir, "node"));
    let store: Store | undefined;
    try {
      // The node proposes this description itself (addNode) from a timer: refuse it here, where it can say which option to fix.
      const self = validateCommand({ kind: "addNode", ...describeSelf(options, state.nodeId), at: 0 });
      if (!self.ok) throw new Error(`this node's description is not one the catalog accepts (${self.error}); fix --name, --zone or --listen`);
      const bootstrapping = state.clusterId === "" && options.join === undefined;
      const secret = clusterSecret(options, state.clusterId !== "", bootstrapping);
      if (state.clusterId === "") await enterCluster(options, state, secret, log);
      else if (options.join !== undefined) await checkSameCluster(options, state.clusterId, log);
      // A member keeps the secret it joined with, so a restart needs only --data-dir (and a bootstrap's first admin token goes beside it).
      keepClusterSecret(options.dataDir, secret);
      if (bootstrapping) writeFirstAdminToken(options.dataDir, secret, log);
      if (bootstrapping) await makeCaAtBootstrap(options.dataDir, state.clusterId, usesTls(options), log);
      const specs = [{ groupId: metaGroupId, sizeBytes: 0 }, ...[...state.hosted.values()].map((g) => ({ groupId: g.id, sizeBytes: g.sizeBytes }))];
      const damage = { report: (_e: ChecksumError): void => {} };
      store = await Store.open({ disk: new NodeDisk(join(options.dataDir, "store")), defer: deferImmediate, log: (l) => log.info(l), onDamage: (e) => damage.report(e) }, specs);
      const d = new Daemon(options, state, store, secret, log, damage, bindAddress);
      d.nbdTls = nbdTls;
      d.volumeKeys = new VolumeKeys(keySource, state.nodeId, () => state.clusterId, (m) => log.warn(m));
      if (keySource !== undefined) log.info(`cluster key from ${keySource.description}: encrypted volumes are served here`);
      await d.wire();
      return d;
    } catch (e) {
      await store?.close().catch(() => {});
      await state.close();
      throw e;
    }
  }

  get nodeId(): number {
    return this.state.nodeId;
  }

  get nbdPort(): number {
    return this.nbd?.address.port ?? this.options.nbdPort;
  }

  private async wire(): Promise<void> {
    const { options, state, log } = this;
    const cert = usesTls(options) ? await nodeCertificate(options.dataDir, options.listen, options.name ?? `node-${state.nodeId}`, options.tlsNames ?? []) : undefined;
    this.peer = await startPeerTransport({
      ...(options.peerPlain !== true && cert !== undefined ? { tls: cert } : {}),
      nodeId: state.nodeId,
      clusterId: state.clusterId,
      secret: this.secret,
      host: this.bindAddress,
      port: options.peerPort,
      peers: state.peers,
      log,
    });
    const prng = new Prng(state.nodeId ^ Number(process.hrtime.bigint() & 0xffffffffn));
    const transport = this.peer.transport;
    this.repairer = new Repairer({
      nodeId: state.nodeId,
      store: this.store,
      send: (to, m) => transport.send(to, m),
      replicasOf: (group) => this.node.volumeById(group)?.nodes ?? [],
      nameOf: (group) => this.node.volumeById(group)?.name ?? `(group ${group})`,
      after: (ms, fn) => nodeTimers.setTimeout(fn, ms),
      now: () => performance.now(),
      log: (l) => log.warn(l),
    });
    this.damage.report = (e) => void this.repairer.repair(e);
    const scrubber = new Scrubber({
      store: this.store,
      repairer: this.repairer,
      nameOf: (group) => this.node.volumeById(group)?.name ?? `(group ${group})`,
      sleep: (ms) => new Promise((resolve) => (ms <= 0 ? setImmediate(resolve) : setTimeout(resolve, ms))),
      now: () => performance.now(),
      clock: () => Date.now(),
      log: (l) => log.warn(l),
    });
    this.scrubs = new ScrubControl(scrubber, {
      nodeId: state.nodeId,
      intervalMs: options.scrubIntervalMs ?? scrubIntervalMsDefault,
      bandwidthBytesPerSec: options.scrubBandwidthBytesPerSec ?? scrubBandwidthBytesPerSecDefault,
      catalog: () => this.catalog,
      selfName: () => this.selfName(),
      knownVolume: (name) => this.knownVolume(name),
      hostedVolumes: () => this.hostedVolumes(),
      hasGroup: (id) => this.store.hasGroup(id),
      nodeApi: (n, timeoutMs) => this.nodeApi(n, timeoutMs),
      scrubbedAt: () => state.scrubbedAt,
      setScrubbedAt: (ms) => state.setScrubbedAt(ms),
      wallMs: () => Date.now(),
      log,
    });
    // Every copy this node sends (volume copies, snapshot copies it makes) shares one rebuild bandwidth.
    const resync = resyncPacer({ now: monotonicMs, after: (ms, fn) => nodeTimers.setTimeout(fn, ms) }, () => this.resyncBandwidth);
    this.driver = new MultiRaft({
      nodeId: state.nodeId,
      store: this.store,
      send: (to, env) => transport.send(to, env),
      defer: deferImmediate,
      random: { int: (n) => prng.int(n) },
      log: (l) => log.warn(l),
      damaged: (e) => void this.repairer.repair(e),
      ...(options.logRetainBytes !== undefined ? { logRetainBytes: options.logRetainBytes } : {}),
      resync,
    });
    this.io = new VolumeIo({
      nodeId: state.nodeId,
      driver: this.driver,
      store: this.store,
      repairer: this.repairer,
      send: (to, m) => transport.send(to, m),
      after: (ms, fn) => nodeTimers.setTimeout(fn, ms),
      now: () => performance.now(),
      random: { int: (n) => prng.int(n) },
      deadlineMs: forwardDeadlineMs,
      replicasOf: (group) => this.node.volumeById(group)?.nodes ?? [],
      cipherOf: (group) => this.volumeKeys.cipherOf(group, (id) => this.node.volumeById(id)),
    });
    this.attachments = new VolumeAttachments({
      nodeId: state.nodeId,
      catalog: () => this.catalog,
      clusterId: () => this.state.clusterId,
      knownVolume: (name) => this.knownVolume(name),
      mustGet: (name) => this.mustGet(name),
      onMetaLeader: (caller, remote, local) => this.onMetaLeader(caller, remote, local),
      metaCommand: (command) => this.metaCommand(command),
      catalogError,
      leaderOf: (group) => this.driver.leader(group),
      info: (v) => this.info(v),
      nodeCaller: () => this.access.nodeCaller(),
      log,
    });
    this.snapshots = new Snapshots({
      nodeId: state.nodeId,
      catalog: () => this.catalog,
      store: this.store,
      io: this.io,
      driver: this.driver,
      knownVolume: (name) => this.knownVolume(name),
      mustGet: (name) => this.mustGet(name),
      metaLeaderApi: (caller) => this.metaLeaderApi(caller),
      nodeApi: (n, timeoutMs, token) => this.nodeApi(n, timeoutMs, token),
      metaCommand: (c) => this.metaCommand(c),
      catalogError,
      inUse: (v) => this.inUse(v),
      nbdUri: (name) => `nbd://${hostPort(this.options.listen, this.nbdPort)}/${name}`,
      forwarded: (change) => this.forwarded(change),
      rewrapKey: (v, name) => this.volumeKeys.rewrapFor(v, name),
      paceCopy: async (bytes) => {
        for (let wait = resync.waitMs(); wait > 0; wait = resync.waitMs()) await new Promise<void>((resolve) => resync.after(wait, resolve));
        resync.sent(bytes);
      },
      log: (line) => log.info(line),
    });
    this.node = new ClusterNode({
      nodeId: state.nodeId,
      store: this.store,
      driver: this.driver,
      state,
      self: () => describeSelf(options, state.nodeId, { nbdPort: this.nbdPort, apiPort: this.api?.port ?? options.apiPort }),
      isConnected: (id) => transport.isConnected(id),
      setTransportPeers: (peers) => transport.setPeers(peers),
      volumeGone: (name) => this.exports.volumeGone(name),
      growCatalog: (name, sizeBytes) => this.growCatalog(name, sizeBytes),
      monotonicMs,
      wallMs: () => Date.now(),
      after: (ms, fn) => nodeTimers.setTimeout(fn, ms),
      replaceDownAfterMs: options.replaceDownAfterMs ?? replaceDownAfterMsDefault,
      log,
    });
    const node = this.node;
    this.access = new Access(this.secret, () => `node-${state.nodeId}`, () => this.catalog.revokedTokens, () => Date.now());
    this.auditLog = new AuditLog(options.dataDir, this.secret, options.name ?? `node-${state.nodeId}`, (l) => log.warn(l));
    const parts = { driver: this.driver, io: this.io, repairer: this.repairer };
    transport.onMessage((from, m) => dispatchPeerMessage(parts, from, m));
    node.start(state.metaVoters);
    this.timers.push(setInterval(() => this.driver.tick(), tickMs));
    this.timers.push(setInterval(() => node.registerSelf(), selfRegisterEveryMs));
    this.timers.push(setInterval(() => node.promoteLearners(), selfRegisterEveryMs));
    this.timers.push(setInterval(() => node.detectFailures(), healthCheckEveryMs));
    this.timers.push(setInterval(() => node.reconcileReplicas(), reconcileEveryMs));
    this.timers.push(setInterval(() => this.scrubs.runIfDue(), scrubCheckEveryMs));
    this.timers.push(setInterval(() => this.attachments.supervise(), agentCheckEveryMs));
    this.timers.push(setInterval(() => this.runSnapshotSchedules(), snapshotScheduleCheckEveryMs));
    this.exports = new NbdExports({
      tlsOwners: options.nbdTlsOwners === true,
      io: this.io,
      volumeKeys: this.volumeKeys,
      catalog: () => this.catalog,
      catalogCatchUp: () => this.catalogCatchUp(),
      snapshotSizeHere: (v, s) => this.snapshots.sizeHere(v, s),
      gate: (volume) => this.admission.gate(volume),
      statsFor: (volume) => this.observer.statsFor(volume),
      closeExport: (name, why) => this.nbd?.server.closeExport(name, why) ?? 0,
      wallMs: () => Date.now(),
      log,
    });
    this.observer = new NodeObserver({
      nodeId: state.nodeId,
      countIo: options.metrics !== false,
      catalog: () => this.catalog,
      selfName: () => this.selfName(),
      knownVolume: (name) => this.knownVolume(name),
      nodeApi: (n, timeoutMs) => this.nodeApi(n, timeoutMs),
      hostedVolumes: () => this.hostedVolumes(),
      volumeById: (id) => node.volumeById(id),
      connections: (name) => this.exports.connections(name),
      isUp: (id) => this.isUp(id),
      volumeState: (v) => this.volumeState(v),
      allocatedBytes: (id) => (this.store.hasGroup(id) ? this.store.allocatedBytes(id) : undefined),
      copies: (group) => this.driver.snapshotSender.copies(group),
      groups: this.driver,
      admission: this.admission,
      parts: {
        store: () => this.store.stats(),
        nbd: () => this.nbd?.server.stats(),
        peers: () => this.peer?.transport.stats(),
        snapshots: () => this.driver.snapshotSender.counters,
        repair: () => this.repairer.counters,
        scrub: () => this.scrubs.counters,
      },
      wallMs: () => Date.now(),
      monoMs: () => performance.now(),
    });
    this.timers.push(setInterval(() => this.observer.everySecond(), sampleEveryMs));
    await this.untilRegistered();
    const nbdLimits = options.nbdIdleTimeoutMs !== undefined ? { idleTimeoutMs: options.nbdIdleTimeoutMs } : {};
    this.nbd = await listenNbd({ host: this.bindAddress, port: options.nbdPort, unixPath: join(options.dataDir, "nbd.sock"), registry: this.exports.registry(), log, limits: nbdLimits, ...(this.nbdTls !== undefined ? { tls: this.nbdTls } : {}) });
    const debug: DebugController | undefined = options.unsafeDebugApi === true ? { catalogPropose: (r) => this.debugCatalogPropose(r) } : undefined;
    if (debug !== undefined) log.warn("--unsafe-debug-api: POST /v1/debug/catalog-propose commits catalog entries without validation; a fault-injection hook for tests, never for a cluster that holds data");
    const apiTls = options.apiPlainHttp !== true ? cert : undefined;
    this.apiCa = apiTls?.caPem;
    this.api = await startApiServer({ host: this.bindAddress, port: options.apiPort, ...(apiTls !== undefined ? { tls: apiTls } : {}), controller: this,
      auth: this.access,
      audit: (e) => this.auditLog.append(e, Date.now()),
      ...(debug ? { debug } : {}),
      log: (l) => log.info(l),
    });
    log.info(`pxd ${version} node ${state.nodeId} of cluster ${state.clusterId}: ${state.hosted.size} volume replicas here, ${this.store.stats().recordsReplayed} log records replayed`);
  }

  /** Orderly shutdown: stop accepting, finish in-flight requests, flush, checkpoint, close. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      for (const t of this.timers) clearInterval(t);
      this.observer?.close();
      this.admission.close();
      releaseSupervisorLock();
      this.scrubs?.stop();
      const steps: [string, () => Promise<void>][] = [
        ["nbd", async () => this.nbd?.close()],
        ["api", async () => this.api?.close()],
        ["raft", async () => this.driver?.close()],
        ["peers", async () => this.peer?.close()],
        ["store", () => this.store.close()],
        ["node state", () => this.state.close()],
      ];
      for (const [what, step] of steps) {
        try {
          await step();
        } catch (e) {
          if (isBug(e)) failStop(e, `shutdown: closing ${what}`);
          this.log.error(`shutdown: closing ${what} failed: ${(e as Error).message}`);
        }
      }
    })();
    return this.stopping;
  }

  /** The catalog as this node has applied it. */
  private get catalog(): CatalogState {
    return this.node.catalog;
  }

  /**
   * Waits (bounded) until the catalog lists this node, so the API does not
   * answer volume requests with a catalog that does not know its own node yet.
   */
  private async untilRegistered(): Promise<void> {
    if (await this.node.whenCatalog((c) => c.nodes.has(this.nodeId), registerWaitMs)) return;
    this.log.warn(`the catalog does not list this node after ${registerWaitMs} ms (no quorum for the catalog's group?); serving anyway`);
  }



  /**
   * Proposes a catalog command on the meta leader (this node) and returns how
   * it applied. A command the catalog would refuse as invalid is refused here,
   * before it reaches the log: 400 with the catalog's sentence.
   */
  private async metaCommand(command: CatalogCommand): Promise<ApplyResult> {
    let data: Uint8Array;
    try {
      data = encodeCommand(command);
    } catch (e) {
      if (e instanceof CatalogCommandError) throw new ApiError(400, "invalid", e.message);
      throw e;
    }
    return this.proposeMeta(data);
  }

  /** Proposes an encoded catalog entry; a leadership lost or a catalog group stopped meanwhile is a 503 that says to retry. */
  private async proposeMeta(data: Uint8Array): Promise<ApplyResult> {
    try {
      return await this.node.proposeCommand(data);
    } catch (e) {
      if (!(e instanceof NotLeaderError || e instanceof ProposalDroppedError)) throw e;
      throw new ApiError(503, "unavailable", `the catalog did not take the change (${e.message}); retry in a few seconds, and see "pxd status" if it keeps failing`);
    }
  }

  /**
   * The meta leader's API client, or undefined when this node leads. During an
   * election there is briefly no leader: wait for one (bounded) before
   * answering 503.
   */
  private async metaLeaderApi(caller: Caller | undefined, timeoutMs = 20000): Promise<ApiClient | undefined> {
    for (let waited = 0; this.driver.leader(metaGroupId) === 0 && waited < metaLeaderWaitMs; waited += 50) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const leader = this.driver.leader(metaGroupId);
    if (leader === this.nodeId) return undefined;
    const n = this.catalog.nodes.get(leader);
    if (leader === 0 || n === undefined) {
      throw new ApiError(503, "unavailable", "the cluster's catalog has no leader right now (is a majority of its nodes down?); retry in a few seconds");
    }
    // A forwarded request carries its caller's own token, so the leader checks the same caller; the node's own requests carry the node's.
    return this.nodeApi(n, timeoutMs, caller?.token);
  }

  /** The control API of another node of the cluster, with the caller's token, else this node's own. */
  private nodeApi(n: CatalogNode, timeoutMs: number, token?: string): ApiClient {
    return new ApiClient(hostPort(n.address, n.apiPort), { timeoutMs, token: token ?? this.access.nodeToken(), ...(this.apiCa !== undefined ? { ca: this.apiCa } : {}) });
  }

  /**
   * Brings this node's catalog up to the meta leader's commit index as it is
   * now, so a lookup after it sees every volume created before it began. A
   * follower applies committed entries only once the leader tells it the
   * commit index, and a restarted node replays only up to the commit index it
   * had on disk. Bounded by catalogCatchUpMs; never rejects (a node cut off
   * from the leader answers from what it has).
   */
  /** The last meta entry applied to the catalog. */
  private catalogIndex(): number {
    return this.store.raftState(metaGroupId).appliedIndex;
  }

  /**
   * A catalog change forwarded to the catalog's leader, answered once this
   * node's catalog has it too: the caller's next request here sees its own
   * change (a volume it deleted is not listed).
   */
  private async forwarded<T>(change: Promise<T>): Promise<T> {
    const result = await change;
    await this.catalogCatchUp();
    return result;
  }

  /**
   * A request the catalog's leader serves: forwarded there with the caller's
   * token (`remote`, answered as forwarded() does) when another node leads,
   * else served here (`local`).
   */
  private async onMetaLeader<T>(caller: Caller | undefined, remote: (api: ApiClient) => Promise<T>, local: () => Promise<T>): Promise<T> {
    const leaderApi = await this.metaLeaderApi(caller);
    return leaderApi ? this.forwarded(remote(leaderApi)) : local();
  }

  private async catalogCatchUp(): Promise<void> {
    const deadline = Date.now() + catalogCatchUpMs;
    try {
      const api = await this.metaLeaderApi(undefined, 1000);
      const target = api === undefined ? (this.driver.status(metaGroupId)?.commit ?? 0) : (await api.status()).catalog.commitIndex;
      await this.node.whenCatalog(() => this.catalogIndex() >= target, Math.max(0, deadline - Date.now()));
    } catch (e) {
      this.log.info(`catalog catch-up failed, answering from this node's copy: ${(e as Error).message}`);
    }
  }

  // ---- replica changes (ha-update) ----



  /** On the meta leader: a resize (first, so new replicas are placed with the new size counted), then a replica count. */
  async updateVolume(name: string, request: UpdateVolumeRequest, caller: Caller): Promise<VolumeInfo> {
    checkReach(caller, await this.knownVolume(name));
    return this.onMetaLeader(caller, (api) => api.updateVolume(name, request), () => this.updateVolumeOnLeader(name, request));
  }

  private async updateVolumeOnLeader(name: string, request: UpdateVolumeRequest): Promise<VolumeInfo> {
    if (request.sizeBytes !== undefined) await this.resizeVolume(name, request.sizeBytes);
    if (request.maxIops !== undefined || request.maxBandwidthBytesPerSec !== undefined || request.burstSec !== undefined) await this.setVolumeQos(name, request);
    if (request.repl !== undefined) await this.setRepl(name, request.repl);
    return this.info(this.mustGet(name));
  }

  private async setRepl(name: string, repl: number): Promise<void> {
    const was = [...this.mustGet(name).nodes];
    const set = replicaSetFor(this.catalog, name, repl);
    if ("error" in set) throw new ApiError(409, "placement", set.error);
    const result = await this.metaCommand({ kind: "setReplicas", name, nodes: set.nodes, repl, expect: was });
    if (!result.ok) throw catalogError(result);
    this.log.info(`volume ${name}: ${repl} replicas wanted, on nodes ${this.mustGet(name).nodes.join(", ")} (were ${was.join(", ")})`);
  }

  /**
   * On the meta leader: grows a volume (docs/architecture.md, "Resize"). The
   * volume's group takes the resize first, so every replica grows at one log
   * index; then the catalog records the size, and only then do NBD handshakes
   * and inspect show it, so a client never sees a size its replicas refuse.
   * The catalog's rule (grow only, room on every replica's node) is checked
   * before the group grows. A stop in between leaves the group larger than
   * the catalog: the group's leader then asks for the catalog's change
   * itself (ClusterNode.reconcileReplicas, growCatalog).
   */
  private async resizeVolume(name: string, sizeBytes: number): Promise<void> {
    const v = this.mustGet(name);
    const refused = resizeRefusal(this.catalog, name, sizeBytes);
    if (refused !== undefined) throw catalogError(refused);
    if (sizeBytes === v.sizeBytes) return;
    try {
      await this.io.resize(v.id, sizeBytes);
    } catch (e) {
      const kind = errorKindOf(e);
      if (kind === undefined) throw e;
      throw new ApiError(503, "unavailable", `volume "${name}" did not grow: its replicas did not take the resize (${kind}: ${(e as Error).message}); retry, and see "pxd volume inspect ${name}" if it keeps failing`);
    }
    const result = await this.metaCommand({ kind: "resizeVolume", name, sizeBytes });
    if (!result.ok) throw catalogError(result);
    this.log.info(`volume ${name}: grown from ${formatSize(v.sizeBytes)} to ${formatSize(sizeBytes)}`);
  }

  /** A volume group's leader found its group larger than the catalog says (a resize stopped between the two): asks the meta leader to record it. */
  private async growCatalog(name: string, sizeBytes: number): Promise<void> {
    const api = await this.metaLeaderApi(undefined);
    if (api === undefined) await this.resizeVolume(name, sizeBytes);
    else await api.updateVolume(name, { sizeBytes });
  }

  private async setVolumeQos(name: string, request: UpdateVolumeRequest): Promise<void> {
    const result = await this.metaCommand({
      kind: "setVolumeQos",
      name,
      ...(request.maxIops !== undefined ? { maxIops: request.maxIops } : {}),
      ...(request.maxBandwidthBytesPerSec !== undefined ? { maxBandwidthBytes: request.maxBandwidthBytesPerSec } : {}),
      ...(request.burstSec !== undefined ? { burstSec: request.burstSec } : {}),
    });
    if (!result.ok) throw catalogError(result);
    if (result.changed) this.log.info(`volume ${name}: QoS ${((q) => qosSummary(q.maxIops, q.maxBandwidthBytes, q.burstSec))(this.mustGet(name).qos)}`);
  }

  // ---- attachments (pxd volume attach) ----

  attachVolume(name: string, request: AttachRequest, caller: Caller): Promise<VolumeInfo> {
    return this.attachments.attach(name, request, caller);
  }

  detachVolume(name: string, host: string, caller: Caller): Promise<void> {
    return this.attachments.detach(name, host, caller);
  }

  async listAttachments(caller: Caller): Promise<AttachmentInfo[]> {
    return this.attachments.list(caller);
  }

  volumeServers(name: string): Promise<string[]> {
    return this.attachments.servers(name);
  }

  // ---- Controller (control API) ----

  async status(): Promise<NodeStatus> {
    const fsStat = statfsSync(this.options.dataDir);
    const stats = this.store.stats();
    const nodes = await this.listNodes();
    const up = nodes.filter((n) => n.health === "up");
    const disk = { totalBytes: fsStat.blocks * fsStat.bsize, freeBytes: fsStat.bavail * fsStat.bsize };
    const reasons = healthReasons({
      ...this.stoppedGroups(),
      ...this.damagedGroups(),
      nodesDown: nodes.filter((n) => n.health !== "up").map((n) => n.name),
      storeFailure: this.store.failure?.message,
      disk,
    });
    return {
      nodeId: String(this.nodeId),
      version,
      dataDir: this.options.dataDir,
      listen: this.options.listen,
      nbdPort: this.nbdPort,
      apiPort: this.api?.port ?? this.options.apiPort,
      peerPort: this.options.peerPort,
      uptimeSec: Math.floor(Number(process.hrtime.bigint() - this.startedAt) / 1e9),
      health: reasons.length === 0 ? "online" : "degraded",
      reasons,
      capacity: { ...disk, usedBytes: stats.diskBytes ?? 0 },
      volumeCount: this.catalog.volumes.size,
      store: stats,
      clusterId: this.state.clusterId,
      catalog: {
        leader: this.driver.leader(metaGroupId),
        commitIndex: this.driver.status(metaGroupId)?.commit ?? 0,
        appliedIndex: this.catalogIndex(),
        snapshotIndex: this.store.stateSnapshot(metaGroupId)?.index ?? 0,
        logFirstIndex: this.store.raftFirstIndex(metaGroupId),
        startSnapshotIndex: this.node.catalogStart.snapshotIndex,
        startReplayedEntries: this.node.catalogStart.replayedEntries,
        refusals: this.catalog.refusals.map((r) => ({ ...r })),
      },
      nodes,
      pool: {
        totalBytes: up.reduce((a, n) => a + n.capacityBytes, 0),
        usedBytes: up.reduce((a, n) => a + n.usedBytes, 0),
        freeBytes: up.reduce((a, n) => a + n.freeBytes, 0),
      },
      integrity: {
        checksumErrors: this.store.counters.checksumErrors,
        blocksRepaired: this.repairer.counters.blocksRepaired,
        blocksUnrepaired: this.repairer.counters.blocksUnrepaired,
        scrub: this.scrubs.summary(),
      },
    };
  }

  /** Groups the driver stopped here (their log could not be persisted), the catalog's apart from the volumes'. */
  private damagedGroups(): Pick<HealthFacts, "volumesDamaged" | "volumesRecovering"> {
    const name = (id: number): string => (id === metaGroupId ? "the catalog" : (this.node.volumeById(id)?.name ?? `group ${id}`));
    return {
      volumesDamaged: [...this.repairer.unrepaired()].map(([id, blocks]) => ({ name: name(id), blocks })),
      volumesRecovering: this.driver.withholdingVotes().map(name),
    };
  }

  private stoppedGroups(): Pick<HealthFacts, "catalogStopped" | "volumesStopped"> {
    const byId = new Map([...this.catalog.volumes.values()].map((v) => [v.id, v.name]));
    const stopped = [...this.driver.stoppedGroups()];
    return {
      catalogStopped: stopped.find(([id]) => id === metaGroupId)?.[1],
      volumesStopped: stopped.filter(([id]) => id !== metaGroupId).map(([id, why]) => ({ name: byId.get(id) ?? `group ${id}`, why })),
    };
  }

  async listNodes(): Promise<NodeInfo[]> {
    const metaLeader = this.driver.leader(metaGroupId);
    const voters = new Set(this.driver.voters(metaGroupId));
    return [...this.catalog.nodes.values()].map((n) => ({
      id: n.id,
      name: n.name,
      address: n.address,
      nbdPort: n.nbdPort,
      apiPort: n.apiPort,
      peerPort: n.peerPort,
      health: this.isUp(n.id) ? "up" : "down",
      catalogHealth: n.health,
      capacityBytes: n.capacityBytes,
      freeBytes: n.freeBytes,
      usedBytes: n.usedBytes,
      labels: { ...n.labels },
      draining: n.draining,
      metaVoter: voters.has(n.id),
      metaLeader: n.id === metaLeader,
    }));
  }

  /** On the meta leader: marks the node draining (or not); moveReplicas then moves its replicas off, one volume at a time. */
  async drainNode(ref: string, request: DrainNodeRequest, caller?: Caller): Promise<NodeInfo> {
    return this.onMetaLeader(caller, (api) => api.drainNode(ref, request), async () => {
      const id = this.nodeByRef(ref);
      const draining = request.draining ?? true;
      const result = await this.metaCommand({ kind: "drainNode", id, draining });
      if (!result.ok) throw catalogError(result);
      if (result.changed) this.log.info(`node ${id} (${result.node?.name ?? "?"}) ${draining ? "is draining: its replicas move to other nodes" : "is no longer draining"}`);
      return (await this.listNodes()).find((n) => n.id === id)!;
    });
  }

  /**
   * On the meta leader: removes a node that is down from the catalog (the
   * catalog refuses while it holds replicas, unless forced: they are then
   * dropped from their replica sets and moveReplicas places new ones), then
   * from the catalog's Raft group, so it no longer counts toward its quorum.
   * A node out of the catalog but still in the group (the second step failed)
   * is removed from the group when asked again by its id.
   */
  async removeNode(ref: string, options: { force: boolean }, caller?: Caller): Promise<void> {
    return this.onMetaLeader(caller, (api) => api.removeNode(ref, options), async () => {
      const members = [...this.driver.voters(metaGroupId), ...this.driver.learners(metaGroupId)];
      const leftover = members.find((id) => String(id) === ref && !this.catalog.nodes.has(id));
      const id = leftover ?? this.nodeByRef(ref);
      const n = this.catalog.nodes.get(id);
      if (n !== undefined) {
        if (id === this.nodeId || n.health !== "down") {
          throw new ApiError(409, "conflict", `node ${id} (${n.name}) is up; stop its daemon first and remove it once pxd node list shows it down (pxd node drain moves its replicas off while it runs)`);
        }
        const result = await this.metaCommand({ kind: "removeNode", id, ...(options.force ? { force: true } : {}) });
        if (!result.ok) throw catalogError(result);
      }
      if (members.includes(id)) {
        try {
          await this.driver.proposeConfChange(metaGroupId, { type: ConfChangeType.removeNode, nodeId: id });
        } catch (e) {
          throw new ApiError(503, "unavailable", `node ${id} left the catalog but is still a member of the catalog's Raft group (${(e as Error).message}); run pxd node remove ${id} again`);
        }
      }
      this.log.info(`node ${id}${n === undefined ? "" : ` (${n.name})`} removed from the cluster`);
    });
  }

  /** Every setting the catalog knows, with its value here. */
  async listSettings(): Promise<SettingInfo[]> {
    return Object.keys(catalogSettings).map((key) => this.settingInfo(key));
  }

  private settingInfo(key: string): SettingInfo {
    const spec = catalogSettings[key]!;
    const value = this.catalog.settings.get(key);
    return { key, value: value ?? spec.defaultValue, defaultValue: spec.defaultValue, set: value !== undefined, doc: spec.doc };
  }

  /** On the meta leader: sets a setting (null: back to its default); the catalog refuses an unknown key or a value out of its range (400). */
  async setSetting(key: string, request: SetSettingRequest, caller?: Caller): Promise<SettingInfo> {
    return this.onMetaLeader(caller, (api) => api.setSetting(key, request.value), async () => {
      const result = await this.metaCommand({ kind: "setSetting", key, value: request.value });
      if (!result.ok) throw catalogError(result);
      return this.settingInfo(key);
    });
  }

  async listVolumes(caller: Caller): Promise<VolumeInfo[]> {
    return [...this.catalog.volumes.values()].filter((v) => mayReach(caller, v)).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)).map((v) => this.info(v));
  }

  /** Replica states come from the volume's leader, which tracks every replica's progress; asked when it is another node. */
  async inspectVolume(name: string, caller: Caller): Promise<VolumeInfo> {
    const v = await this.knownVolume(name);
    checkReach(caller, v);
    const [info, scrub] = await Promise.all([this.replicaStates(v), this.scrubs.replicaScrubs(v)]);
    const waited = this.admission.counters(v.name);
    const node = this.selfName();
    return { ...info, scrub, ...(waited !== undefined ? { throttle: { node, ...waited } } : {}) };
  }

  /**
   * The volume with its replicas' states as its group's leader sees them: on
   * a node in the group, asked of the leader it knows (none known: what
   * this node knows); on another node, asked of the first replica node that
   * answers, which asks its leader in turn. A node in the group never asks
   * one that is not its leader, so the questions cannot go round in a loop.
   */
  private async replicaStates(v: CatalogVolume): Promise<VolumeInfo> {
    const mine = this.info(v);
    const leader = this.driver.leader(v.id);
    const ask = !this.driver.hasGroup(v.id) ? v.nodes.filter((id) => id !== this.nodeId) : leader === this.nodeId ? [] : [leader];
    for (const id of ask) {
      const n = this.catalog.nodes.get(id);
      if (n === undefined) continue;
      try {
        const remote = await this.nodeApi(n, 2000).inspectVolume(v.name);
        return { ...mine, replicas: remote.replicas, allocatedBytes: remote.allocatedBytes, ...(remote.log ? { log: remote.log } : {}) };
      } catch {
        // that node did not answer: the next one, or what this node knows
      }
    }
    return mine;
  }

  async createVolume(request: CreateVolumeRequest, caller: Caller): Promise<VolumeInfo> {
    const owner = ownerFor(caller, request.owner);
    return this.onMetaLeader(caller, (api) => api.createVolume(request), () => this.createVolumeOnLeader(request, owner, caller));
  }

  private async createVolumeOnLeader(request: CreateVolumeRequest, owner: string, caller: Caller): Promise<VolumeInfo> {
    const nodes = request.nodes?.map((ref) => this.nodeByRef(ref));
    const repl = request.repl ?? nodes?.length ?? Number(settingValue(this.catalog, "defaultRepl"));
    const c = request.clone;
    const create = (source?: CloneSource, encryption?: VolumeEncryption): Promise<VolumeInfo> => this.createVolumeHere(request, owner, repl, nodes, source, encryption);
    return c === undefined ? create() : this.snapshots.clone(c.volume, c.snapshot, request.name, repl, nodes, caller, create);
  }

  private async createVolumeHere(request: CreateVolumeRequest, owner: string, repl: number, nodes: number[] | undefined, source?: CloneSource, encryption?: VolumeEncryption): Promise<VolumeInfo> {
    const result = await this.metaCommand({
      kind: "createVolume",
      name: request.name,
      sizeBytes: request.sizeBytes,
      repl,
      ...(nodes !== undefined ? { nodes } : {}),
      ...(request.zones === true ? { zones: true } : {}),
      ...(request.shared === true ? { shared: true } : {}),
      owner,
      ...(request.maxIops !== undefined ? { maxIops: request.maxIops } : {}),
      ...(request.maxBandwidthBytesPerSec !== undefined ? { maxBandwidthBytes: request.maxBandwidthBytesPerSec } : {}),
      ...(request.burstSec !== undefined ? { burstSec: request.burstSec } : {}),
      ...(request.encrypted === true ? { encryption: this.volumeKeys.newEncryption(request.name) } : encryption !== undefined ? { encryption } : {}),
      ...(source !== undefined ? { source } : {}),
      at: Date.now(),
    });
    if (!result.ok) throw catalogError(result);
    const v = this.catalog.volumes.get(request.name)!;
    const from = source === undefined ? "" : `, a clone of ${request.clone!.volume}@${request.clone!.snapshot} started on nodes ${source.seeds.join(", ")}`;
    this.log.info(`volume ${v.name} created: ${formatSize(v.sizeBytes)}, id ${v.id}, replicas on nodes ${v.nodes.join(", ")}${from}${v.encryption !== null ? `, encrypted (${v.encryption.cipher})` : ""}`);
    return this.info(v);
  }

  /**
   * On the catalog's leader: asks every node whether it serves the volume and
   * refuses while any does or does not answer; forced, has every node
   * disconnect its clients first. Then the catalog drops the volume.
   */
  async deleteVolume(name: string, options: DeleteVolumeOptions, caller: Caller): Promise<void> {
    checkReach(caller, await this.knownVolume(name));
    return this.onMetaLeader(caller, (api) => api.deleteVolume(name, options), () => this.deleteVolumeOnLeader(name, options));
  }

  private async deleteVolumeOnLeader(name: string, options: DeleteVolumeOptions): Promise<void> {
    const force = options.force === true;
    // Before the nodes are asked about their clients: an attached volume's refusal names its hosts.
    const attached = attachedProblem(this.mustGet(name));
    if (attached !== undefined && !force) throw new ApiError(409, "attached", attached);
    const answers = await this.askEveryNode(
      (api) => (force ? api.disconnectVolume(name) : api.volumeConnections(name)),
      () => (force ? this.disconnectHere(name) : this.connectionsHere(name)),
    );
    const busy = busyProblem(name, answers, force);
    if (busy !== undefined) throw new ApiError(409, "busy", busy);
    const result = await this.metaCommand({ kind: "deleteVolume", name, ...(force ? { force: true } : {}) });
    if (!result.ok) throw catalogError(result);
    const closed = answers.reduce((n, a) => n + (a.connections ?? 0), 0);
    const silent = answers.filter((a) => a.connections === undefined).map((a) => a.node);
    this.log.info(`volume ${name} deleted${force ? `; --force closed ${closed} NBD connection(s)${silent.length > 0 ? `, and ${listNames(silent)} did not answer` : ""}` : ""}`);
  }

  // ---- snapshots (src/daemon/snapshots.ts) ----

  createSnapshot(volume: string, request: CreateSnapshotRequest, caller: Caller): Promise<SnapshotInfo> {
    return this.snapshots.create(volume, request, caller);
  }

  listSnapshots(volume: string | undefined, caller: Caller): Promise<SnapshotInfo[]> {
    return this.snapshots.list(volume, caller);
  }

  inspectSnapshot(volume: string, snapshot: string, caller: Caller): Promise<SnapshotInfo> {
    return this.snapshots.inspect(volume, snapshot, caller);
  }

  snapshotHolding(volume: string, snapshot: string, caller: Caller): Promise<SnapshotHolding> {
    return this.snapshots.holdingHere(volume, snapshot, caller);
  }

  deleteSnapshot(volume: string, snapshot: string, caller: Caller): Promise<void> {
    return this.snapshots.delete(volume, snapshot, caller);
  }

  rollbackVolume(volume: string, request: RollbackRequest, caller: Caller): Promise<RollbackResult> {
    return this.snapshots.rollback(volume, request, caller);
  }

  /** One schedule pass at a time: a slow snapshot (a leader election) does not stack passes. */
  private schedulesRunning = false;

  private runSnapshotSchedules(): void {
    this.snapshots.dropUnlisted();
    void this.snapshots.copyMissing();
    if (this.schedulesRunning) return;
    this.schedulesRunning = true;
    void this.snapshots.runSchedules(this.driver.leader(metaGroupId) === this.nodeId, monotonicMs(), Date.now()).finally(() => {
      this.schedulesRunning = false;
    });
  }

  async setSnapshotSchedule(volume: string, request: SnapshotScheduleRequest, caller: Caller): Promise<VolumeInfo> {
    checkReach(caller, await this.knownVolume(volume));
    return this.onMetaLeader(caller, (api) => api.setSnapshotSchedule(volume, request), async () => this.info(await this.snapshots.setSchedule(volume, request)));
  }

  /** Why the volume may not change under its clients now: attached to a host, or served over NBD by a node (or a node did not answer). */
  private async inUse(v: CatalogVolume): Promise<string | undefined> {
    const attached = attachedProblem(v);
    if (attached !== undefined) return attached;
    const answers = await this.askEveryNode(
      (api) => api.volumeConnections(v.name),
      () => this.connectionsHere(v.name),
    );
    return busyProblem(v.name, answers, false);
  }

  async volumeConnections(name: string, caller: Caller): Promise<NodeConnections> {
    const v = this.catalog.volumes.get(name);
    if (v !== undefined) checkReach(caller, v);
    return this.connectionsHere(name);
  }

  async disconnectVolume(name: string, caller: Caller): Promise<NodeConnections> {
    const v = await this.knownVolume(name).catch(() => undefined); // a name this node does not know has no connections and needs no fence
    if (v !== undefined) checkReach(caller, v);
    return this.disconnectHere(name);
  }

  private connectionsHere(name: string): NodeConnections {
    return { nodeId: this.nodeId, node: this.selfName(), connections: this.exports.connections(name) };
  }

  /** Closes this node's NBD connections to the volume, and fences it until the delete applies (NbdExports.disconnect). */
  private disconnectHere(name: string): NodeConnections {
    const closed = this.exports.disconnect(name);
    return { ...this.connectionsHere(name), connections: closed };
  }

  /** Asks every node of the catalog (this one without the network); a node that does not answer in time has `connections` undefined and `error` set. */
  private askEveryNode(remote: (api: ApiClient) => Promise<NodeConnections>, local: () => NodeConnections): Promise<{ node: string; connections?: number; error?: string }[]> {
    return Promise.all(
      [...this.catalog.nodes.values()].map(async (n) => {
        if (n.id === this.nodeId) return { node: n.name, connections: local().connections };
        try {
          return { node: n.name, connections: (await remote(this.nodeApi(n, deleteAskTimeoutMs))).connections };
        } catch (e) {
          const why = e instanceof DaemonUnreachableError ? e.code : e instanceof ApiError ? `${e.status} ${e.code}` : (e as Error).message;
          return { node: n.name, error: why };
        }
      }),
    );
  }

  /** The fault-injection hook: an entry committed as given, unvalidated, on the catalog's leader. */
  private async debugCatalogPropose(request: DebugProposeRequest): Promise<DebugProposeResponse> {
    return this.onMetaLeader(undefined, (api) => api.debugCatalogPropose(request), async () => {
      const data = request.hex !== undefined ? Buffer.from(request.hex, "hex") : encodeCommandUnchecked(request.command);
      const r = await this.proposeMeta(data);
      this.log.warn(`unsafe debug API: catalog entry ${r.index} committed without validation; ${r.ok ? "it applied" : `refused (${r.code}): ${r.error}`}`);
      return r.ok ? { index: r.index, ok: true } : { index: r.index, ok: false, code: r.code, error: r.error };
    });
  }

  async join(request: JoinRequest): Promise<JoinResponse> {
    const { proof, ...fields } = request;
    const expected = joinProof(this.secret, fields);
    const given = Buffer.from(typeof proof === "string" ? proof : "", "hex");
    const who = `node ${request.id} ("${printable(request.name, logFieldCharsMax)}" at ${printable(request.address, logFieldCharsMax)})`;
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      this.log.warn(`join refused for ${who}: wrong cluster secret`);
      throw new ApiError(403, "forbidden", "the join request does not prove the cluster secret; start the node with the cluster's --cluster-secret");
    }
    const admit = admitNode(fields, Date.now());
    if ("error" in admit) {
      this.log.warn(`join refused for ${who}: ${admit.error}`);
      throw new ApiError(400, "invalid", `the join request is not one the catalog accepts: ${admit.error}; fix the joining node's --name, --zone or --listen`);
    }
    // Not onMetaLeader: the joining node never asks this one again, so the leader's answer goes back without this node's catalog catching up.
    const leaderApi = await this.metaLeaderApi(undefined);
    if (leaderApi) return leaderApi.join(request);
    let added: ApplyResult;
    try {
      added = await this.node.admit(admit.command);
    } catch (e) {
      if (!(e instanceof NotLeaderError || e instanceof ProposalDroppedError)) throw e;
      throw new ApiError(503, "unavailable", `the catalog did not take the join (${e.message}); retry in a few seconds`);
    }
    if (!added.ok) throw catalogError(added);
    this.log.info(`${who} joined`);
    const ca = readClusterCa(this.options.dataDir);
    return {
      clusterId: this.state.clusterId,
      metaVoters: this.state.metaVoters,
      peers: [...this.catalog.nodes.values()].map((n) => ({ id: n.id, host: n.address, port: n.peerPort })),
      ...(ca !== undefined ? { ca: sealCa(ca, this.secret) } : {}),
    };
  }

  clusterId(): string {
    return this.state.clusterId;
  }

  /** Any node signs: every node holds the key. */
  async createToken(request: CreateTokenRequest, caller: Caller): Promise<TokenInfo> {
    const made = this.access.create(request);
    this.log.info(`token ${made.id} made for "${made.name}" (${made.role}, until ${made.expiresAt}) by "${caller.name}"`);
    return made;
  }

  /** On the meta leader: the catalog remembers the revocation until the token expires (or the longest token lifetime, when the expiry is not given). */
  async revokeToken(request: RevokeTokenRequest, caller: Caller): Promise<{ id: string; revoked: boolean }> {
    return this.onMetaLeader(caller, (api) => api.revokeToken(request), async () => {
      const at = Date.now();
      const result = await this.metaCommand({ kind: "revokeToken", id: request.id, expiresAt: request.expiresAt ?? at + apiTokenTtlMsMax, at });
      if (!result.ok) throw catalogError(result);
      this.log.info(`token ${request.id} revoked by "${caller.name}"`);
      return { id: request.id, revoked: result.changed };
    });
  }

  /** This node's audit records, or every node's (each asked with this node's token; one that does not answer has `error`). */
  async audit(query: AuditQuery, _caller: Caller): Promise<AuditResponse> {
    const here = (): AuditResponse["nodes"][number] => ({ node: this.selfName(), ...this.auditLog.read(query.sinceMs) });
    if (query.local) return { nodes: [here()] };
    const nodes = await Promise.all(
      [...this.catalog.nodes.values()].map(async (n) => {
        if (n.id === this.nodeId) return here();
        try {
          return (await this.nodeApi(n, auditAskTimeoutMs).audit(query.sinceMs, { local: true })).nodes[0] ?? { node: n.name, records: [], error: "it sent no records" };
        } catch (e) {
          return { node: n.name, records: [], error: (e as Error).message };
        }
      }),
    );
    return { nodes };
  }

  // ---- metrics, events, the console's samples (src/daemon/node-observer.ts) ----

  metrics(): Promise<string> {
    return this.observer.metrics();
  }

  events(sinceSeq: number): Promise<EventsResponse> {
    return this.observer.events(sinceSeq);
  }

  volumeStats(name: string, local: boolean, caller: Caller): Promise<VolumeStatsResponse> {
    return this.observer.volumeStats(name, local, caller);
  }

  // ---- scrub (src/daemon/scrub-control.ts) ----

  scrub(request: ScrubRequest): Promise<ScrubResponse> {
    return this.scrubs.scrub(request);
  }

  scrubStatus(): Promise<ScrubResponse> {
    return this.scrubs.status();
  }

  /** This node's name in the catalog. */
  private selfName(): string {
    return this.catalog.nodes.get(this.nodeId)?.name ?? `node-${this.nodeId}`;
  }

  /** A node is up, as this node sees it, when it is this node or connected to it. */
  private isUp(id: number): boolean {
    return id === this.nodeId || this.peer?.transport.isConnected(id) === true;
  }

  private volumeState(v: CatalogVolume): VolumeInfo["state"] {
    return this.repairer.unrepaired().has(v.id) ? "damaged" : "online";
  }

  /** Bytes a second this node's volume copies take together (0: no limit): the catalog's setting, else --resync-bandwidth. */
  private get resyncBandwidth(): number {
    const v = settingValue(this.catalog, "resyncBandwidthBytesPerSec");
    return typeof v === "number" && v >= 0 ? v : (this.options.resyncBandwidthBytesPerSec ?? resyncBandwidthBytesPerSecDefault);
  }

  /** The volume groups this node holds a replica of, by id. */
  private hostedVolumes(): number[] {
    return [...this.state.hosted.keys()].filter((id) => this.store.hasGroup(id)).sort((a, b) => a - b);
  }

  /** A node named by its name or its id (as pxd node list shows them). */
  private nodeByRef(ref: string): number {
    for (const n of this.catalog.nodes.values()) if (n.name === ref || String(n.id) === ref) return n.id;
    throw new ApiError(404, "not_found", `no node named or numbered ${JSON.stringify(ref)}; pxd node list shows the nodes`);
  }

  /** The volume, after catching this node's catalog up with the leader if it does not know the name (a volume just created elsewhere). */
  private async knownVolume(name: string): Promise<CatalogVolume> {
    if (!this.catalog.volumes.has(name)) await this.catalogCatchUp();
    return this.mustGet(name);
  }

  private mustGet(name: string): CatalogVolume {
    const v = this.catalog.volumes.get(name);
    if (v === undefined) throw new ApiError(404, "not_found", `no volume named "${name}"; see "pxd volume list"`);
    return v;
  }

  private info(v: CatalogVolume): VolumeInfo {
    const leader = this.driver.leader(v.id);
    return {
      id: v.id,
      name: v.name,
      sizeBytes: v.sizeBytes,
      repl: v.repl,
      createdAt: new Date(v.createdAt).toISOString(),
      state: this.volumeState(v),
      allocatedBytes: this.store.hasGroup(v.id) ? this.store.allocatedBytes(v.id) : 0,
      nbdUri: `nbd://${hostPort(this.options.listen, this.nbdPort)}/${v.name}`,
      connections: this.exports.connections(v.name),
      replicas: this.replicas(v, leader),
      shared: v.shared,
      encrypted: v.encryption !== null,
      ...(v.source !== null ? { clonedFrom: cloneSourceName(this.catalog, v.source) } : {}),
      owner: v.owner,
      attachments: attachmentInfos(v),
      snapshots: v.snapshots.length,
      ...(v.snapshotEveryMs > 0 ? { snapshotSchedule: { everySec: v.snapshotEveryMs / 1000, keep: v.snapshotKeep } } : {}),
      qos: { maxIops: v.qos.maxIops, maxBandwidthBytesPerSec: v.qos.maxBandwidthBytes, burstSec: v.qos.burstSec },
      ...(this.store.hasGroup(v.id) ? { log: (({ firstIndex, lastIndex }) => ({ firstIndex, lastIndex }))(this.store.raftState(v.id)) } : {}),
    };
  }

  private replicas(v: CatalogVolume, leader: number): ReplicaInfo[] {
    const progress = this.driver.progress(v.id);
    const last = this.driver.status(v.id)?.lastIndex ?? 0;
    const learners = this.driver.learners(v.id);
    return v.nodes.map((id) => {
      const name = this.catalog.nodes.get(id)?.name ?? `node-${id}`;
      const p = progress?.find((x) => x.node === id);
      const connected = id === this.nodeId || this.peer?.transport.isConnected(id) === true;
      let state: ReplicaInfo["state"] = connected ? "unknown" : "down";
      let detail: string | undefined;
      if (p !== undefined) {
        // A learner (being added by ha-update) is not yet a copy the volume can count on.
        state = !p.active ? "down" : p.match >= last && !learners.includes(id) ? "in-sync" : "catching-up";
        if (state === "catching-up") detail = learners.includes(id) ? `${p.match}/${last}, learner` : `${p.match}/${last}`;
      } else if (progress !== undefined && connected) {
        // Listed by the catalog, not yet in the group: the leader is adding it (ha-update).
        state = "catching-up";
        detail = `0/${last}`;
      }
      const copy = state === "catching-up" && leader === this.nodeId ? this.observer.copyProgress(v.id, id) : undefined;
      return { node: name, nodeId: id, state, ...(detail ? { progress: detail } : {}), ...(copy ? { copy } : {}), leader: id === leader };
    });
  }
}

/** Why a volume may not be deleted now, or undefined: a node serves it (unless forced) or did not answer (unless forced). */
function busyProblem(name: string, answers: readonly { node: string; connections?: number; error?: string }[], force: boolean): string | undefined {
  if (force) return undefined;
  const serving = answers.filter((a) => (a.connections ?? 0) > 0).map((a) => `${a.node} (${a.connections})`);
  const silent = answers.filter((a) => a.connections === undefined).map((a) => `${a.node} (${a.error ?? "no answer"})`);
  if (serving.length === 0 && silent.length === 0) return undefined;
  const what = [
    ...(serving.length > 0 ? [`NBD clients are connected to it on ${listNames(serving)}`] : []),
    ...(silent.length > 0 ? [`${listNames(silent)} did not answer, so it may be served there`] : []),
  ].join("; ");
  return `volume "${name}" is in use: ${what}; disconnect the clients (nbd-client -d, or stop nbdfuse/qemu) and try again, or delete it with --force, which disconnects them`;
}

function catalogError(r: Pick<Extract<ApplyResult, { ok: false }>, "code" | "error">): ApiError {
  const status = r.code === "not_found" ? 404 : r.code === "exists" || r.code === "conflict" || r.code === "limit" ? 409 : 400;
  return new ApiError(status, r.code, r.error);
}

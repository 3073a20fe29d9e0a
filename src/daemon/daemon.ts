// The composition root of one pxd node: node state, store, multi-raft driver,
// peer transport, meta group (the catalog), volume I/O, NBD and control API,
// wired together, and their orderly shutdown (docs/architecture.md).
//
// Every node runs the meta group's state machine (src/cluster), rebuilt at
// start from its latest catalog snapshot and the log after it; a node hosts
// the Raft groups of the volumes placed on it, and any node serves any volume
// over NBD (VolumeIo forwards to the leader).
//
// Daemon implements the control API's Controller by handing each request to
// the part that serves it, each given what it needs of the node as an
// interface: a catalog change is made on the catalog's leader, forwarded
// there from any other node (meta-leader.ts); volumes' lifecycle
// (volume-admin.ts); status, nodes and settings (node-admin.ts); who serves
// a volume over NBD across the cluster (volume-connections.ts); tokens and
// the audit trail (access-admin.ts); a new node's join (cluster-join.ts);
// snapshots, attachments, scrubs, what is served over NBD, and metrics,
// events and samples (snapshots.ts, volume-attachments.ts, scrub-control.ts,
// nbd-exports.ts, node-observer.ts).

import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { hostPort, parseApiAddress } from "../api/client.js";
import { startApiServer, type ApiServer } from "../api/server.js";
import type {
  Controller,
  CreateVolumeRequest,
  DeleteVolumeOptions,
  DebugController,
  DrainNodeRequest,
  JoinRequest,
  JoinResponse,
  NodeConnections,
  NodeInfo,
  NodeStatus,
  ScrubRequest,
  ScrubResponse,
  SetSettingRequest,
  SettingInfo,
  UpdateVolumeRequest,
  VolumeInfo,
  AttachmentInfo,
  AttachRequest,
  EventsResponse,
  VolumeStatsResponse,
  Caller,
  AuditQuery,
  AuditResponse,
  CreateTokenRequest,
  RevokeTokenRequest,
  TokenInfo,
  CreateSnapshotRequest,
  RollbackRequest,
  RollbackResult,
  SnapshotHolding,
  SnapshotInfo,
  SnapshotScheduleRequest,
} from "../api/types.js";
import { failStop, isBug } from "../base/fail-stop.js";
import { Prng } from "../base/prng.js";
import { settingValue, validateCommand, type CatalogState } from "../cluster/index.js";
import {
  checkClusterConstants,
  checkConstants,
  checkReplicationConstants,
  ioNodeRequestsInFlightMax,
  resyncBandwidthBytesPerSecDefault,
  scrubBandwidthBytesPerSecDefault,
  scrubIntervalMsDefault,
} from "../constants.js";
import { listenNbd, type NbdListener } from "../os/nbd-listener.js";
import { loadNbdTls, type NbdTls } from "../os/nbd-tls.js";
import { nodeCertificate } from "../os/cluster-ca.js";
import { deferImmediate, NodeDisk } from "../os/node-disk.js";
import { CrcWorker } from "../os/crc-verifier.js";
import { monotonicMs, nodeTimers } from "../os/timers.js";
import { packageVersion } from "../os/package-version.js";
import { resolveHost } from "../os/resolve.js";
import { releaseSupervisorLock } from "../os/attachments.js";
import { VolumeAttachments } from "./volume-attachments.js";
import { startPeerTransport, type PeerListener } from "../os/peer-listener.js";
import { MultiRaft } from "../replication/driver.js";
import { Repairer } from "../replication/repair.js";
import { Scrubber } from "../replication/scrub.js";
import { ScrubControl } from "./scrub-control.js";
import { VolumeIo } from "../replication/volume-io.js";
import { dispatchPeerMessage } from "../replication/dispatch.js";
import type { ChecksumError } from "../store/errors.js";
import { Store } from "../store/store.js";
import { ClusterNode, metaGroupId } from "../node/cluster-node.js";
import { Access } from "./access.js";
import { AccessAdmin } from "./access-admin.js";
import { checkSameCluster, clusterSecret, keepClusterSecret, makeCaAtBootstrap, usesTls, writeFirstAdminToken } from "./node-credentials.js";
import { AuditLog } from "./audit-log.js";
import { NodeState } from "./node-state.js";
import { NbdExports } from "./nbd-exports.js";
import type { DaemonOptions, Logger } from "./daemon-options.js";
import { answerJoin, describeSelf, enterCluster, type JoinAnswerContext } from "./cluster-join.js";
import { VolumeKeys } from "./volume-keys.js";
import { clusterKeySource } from "../os/cluster-key.js";
import { Snapshots } from "./snapshots.js";
import { NodeAdmission, resyncPacer } from "./qos.js";
import { NodeObserver } from "./node-observer.js";
import { MetaLeader } from "./meta-leader.js";
import { NodeAdmin } from "./node-admin.js";
import { VolumeAdmin } from "./volume-admin.js";
import { VolumeConnections } from "./volume-connections.js";

const version = packageVersion;
export { metaGroupId };
const tickMs = 100;
const forwardDeadlineMs = 15000;
const selfRegisterEveryMs = 300;
const registerWaitMs = 10000;
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
  /** Forwarding to the catalog's leader and proposing there (src/daemon/meta-leader.ts). */
  private meta!: MetaLeader;
  /** Volumes' lifecycle (src/daemon/volume-admin.ts). */
  private volumes!: VolumeAdmin;
  /** Status, nodes and settings (src/daemon/node-admin.ts). */
  private nodeAdmin!: NodeAdmin;
  /** Who serves a volume over NBD, across the cluster (src/daemon/volume-connections.ts). */
  private connections!: VolumeConnections;
  /** Tokens and the audit trail (src/daemon/access-admin.ts). */
  private accessAdmin!: AccessAdmin;
  /** What answering a new node's join needs (src/daemon/cluster-join.ts). */
  private joins!: JoinAnswerContext;

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
    /** The store's checksum thread for large reads (src/os/crc-verifier.ts). */
    private readonly crcs: CrcWorker,
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
    let crcs: CrcWorker | undefined;
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
      // Large reads' checksums are checked on their own thread (verifyOffThreadBytesMin); its failure is a bug.
      crcs = new CrcWorker((e) => failStop(e, "the checksum thread failed"));
      store = await Store.open({ disk: new NodeDisk(join(options.dataDir, "store")), defer: deferImmediate, log: (l) => log.info(l), onDamage: (e) => damage.report(e), verifier: crcs }, specs);
      const d = new Daemon(options, state, store, secret, log, damage, bindAddress, crcs);
      d.nbdTls = nbdTls;
      d.volumeKeys = new VolumeKeys(keySource, state.nodeId, () => state.clusterId, (m) => log.warn(m));
      if (keySource !== undefined) log.info(`cluster key from ${keySource.description}: encrypted volumes are served here`);
      await d.wire();
      return d;
    } catch (e) {
      await store?.close().catch(() => {});
      await crcs?.close();
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
    this.meta = new MetaLeader({
      nodeId: state.nodeId,
      catalog: () => this.catalog,
      leader: () => this.driver.leader(metaGroupId),
      commitIndex: () => this.driver.status(metaGroupId)?.commit ?? 0,
      catalogIndex: () => this.catalogIndex(),
      proposeCommand: (data) => this.node.proposeCommand(data),
      whenCatalog: (ready, timeoutMs) => this.node.whenCatalog(ready, timeoutMs),
      nodeToken: () => this.access.nodeToken(),
      apiCa: () => this.apiCa,
      log,
    });
    this.scrubs = new ScrubControl(scrubber, {
      nodeId: state.nodeId,
      intervalMs: options.scrubIntervalMs ?? scrubIntervalMsDefault,
      bandwidthBytesPerSec: options.scrubBandwidthBytesPerSec ?? scrubBandwidthBytesPerSecDefault,
      catalog: () => this.catalog,
      selfName: () => this.selfName(),
      knownVolume: (name) => this.meta.knownVolume(name),
      hostedVolumes: () => this.hostedVolumes(),
      hasGroup: (id) => this.store.hasGroup(id),
      nodeApi: (n, timeoutMs) => this.meta.nodeApi(n, timeoutMs),
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
      meta: this.meta,
      leaderOf: (group) => this.driver.leader(group),
      info: (v) => this.volumes.info(v),
      nodeCaller: () => this.access.nodeCaller(),
      log,
    });
    this.snapshots = new Snapshots({
      nodeId: state.nodeId,
      catalog: () => this.catalog,
      store: this.store,
      io: this.io,
      driver: this.driver,
      meta: this.meta,
      inUse: (v) => this.connections.inUse(v),
      nbdUri: (name) => this.nbdUri(name),
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
      growCatalog: (name, sizeBytes) => this.volumes.growCatalog(name, sizeBytes),
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
      catalogCatchUp: () => this.meta.catalogCatchUp(),
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
      knownVolume: (name) => this.meta.knownVolume(name),
      nodeApi: (n, timeoutMs) => this.meta.nodeApi(n, timeoutMs),
      hostedVolumes: () => this.hostedVolumes(),
      volumeById: (id) => node.volumeById(id),
      connections: (name) => this.exports.connections(name),
      isUp: (id) => this.isUp(id),
      volumeState: (v) => this.volumes.volumeState(v),
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
    this.wireAdmin();
    await this.untilRegistered();
    const nbdLimits = options.nbdIdleTimeoutMs !== undefined ? { idleTimeoutMs: options.nbdIdleTimeoutMs } : {};
    this.nbd = await listenNbd({ host: this.bindAddress, port: options.nbdPort, unixPath: join(options.dataDir, "nbd.sock"), registry: this.exports.registry(), log, limits: nbdLimits, ...(this.nbdTls !== undefined ? { tls: this.nbdTls } : {}) });
    const debug: DebugController | undefined = options.unsafeDebugApi === true ? { catalogPropose: (r) => this.meta.debugCatalogPropose(r) } : undefined;
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

  /** The control API's parts: volumes, nodes and settings, connections, tokens and audit, joins. */
  private wireAdmin(): void {
    const { options, state, log } = this;
    const catalog = (): CatalogState => this.catalog;
    this.connections = new VolumeConnections({
      nodeId: state.nodeId,
      catalog,
      selfName: () => this.selfName(),
      meta: this.meta,
      exports: this.exports,
    });
    this.volumes = new VolumeAdmin({
      nodeId: state.nodeId,
      catalog,
      meta: this.meta,
      driver: this.driver,
      store: this.store,
      io: this.io,
      connections: this.connections,
      snapshots: this.snapshots,
      nbdUri: (name) => this.nbdUri(name),
      exportConnections: (name) => this.exports.connections(name),
      isUp: (id) => this.isUp(id),
      unrepaired: () => this.repairer.unrepaired(),
      copyProgress: (group, to) => this.observer.copyProgress(group, to),
      replicaScrubs: (v) => this.scrubs.replicaScrubs(v),
      throttled: (volume) => this.admission.counters(volume),
      selfName: () => this.selfName(),
      newEncryption: (volume) => this.volumeKeys.newEncryption(volume),
      log,
    });
    this.nodeAdmin = new NodeAdmin({
      nodeId: state.nodeId,
      dataDir: options.dataDir,
      listen: options.listen,
      peerPort: options.peerPort,
      startedAt: this.startedAt,
      nbdPort: () => this.nbdPort,
      apiPort: () => this.api?.port ?? options.apiPort,
      clusterId: () => state.clusterId,
      catalog,
      catalogStart: () => this.node.catalogStart,
      catalogIndex: () => this.catalogIndex(),
      volumeById: (id) => this.node.volumeById(id),
      isUp: (id) => this.isUp(id),
      meta: this.meta,
      driver: this.driver,
      store: this.store,
      repairer: this.repairer,
      scrubSummary: () => this.scrubs.summary(),
      log,
    });
    this.accessAdmin = new AccessAdmin({
      nodeId: state.nodeId,
      catalog,
      selfName: () => this.selfName(),
      access: this.access,
      auditLog: this.auditLog,
      meta: this.meta,
      log,
    });
    this.joins = {
      secret: this.secret,
      dataDir: options.dataDir,
      clusterId: () => state.clusterId,
      metaVoters: () => state.metaVoters,
      catalog,
      meta: this.meta,
      admit: (command) => this.node.admit(command),
      log,
    };
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
        ["checksum thread", () => this.crcs.close()],
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

  /** The last meta entry applied to the catalog. */
  private catalogIndex(): number {
    return this.store.raftState(metaGroupId).appliedIndex;
  }

  // ---- node, cluster and settings (src/daemon/node-admin.ts) ----

  status(): Promise<NodeStatus> {
    return this.nodeAdmin.status();
  }

  listNodes(): Promise<NodeInfo[]> {
    return this.nodeAdmin.listNodes();
  }

  drainNode(ref: string, request: DrainNodeRequest, caller?: Caller): Promise<NodeInfo> {
    return this.nodeAdmin.drainNode(ref, request, caller);
  }

  removeNode(ref: string, options: { force: boolean }, caller?: Caller): Promise<void> {
    return this.nodeAdmin.removeNode(ref, options, caller);
  }

  listSettings(): Promise<SettingInfo[]> {
    return this.nodeAdmin.listSettings();
  }

  setSetting(key: string, request: SetSettingRequest, caller?: Caller): Promise<SettingInfo> {
    return this.nodeAdmin.setSetting(key, request, caller);
  }

  // ---- volumes (src/daemon/volume-admin.ts) ----

  listVolumes(caller: Caller): Promise<VolumeInfo[]> {
    return this.volumes.listVolumes(caller);
  }

  inspectVolume(name: string, caller: Caller): Promise<VolumeInfo> {
    return this.volumes.inspectVolume(name, caller);
  }

  createVolume(request: CreateVolumeRequest, caller: Caller): Promise<VolumeInfo> {
    return this.volumes.createVolume(request, caller);
  }

  deleteVolume(name: string, options: DeleteVolumeOptions, caller: Caller): Promise<void> {
    return this.volumes.deleteVolume(name, options, caller);
  }

  updateVolume(name: string, request: UpdateVolumeRequest, caller: Caller): Promise<VolumeInfo> {
    return this.volumes.updateVolume(name, request, caller);
  }

  setSnapshotSchedule(volume: string, request: SnapshotScheduleRequest, caller: Caller): Promise<VolumeInfo> {
    return this.volumes.setSnapshotSchedule(volume, request, caller);
  }

  // ---- NBD connections across the cluster (src/daemon/volume-connections.ts) ----

  volumeConnections(name: string, caller: Caller): Promise<NodeConnections> {
    return this.connections.volumeConnections(name, caller);
  }

  disconnectVolume(name: string, caller: Caller): Promise<NodeConnections> {
    return this.connections.disconnectVolume(name, caller);
  }

  // ---- attachments (src/daemon/volume-attachments.ts) ----

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

  // ---- joining, tokens, audit (src/daemon/cluster-join.ts, access-admin.ts) ----

  join(request: JoinRequest): Promise<JoinResponse> {
    return answerJoin(this.joins, request);
  }

  clusterId(): string {
    return this.state.clusterId;
  }

  createToken(request: CreateTokenRequest, caller: Caller): Promise<TokenInfo> {
    return this.accessAdmin.createToken(request, caller);
  }

  revokeToken(request: RevokeTokenRequest, caller: Caller): Promise<{ id: string; revoked: boolean }> {
    return this.accessAdmin.revokeToken(request, caller);
  }

  audit(query: AuditQuery, caller: Caller): Promise<AuditResponse> {
    return this.accessAdmin.audit(query, caller);
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

  /** The export's NBD URI on this node. */
  private nbdUri(exportName: string): string {
    return `nbd://${hostPort(this.options.listen, this.nbdPort)}/${exportName}`;
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
}

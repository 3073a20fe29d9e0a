// The scrub as a node runs and reports it (docs/architecture.md, "Checksums
// and repair"): the scheduled pass over everything this node holds,
// `--scrub-interval` after the last one finished (the time kept in the node
// state, so a restart does not start the count again), at most
// `--scrub-bandwidth`; `pxd scrub` (POST /v1/scrub), run here or on every node
// concerned and waited for; and the last scrub of each replica for
// `pxd status` and `pxd volume inspect`. The reading, checking and repairing
// is the Scrubber's (src/replication/scrub.ts).

import type { ApiClient } from "../api/client.js";
import type { IntegrityStatus, ScrubNodeReport, ScrubRequest, ScrubResponse, ScrubVolumeReport, VolumeInfo } from "../api/types.js";
import { failStop, isBug } from "../base/fail-stop.js";
import { formatSize } from "../base/sizes.js";
import type { CatalogNode, CatalogState, CatalogVolume } from "../cluster/index.js";
import type { Scrubber, ScrubReport } from "../replication/scrub.js";

/** How long the node a scrub request reached waits for each other node's scrub (a pass over 1 TiB at 32 MiB/s takes 9 hours). */
const scrubCallTimeoutMs = 24 * 3600 * 1000;
/** How long inspect waits for each replica node's last scrub. */
const replicaScrubAskTimeoutMs = 1000;

/** What the scrub control needs of its node. */
export interface ScrubContext {
  readonly nodeId: number;
  /** A scheduled pass runs this long after the last one finished (0: never). */
  readonly intervalMs: number;
  /** The scheduled pass's average read rate, and a request's when it names none. */
  readonly bandwidthBytesPerSec: number;
  /** The catalog as this node has applied it now. */
  catalog(): CatalogState;
  /** This node's name in the catalog. */
  selfName(): string;
  /** The volume, after this node's catalog caught up with the leader if it did not know the name; else ApiError 404. */
  knownVolume(name: string): Promise<CatalogVolume>;
  /** The volume groups this node holds a replica of, by id. */
  hostedVolumes(): number[];
  /** This node's store holds the group. */
  hasGroup(groupId: number): boolean;
  nodeApi(n: CatalogNode, timeoutMs: number): ApiClient;
  /** When the last scheduled pass finished (wall-clock ms), and recording a new one; kept in the node state. */
  scrubbedAt(): number;
  setScrubbedAt(ms: number): Promise<void>;
  wallMs(): number;
  log: { info(line: string): void; error(line: string): void };
}

export class ScrubControl {
  private scheduled: Promise<unknown> | undefined;

  constructor(
    private readonly scrubber: Scrubber,
    private readonly c: ScrubContext,
  ) {}

  get counters(): Scrubber["counters"] {
    return this.scrubber.counters;
  }

  /** Stops after the scrub's current step. */
  stop(): void {
    this.scrubber.stop();
  }

  /** The scheduled scrub: everything here, once the interval since the last pass has passed. */
  runIfDue(): void {
    const { c } = this;
    if (c.intervalMs <= 0 || this.scheduled !== undefined || c.wallMs() - c.scrubbedAt() < c.intervalMs) return;
    c.log.info(`scrub: the scheduled pass over this node's ${c.hostedVolumes().length} volume replica(s) begins (at most ${formatSize(c.bandwidthBytesPerSec)}/s)`);
    this.scheduled = this.scrubber
      .scrub(c.hostedVolumes(), c.bandwidthBytesPerSec)
      .then(async (reports) => {
        if (reports.some((r) => r.interrupted)) return;
        await c.setScrubbedAt(c.wallMs());
        const bytes = reports.reduce((a, r) => a + r.bytesScrubbed, 0);
        const damaged = reports.reduce((a, r) => a + r.blocksDamaged, 0);
        c.log.info(`scrub: the scheduled pass is done: ${formatSize(bytes)} checked, ${damaged} damaged block(s) found`);
      })
      .catch((e: Error) => {
        if (isBug(e)) failStop(e, "scrub: the scheduled pass");
        c.log.error(`scrub: the scheduled pass failed: ${e.message}`);
      })
      .finally(() => (this.scheduled = undefined));
  }

  /** Scrubs now and waits for it: here (local), else on every node holding the volume (every node when none is named), each asked in parallel. */
  async scrub(request: ScrubRequest): Promise<ScrubResponse> {
    const { c } = this;
    const v = request.volume === undefined ? undefined : await c.knownVolume(request.volume);
    if (request.local === true) {
      const groups = v === undefined ? c.hostedVolumes() : c.hasGroup(v.id) ? [v.id] : [];
      const reports = await this.scrubber.scrub(groups, request.bandwidthBytesPerSec ?? c.bandwidthBytesPerSec);
      return { nodes: [this.nodeReport(reports)] };
    }
    const targets = v === undefined ? [...c.catalog().nodes.keys()] : v.nodes;
    const nodes = await Promise.all(
      targets.map(async (id): Promise<ScrubNodeReport> => {
        const n = c.catalog().nodes.get(id);
        const name = n?.name ?? `node-${id}`;
        try {
          const r = id === c.nodeId ? await this.scrub({ ...request, local: true }) : n === undefined ? undefined : await c.nodeApi(n, scrubCallTimeoutMs).scrub({ ...request, local: true });
          return r?.nodes[0] ?? { nodeId: id, node: name, volumes: [], error: "the node is not in the catalog" };
        } catch (e) {
          return { nodeId: id, node: name, volumes: [], error: (e as Error).message };
        }
      }),
    );
    return { nodes };
  }

  /** This node's newest scrub of each volume, the running ones included. */
  async status(): Promise<ScrubResponse> {
    return { nodes: [this.nodeReport(this.scrubber.status())] };
  }

  private nodeReport(reports: ScrubReport[]): ScrubNodeReport {
    return { nodeId: this.c.nodeId, node: this.c.selfName(), volumes: reports.map(scrubVolumeReport) };
  }

  /** Each replica's last scrub, from its node (a node that does not answer within a second is left out). */
  async replicaScrubs(v: CatalogVolume): Promise<NonNullable<VolumeInfo["scrub"]>> {
    const { c } = this;
    const out = await Promise.all(
      v.nodes.map(async (id) => {
        const n = c.catalog().nodes.get(id);
        if (n === undefined) return [];
        try {
          const status = id === c.nodeId ? await this.status() : await c.nodeApi(n, replicaScrubAskTimeoutMs).scrubStatus();
          return (status.nodes[0]?.volumes ?? []).filter((r) => r.volume === v.name).map((r) => ({ node: n.name, ...r }));
        } catch {
          return [];
        }
      }),
    );
    return out.flat();
  }

  /** The schedule and the scrub's counters, for pxd status. */
  summary(): IntegrityStatus["scrub"] {
    const { c } = this;
    const counters = this.scrubber.counters;
    const scrubbedAt = c.scrubbedAt();
    return {
      intervalSec: Math.round(c.intervalMs / 1000),
      bandwidthBytesPerSec: c.bandwidthBytesPerSec,
      lastPassAt: new Date(scrubbedAt).toISOString(),
      nextPassAt: c.intervalMs > 0 ? new Date(scrubbedAt + c.intervalMs).toISOString() : null,
      running: this.scrubber.status().some((r) => r.finishedAt === undefined),
      bytesScrubbed: counters.scrubBytes,
      blocksDamaged: counters.scrubBlocksDamaged,
      blocksRepaired: counters.scrubBlocksRepaired,
      blocksUnrepaired: counters.scrubBlocksUnrepaired,
    };
  }
}

function scrubVolumeReport(r: ScrubReport): ScrubVolumeReport {
  return {
    volume: r.volume,
    startedAt: new Date(r.startedAt).toISOString(),
    ...(r.finishedAt !== undefined ? { finishedAt: new Date(r.finishedAt).toISOString() } : {}),
    interrupted: r.interrupted,
    bytesScrubbed: r.bytesScrubbed,
    blocksDamaged: r.blocksDamaged,
    blocksRepaired: r.blocksRepaired,
    blocksUnrepaired: r.blocksUnrepaired,
  };
}

// The CSI node service: a volume is staged once per host (attached, and for
// mount access mounted at the staging path, with a filesystem made only where
// none exists) and published into each pod by a bind mount of the staging
// path (mount access) or of the device onto a file (block access).
//
// Node calls run one at a time: a CO retries a call that timed out while the
// first is still attaching, and attach/mount are not safe to run twice at once.

import { closeSync, existsSync, mkdirSync, openSync, rmdirSync, rmSync, statSync } from "node:fs";
import { statfs } from "node:fs/promises";
import { dirname } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { ApiClient } from "../api/client.js";
import { ApiError, type VolumeInfo } from "../api/types.js";
import { askAgentToResize, mountedAt, mountsOf, readRecord } from "../os/attachments.js";
import { runCommand, type CommandResult } from "../os/command.js";
import { attachVolume, detachVolume, filesystemOn, mountVolume, unmountVolume } from "./attach.js";
import { CsiError, checkedMap, readCapability, requirePath, requireVolumeId, sizeFor, topologyNodeKey, topologyZoneKey, volumesPerNodeMax, invalid, type CsiOptions, type Req } from "./csi.js";

/** How long one mount/umount may take before the call fails (the CO retries). */
const mountCommandMs = 60_000;
/** How long NodeExpandVolume waits for a kernel device's agent to grow it. */
const agentResizeWaitMs = 5000;
/** Node calls queued behind the one running; more are ABORTED (the spec's "operation pending") and the CO retries. */
const nodeCallsWaitingMax = 64;

const sh = (cmd: string, args: string[]): Promise<CommandResult> => runCommand(cmd, args, mountCommandMs);

async function shOk(cmd: string, args: string[], what: string): Promise<void> {
  const r = await sh(cmd, args);
  if (r.code !== 0) throw new CsiError(grpc.status.INTERNAL, `${what} failed (${cmd} exit ${r.code}): ${r.stderr.trim().slice(0, 500)}`);
}

/** The one VolumeCapability of a node request; an unsupported one is INVALID_ARGUMENT here. */
function capabilityOf(req: Req): ReturnType<typeof readCapability>["cap"] {
  if (req["volume_capability"] == null) throw invalid("volume_capability is missing; the request needs it");
  const { cap, unsupported } = readCapability(req["volume_capability"]);
  if (unsupported !== null) throw invalid(unsupported);
  return cap;
}

async function volumeOrNotFound(api: ApiClient, id: string): Promise<VolumeInfo> {
  try {
    return await api.inspectVolume(id);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) throw new CsiError(grpc.status.NOT_FOUND, `volume ${id} does not exist`);
    throw e;
  }
}

type Handler = (req: Req) => Promise<object>;

async function deviceBytes(device: string): Promise<number> {
  const r = await sh("blockdev", ["--getsize64", device]);
  const n = Number(r.stdout.trim());
  if (r.code !== 0 || !Number.isSafeInteger(n)) throw new CsiError(grpc.status.INTERNAL, `reading the size of ${device} failed (blockdev exit ${r.code}): ${r.stderr.trim().slice(0, 500)}`);
  return n;
}

/**
 * NodeExpandVolume: the filesystem on the staged device grows to fill it
 * (resize2fs, or xfs_growfs on its mount); a block volume needs nothing. A
 * kernel device grows in place (its attach agent is asked, and waited for up
 * to agentResizeWaitMs); a fuse one shows the new size only once attached
 * again (so the plugin advertises OFFLINE expansion): a device still smaller
 * than asked is FAILED_PRECONDITION, saying so.
 */
async function expandOnNode(req: Req): Promise<object> {
  const id = requireVolumeId(req);
  requirePath(req, "volume_path");
  checkedMap(req, "secrets");
  const cap = req["volume_capability"] == null ? undefined : capabilityOf(req);
  const required = req["capacity_range"] == null ? 0 : sizeFor(req["capacity_range"]).required;
  const record = readRecord(id);
  if (record === undefined) throw new CsiError(grpc.status.NOT_FOUND, `volume ${id} is not staged on this host; call NodeStageVolume first`);
  let bytes = await deviceBytes(record.device);
  // A kernel device grows in place once its agent asks the server (it does every 10 s; a SIGHUP asks now).
  if (bytes < required && askAgentToResize(id) !== undefined) {
    for (let waited = 0; bytes < required && waited < agentResizeWaitMs; waited += 250) {
      await new Promise((r) => setTimeout(r, 250));
      bytes = await deviceBytes(record.device);
    }
  }
  if (bytes < required) {
    throw new CsiError(grpc.status.FAILED_PRECONDITION, `${record.device} still shows ${bytes} bytes, less than the ${required} asked for: it was attached before the volume grew; unstage and stage volume ${id} again (e.g. restart the pod) to see the new size`);
  }
  if (cap?.block === true || record.mount === undefined) return { capacity_bytes: bytes };
  const fs = await filesystemOn(record.device);
  if (fs === "ext4") {
    const r = await sh("resize2fs", [record.device]);
    const why = /Permission denied/.test(r.stderr) ? "; growing a mounted ext4 needs CAP_SYS_RESOURCE: run the node plugin privileged" : "";
    if (r.code !== 0) throw new CsiError(grpc.status.INTERNAL, `growing ext4 on ${record.device} failed (resize2fs exit ${r.code}): ${r.stderr.trim().slice(0, 500)}${why}`);
  } else if (fs === "xfs") await shOk("xfs_growfs", [record.mount], `growing xfs at ${record.mount}`);
  else throw new CsiError(grpc.status.FAILED_PRECONDITION, `${record.device} holds ${fs ?? "no filesystem"}, which this driver does not grow; it grows ext4 and xfs`);
  return { capacity_bytes: bytes };
}

export function nodeService(api: ApiClient, o: CsiOptions): Record<string, Handler> {
  let chain: Promise<unknown> = Promise.resolve();
  let waiting = 0;
  const serial =
    (h: Handler): Handler =>
    (req) => {
      if (waiting >= nodeCallsWaitingMax) return Promise.reject(new CsiError(grpc.status.ABORTED, `${waiting} node calls are already waiting here; retry when they are done`));
      waiting++;
      const next = chain.then(() => h(req)).finally(() => waiting--);
      chain = next.catch(() => undefined);
      return next;
    };
  return {
    NodeStageVolume: serial(async (req) => {
      const id = requireVolumeId(req);
      const staging = requirePath(req, "staging_target_path");
      const cap = capabilityOf(req);
      const context = checkedMap(req, "volume_context");
      checkedMap(req, "secrets");
      checkedMap(req, "publish_context");
      await volumeOrNotFound(api, id);
      const record = readRecord(id);
      if (cap.block) {
        await attachVolume(api, id, { readOnly: cap.readOnly });
        return {};
      }
      if (record?.mount !== undefined && mountedAt(record.mount)) {
        if (record.mount === staging) return {};
        throw new CsiError(grpc.status.FAILED_PRECONDITION, `volume ${id} is staged here at ${record.mount}, not ${staging}; unstage it there first`);
      }
      const fs = cap.fs ?? (context["fs"] === "xfs" ? "xfs" : "ext4");
      await mountVolume(api, id, staging, { fs, readOnly: cap.readOnly });
      return {};
    }),
    NodeUnstageVolume: serial(async (req) => {
      const id = requireVolumeId(req);
      requirePath(req, "staging_target_path");
      const record = readRecord(id);
      if (record === undefined) return {};
      const published = mountsOf(record.device).filter((m) => m !== record.mount);
      if (published.length > 0) throw new CsiError(grpc.status.FAILED_PRECONDITION, `volume ${id} is still published at ${published.join(", ")}; call NodeUnpublishVolume there first`);
      if (record.mount !== undefined) await unmountVolume(api, record.mount);
      else await detachVolume(api, id);
      return {};
    }),
    NodePublishVolume: serial(async (req) => {
      const id = requireVolumeId(req);
      const target = requirePath(req, "target_path");
      const staging = requirePath(req, "staging_target_path");
      const cap = capabilityOf(req);
      checkedMap(req, "volume_context");
      checkedMap(req, "secrets");
      checkedMap(req, "publish_context");
      const readOnly = req["readonly"] === true || cap.readOnly;
      const record = readRecord(id);
      if (record === undefined) throw new CsiError(grpc.status.FAILED_PRECONDITION, `volume ${id} is not staged on this host; call NodeStageVolume first`);
      if (mountedAt(target)) return {};
      let source: string;
      if (cap.block) {
        source = record.device;
        mkdirSync(dirname(target), { recursive: true });
        if (!existsSync(target)) closeSync(openSync(target, "w"));
      } else {
        if (record.mount !== staging || !mountedAt(staging)) throw new CsiError(grpc.status.FAILED_PRECONDITION, `volume ${id} is not mounted at ${staging}; call NodeStageVolume with that staging path first`);
        source = staging;
        mkdirSync(target, { recursive: true });
      }
      await shOk("mount", ["--bind", source, target], `binding ${source} to ${target}`);
      if (readOnly) {
        const ro = await sh("mount", ["-o", "remount,bind,ro", target]);
        if (ro.code !== 0) {
          await sh("umount", [target]);
          throw new CsiError(grpc.status.INTERNAL, `making ${target} read-only failed: ${ro.stderr.trim().slice(0, 500)}`);
        }
      }
      return {};
    }),
    NodeUnpublishVolume: serial(async (req) => {
      requireVolumeId(req);
      const target = requirePath(req, "target_path");
      // A bind mount may have been made twice by a retried publish: take off every layer.
      for (let i = 0; i < 8 && mountedAt(target); i++) await shOk("umount", [target], `unmounting ${target}`);
      if (mountedAt(target)) throw new CsiError(grpc.status.INTERNAL, `${target} is still a mount point after 8 unmounts`);
      if (existsSync(target)) {
        if (statSync(target).isDirectory()) rmdirSync(target);
        else rmSync(target);
      }
      return {};
    }),
    NodeGetInfo: async () => ({
      node_id: o.nodeId,
      max_volumes_per_node: volumesPerNodeMax,
      accessible_topology: { segments: { [topologyNodeKey]: o.nodeId, ...(o.zone !== undefined ? { [topologyZoneKey]: o.zone } : {}) } },
    }),
    NodeGetCapabilities: async () => ({
      capabilities: ["STAGE_UNSTAGE_VOLUME", "GET_VOLUME_STATS", "EXPAND_VOLUME"].map((type) => ({ rpc: { type } })),
    }),
    NodeGetVolumeStats: async (req) => {
      const id = requireVolumeId(req);
      const path = requirePath(req, "volume_path");
      if (!existsSync(path)) throw new CsiError(grpc.status.NOT_FOUND, `${path} does not exist on this node`);
      const v = await volumeOrNotFound(api, id);
      if (!statSync(path).isDirectory()) {
        return { usage: [{ unit: "BYTES", total: v.sizeBytes, available: 0, used: 0 }] };
      }
      const s = await statfs(path);
      return {
        usage: [
          { unit: "BYTES", total: s.blocks * s.bsize, available: s.bavail * s.bsize, used: (s.blocks - s.bfree) * s.bsize },
          { unit: "INODES", total: s.files, available: s.ffree, used: s.files - s.ffree },
        ],
      };
    },
    NodeExpandVolume: serial((req) => expandOnNode(req)),
  };
}

// Raft core benchmark: 3 in-process cores per group over an in-memory
// network and MemoryStorage, driven the way the multi-raft driver drives
// them (every group's Ready collected, "persisted", messages delivered,
// committed entries applied, advance). Reports proposals committed per second
// and CPU per proposal with batching, for 1 and 1000 groups, and the cost of
// idle groups (ticks and heartbeats only).
//
//   node dist/bench/raft-bench.js [--seconds S]

import { raftConfig } from "../src/replication/driver.js";
import { Prng } from "../src/base/prng.js";
import { RaftNode } from "../src/raft/node.js";
import { MemoryStorage } from "../src/raft/storage.js";
import type { Message } from "../src/raft/types.js";
import { StateRole } from "../src/raft/types.js";

interface Replica {
  node: RaftNode;
  storage: MemoryStorage;
  applied: number;
}

class Group {
  readonly replicas: Replica[];
  constructor(seed: number) {
    this.replicas = [1, 2, 3].map((id) => {
      const storage = new MemoryStorage({ voters: [1, 2, 3], learners: [] });
      const node = new RaftNode(raftConfig(id, storage, new Prng(seed * 3 + id)));
      return { node, storage, applied: 0 };
    });
  }

  replica(id: number): Replica {
    return this.replicas[id - 1] as Replica;
  }

  leader(): Replica {
    return this.replicas.find((r) => r.node.status().role === StateRole.leader) ?? (this.replicas[0] as Replica);
  }
}

/** One driver turn over every group: handle Ready everywhere, then deliver all messages. Returns entries applied by leaders. */
function turn(groups: Group[], inbox: { g: Group; m: Message }[]): number {
  let committed = 0;
  for (const g of groups) {
    for (const r of g.replicas) {
      if (!r.node.hasReady()) continue;
      const rd = r.node.ready();
      if (rd.snapshot !== null) r.storage.applySnapshot(rd.snapshot);
      r.storage.append(rd.entries);
      if (rd.hardState !== null) r.storage.setHardState(rd.hardState);
      for (const m of rd.messages) inbox.push({ g, m });
      if (rd.committedEntries.length > 0) {
        const last = rd.committedEntries[rd.committedEntries.length - 1];
        if (r.node.status().role === StateRole.leader) committed += rd.committedEntries.length;
        r.applied = last === undefined ? r.applied : last.index;
      }
      r.node.advance();
      // Keep memory flat: compact what is applied, as the store would after a checkpoint.
      if (r.applied - r.storage.firstIndex() > 4096) {
        r.storage.createSnapshot(r.applied, { voters: [1, 2, 3], learners: [] }, new Uint8Array(0));
        r.storage.compact(r.applied);
      }
    }
  }
  const batch = inbox.splice(0, inbox.length);
  for (const { g, m } of batch) g.replica(m.to).node.step(m);
  return committed;
}

function elect(groups: Group[]): void {
  const inbox: { g: Group; m: Message }[] = [];
  for (const g of groups) g.replica(1).node.campaign();
  for (let i = 0; i < 10; i++) turn(groups, inbox);
  // Nothing was proposed: the leader's last entry is its no-op, committed once it is elected for good.
  for (const g of groups) {
    const s = g.leader().node.status();
    if (s.id !== 1 || s.commit < s.lastIndex) throw new Error("election failed");
  }
}

interface Row {
  scenario: string;
  proposalsPerSec: number;
  cpuUsPerProposal: number;
}

function runLoad(groupCount: number, batch: number, payloadBytes: number, seconds: number): Row {
  const groups = Array.from({ length: groupCount }, (_, i) => new Group(i + 1));
  elect(groups);
  const inbox: { g: Group; m: Message }[] = [];
  const payload = new Uint8Array(payloadBytes);
  let committed = 0;
  let proposed = 0;
  const started = process.hrtime.bigint();
  const cpu0 = process.cpuUsage();
  const deadline = started + BigInt(Math.round(seconds * 1e9));
  while (process.hrtime.bigint() < deadline) {
    for (const g of groups) {
      const lead = g.leader().node;
      for (let k = 0; k < batch; k++) if (lead.propose(payload) > 0) proposed++;
    }
    committed += turn(groups, inbox);
  }
  for (let i = 0; i < 5; i++) committed += turn(groups, inbox);
  const wallS = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const cpuUs = cpu.user + cpu.system;
  if (committed < proposed) throw new Error(`only ${committed} of ${proposed} proposals committed`);
  return {
    scenario: `${groupCount} group${groupCount > 1 ? "s" : ""}, batch ${batch}/turn, ${payloadBytes} B`,
    proposalsPerSec: committed / wallS,
    cpuUsPerProposal: cpuUs / committed,
  };
}

function runIdle(groupCount: number, ticks: number): { cpuMsPerTick: number } {
  const groups = Array.from({ length: groupCount }, (_, i) => new Group(i + 1));
  elect(groups);
  const inbox: { g: Group; m: Message }[] = [];
  const cpu0 = process.cpuUsage();
  for (let t = 0; t < ticks; t++) {
    for (const g of groups) for (const r of g.replicas) r.node.tick();
    turn(groups, inbox);
  }
  const cpu = process.cpuUsage(cpu0);
  for (const g of groups) if (g.leader().node.status().id !== 1) throw new Error("an idle group changed leader");
  return { cpuMsPerTick: (cpu.user + cpu.system) / 1000 / ticks };
}

function main(): void {
  const i = process.argv.indexOf("--seconds");
  const seconds = i >= 0 ? Number(process.argv[i + 1]) : 2;
  const rows: Row[] = [
    runLoad(1, 1, 128, seconds),
    runLoad(1, 64, 128, seconds),
    runLoad(1, 64, 4096, seconds),
    runLoad(1000, 1, 128, seconds),
    runLoad(1000, 8, 128, seconds),
  ];
  console.log("| scenario (3 replicas per group, one process) | proposals committed/s | CPU µs/proposal (all 3 replicas) |");
  console.log("|---|---:|---:|");
  for (const r of rows) console.log(`| ${r.scenario} | ${Math.round(r.proposalsPerSec).toLocaleString("en-US")} | ${r.cpuUsPerProposal.toFixed(2)} |`);
  const idle = runIdle(1000, 200);
  const tickMs = 100;
  console.log("");
  console.log(`idle: 1000 groups x 3 replicas, heartbeat every tick, no coalescing: ${idle.cpuMsPerTick.toFixed(2)} ms CPU per tick ` +
    `= ${((idle.cpuMsPerTick / tickMs) * 100).toFixed(1)}% of one core at a ${tickMs} ms tick (all 3000 replicas in one process; one node holds 1000 of them)`);
}

main();

// The node's volume catalog, in LevelDB (classic-level) under the data dir.
// Every change is written with sync: true: a volume that `pxd volume create`
// reported exists after a crash. Keys (docs/formats/catalog.md):
//   meta:nodeId        this node's id, made at first start
//   meta:nextVolumeId  the next volume (and Raft group) id; ids are never reused
//   vol:<name>         JSON VolumeRecord

import { randomUUID } from "node:crypto";
import { ClassicLevel } from "classic-level";

export interface VolumeRecord {
  id: number;
  name: string;
  sizeBytes: number;
  repl: number;
  createdAt: string;
}

export class Catalog {
  private readonly volumes = new Map<string, VolumeRecord>();
  private nextVolumeId = 1;
  nodeId = "";

  private constructor(private readonly db: ClassicLevel<string, string>) {}

  static async open(path: string): Promise<Catalog> {
    const db = new ClassicLevel<string, string>(path, { valueEncoding: "utf8" });
    try {
      await db.open();
    } catch (e) {
      const cause = (e as { cause?: Error }).cause?.message ?? (e as Error).message;
      throw new Error(`cannot open the catalog at ${path}: ${cause}; is another pxd daemon using this data dir?`);
    }
    const c = new Catalog(db);
    c.nodeId = (await db.get("meta:nodeId")) ?? "";
    if (c.nodeId === "") {
      c.nodeId = randomUUID();
      await db.put("meta:nodeId", c.nodeId, { sync: true });
    }
    c.nextVolumeId = Number((await db.get("meta:nextVolumeId")) ?? "1");
    for await (const [, value] of db.iterator({ gte: "vol:", lt: "vol;" })) {
      const v = JSON.parse(value) as VolumeRecord;
      c.volumes.set(v.name, v);
    }
    return c;
  }

  list(): VolumeRecord[] {
    return [...this.volumes.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): VolumeRecord | undefined {
    return this.volumes.get(name);
  }

  async create(name: string, sizeBytes: number, repl: number): Promise<VolumeRecord> {
    const v: VolumeRecord = { id: this.nextVolumeId, name, sizeBytes, repl, createdAt: new Date().toISOString() };
    this.nextVolumeId++;
    this.volumes.set(name, v);
    await this.db.batch(
      [
        { type: "put", key: "meta:nextVolumeId", value: String(this.nextVolumeId) },
        { type: "put", key: `vol:${name}`, value: JSON.stringify(v) },
      ],
      { sync: true },
    );
    return v;
  }

  async remove(name: string): Promise<void> {
    this.volumes.delete(name);
    await this.db.del(`vol:${name}`, { sync: true });
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}

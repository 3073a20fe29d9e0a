// File names in a store directory (docs/formats/segment-log.md).

export const checkpointName = "checkpoint";

export function segmentName(id: number): string {
  return `seg-${String(id).padStart(10, "0")}`;
}

export function parseSegmentName(name: string): number | undefined {
  const m = /^seg-(\d{10})$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

export function isFreeName(name: string): boolean {
  return /^free-\d+$/.test(name);
}

// pxd's version: the one in package.json, read once from the package the
// running code belongs to (dist/src/os/ is three levels below it; the
// Docker image keeps package.json in /app beside dist/).

import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const packageVersion: string = ((): string => {
  const path = fileURLToPath(new URL("../../../package.json", import.meta.url));
  const version = (JSON.parse(readFileSync(path, "utf8")) as { version?: unknown }).version;
  if (typeof version !== "string") throw new Error(`${path} has no version`);
  return version;
})();

// A backup target on a mounted filesystem (local disk, NFS, ...): file:///DIR.
// Every object is written whole or not at all: into a temporary file in the
// same directory, fsynced, renamed over its name, and the directory fsynced,
// so a crash leaves the old object or the new one, and a listing never shows
// a half-written one (temporary names are skipped).

import { randomBytes } from "node:crypto";
import { existsSync, statSync } from "node:fs";
import { mkdir, open, opendir, readFile, rename, rm, stat, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkKey, ObjectTooLargeError, TargetUrlError, type BackupTarget } from "./target.js";

const tempMark = ".tmp-";

async function fsyncPath(path: string): Promise<void> {
  const h = await open(path, "r");
  try {
    await h.sync();
  } finally {
    await h.close();
  }
}

export function fileTarget(url: string): BackupTarget {
  let root: string;
  try {
    root = fileURLToPath(url);
  } catch (e) {
    throw new TargetUrlError(`${JSON.stringify(url)} is not a file URL (${(e as Error).message}); use file:///ABSOLUTE/DIR`);
  }
  if (!existsSync(root) || !statSync(root).isDirectory()) throw new TargetUrlError(`backup directory ${root} does not exist; create it (or mount the filesystem it lives on) first`);
  const pathOf = (key: string): string => {
    checkKey(key);
    return join(root, key);
  };
  return {
    url,
    async put(key, data) {
      const path = pathOf(key);
      const dir = dirname(path);
      await mkdir(dir, { recursive: true });
      const temp = `${path}${tempMark}${process.pid}-${randomBytes(4).toString("hex")}`;
      const h = await open(temp, "wx", 0o644);
      try {
        await h.writeFile(data);
        await h.sync();
      } catch (e) {
        await h.close();
        await rm(temp, { force: true });
        throw e;
      }
      await h.close();
      await rename(temp, path);
      await fsyncPath(dir);
    },
    async get(key, bytesMax) {
      const path = pathOf(key);
      let size: number;
      try {
        size = (await stat(path)).size;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
        throw e;
      }
      if (size > bytesMax) throw new ObjectTooLargeError(`${path} is ${size} bytes, above the ${bytesMax} it may hold`);
      const data = await readFile(path);
      if (data.length > bytesMax) throw new ObjectTooLargeError(`${path} grew to ${data.length} bytes while read, above the ${bytesMax} it may hold`);
      return data;
    },
    async exists(key) {
      try {
        return (await stat(pathOf(key))).isFile();
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
        throw e;
      }
    },
    async list(prefix, keysMax) {
      checkKey(prefix);
      const out: string[] = [];
      const walk = async (rel: string): Promise<void> => {
        let dir;
        try {
          dir = await opendir(join(root, rel));
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
          throw e;
        }
        for await (const entry of dir) {
          const key = `${rel}${entry.name}`;
          if (entry.isDirectory()) await walk(`${key}/`);
          else if (entry.isFile() && !entry.name.includes(tempMark)) {
            if (out.length >= keysMax) throw new Error(`more than ${keysMax} objects under ${join(root, prefix)}`);
            out.push(key);
          }
        }
      };
      await walk(prefix.endsWith("/") ? prefix : `${prefix}/`);
      return out.sort();
    },
    async delete(key) {
      try {
        await unlink(pathOf(key));
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
      }
    },
    close() {},
  };
}

// Argument parsers for commander options, and how a command finds its daemon.

import { InvalidArgumentError, type Command } from "commander";
import { parseSize } from "../base/sizes.js";
import { ApiClient, defaultApiAddress, parseApiAddress } from "../api/client.js";
import { volumeNameProblem } from "../api/validate.js";
import { UsageError } from "./errors.js";

export function sizeArg(text: string): number {
  const bytes = byteCountArg(text);
  if (bytes <= 0) throw new InvalidArgumentError(`a volume needs a size above zero; use e.g. 1G`);
  return bytes;
}

/** A byte count with an optional K/M/G/T suffix; zero allowed. */
export function byteCountArg(text: string): number {
  try {
    return parseSize(text);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

export function intArg(min: number, max: number): (text: string) => number {
  return (text) => {
    const n = /^\d+$/.test(text.trim()) ? Number(text.trim()) : NaN;
    if (!(n >= min && n <= max)) throw new InvalidArgumentError(`"${text}" is not a whole number from ${min} to ${max}`);
    return n;
  };
}

export function checkName(name: string): string {
  const problem = volumeNameProblem(name);
  if (problem !== null) throw new UsageError(problem);
  return name;
}

/** The daemon's API address: --host, else PXD_HOST, else 127.0.0.1:9001. */
export function apiAddress(command: Command): string {
  const flag = command.optsWithGlobals<{ host?: string }>().host;
  const env = process.env["PXD_HOST"];
  const [text, from] = flag !== undefined ? [flag, "--host"] : env ? [env, "PXD_HOST"] : [defaultApiAddress, "the default"];
  try {
    return parseApiAddress(text).display;
  } catch (err) {
    throw new UsageError(`${(err as Error).message} (from ${from})`);
  }
}

/** Where `pxd up` puts the first node of its local cluster; the CLI tries it when nothing answers at the default. */
export const localClusterApiAddress = "127.0.0.11:9001";

export function clientFor(command: Command): ApiClient {
  const explicit = command.optsWithGlobals<{ host?: string }>().host !== undefined || !!process.env["PXD_HOST"];
  return new ApiClient(apiAddress(command), explicit ? {} : { fallbackAddress: localClusterApiAddress });
}

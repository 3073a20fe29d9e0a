// The pxd command line. runCli() builds the commander program, runs one
// command and returns the exit code: 0 ok, 1 the daemon or the machine said
// no, 2 the command line is wrong. It never lets a user error become a stack
// trace; set PXD_DEBUG=1 to see stacks of unexpected errors.

import { Command, CommanderError } from "commander";
import { ApiError } from "../api/types.js";
import { DaemonUnreachableError } from "../api/client.js";
import { defaultApiAddress } from "../api/client.js";
import { CliError, UsageError, exitFailed, exitOk, exitUsage } from "./errors.js";
import { registerNode, registerScrub, registerSettings, registerStatus, registerVolume } from "./volume.js";
import { registerDaemon } from "./daemon.js";
import { packageVersion } from "../os/package-version.js";
import { registerLocalNode } from "./local-node.js";
import { registerDockerPlugin } from "./docker-plugin.js";
import { registerCsi } from "./csi.js";
import { registerEvents } from "./events.js";
import { registerAudit, registerAuth } from "./auth.js";
import { localClusterCaFile, localClusterTokenFile } from "./args.js";
import { registerBackup } from "./backup.js";

export const cliVersion = packageVersion;

export function buildProgram(): Command {
  const program = new Command("pxd")
    .description("pxd: distributed block storage exported over NBD")
    .version(cliVersion)
    .option("--host <addr>", `daemon control API as [https://|http://]ADDR[:PORT] (env PXD_HOST, default ${defaultApiAddress}); HTTPS when a CA is known, http:// for a node started with --api-plain-http`)
    .option("--ca <file>", `the cluster's CA certificate, which the daemons' HTTPS certificates chain to (env PXD_CA_FILE; a node has it in DIR/tls/ca-cert.pem; default: ${localClusterCaFile}, which pxd up writes)`)
    .option("--token <token>", `API token (shown by ps: prefer env PXD_TOKEN or PXD_TOKEN_FILE; default: ${localClusterTokenFile}, which pxd up writes)`)
    .exitOverride()
    .showSuggestionAfterError(true);
  registerStatus(program);
  registerVolume(program);
  registerNode(program);
  registerSettings(program);
  registerScrub(program);
  registerEvents(program);
  registerBackup(program);
  registerAuth(program);
  registerAudit(program);
  registerLocalNode(program);
  registerDaemon(program);
  registerDockerPlugin(program);
  registerCsi(program);
  return program;
}

/** argv as process.argv gives it (node, script, args...). */
export async function runCli(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv);
    return exitOk;
  } catch (err) {
    return report(err);
  }
}

function report(err: unknown): number {
  if (err instanceof CommanderError) {
    // commander has already printed its one line (or the help); it only needs a code.
    return err.exitCode === 0 ? exitOk : exitUsage;
  }
  if (err instanceof UsageError) {
    console.error(`error: ${err.message}`);
    return exitUsage;
  }
  if (err instanceof ApiError || err instanceof DaemonUnreachableError || err instanceof CliError) {
    console.error(`error: ${err.message}`);
    return exitFailed;
  }
  const e = err instanceof Error ? err : new Error(String(err));
  console.error(`error: ${e.message}`);
  if (process.env["PXD_DEBUG"]) console.error(e.stack);
  return exitFailed;
}

// pxd auth token create|revoke (docs/security.md).

import { Option, type Command } from "commander";
import { join } from "node:path";
import { roles, type Role, type TokenInfo } from "../api/types.js";
import { parseTtl, readClaims } from "../api/token.js";
import { tokenIdPattern } from "../cluster/rules.js";
import { clusterSecretFile, readCredentialFile } from "../os/credentials.js";
import { offlineAccess } from "../daemon/access.js";
import { clientFor, durationArg } from "./args.js";
import { CliError, UsageError } from "./errors.js";
import { json, table } from "./format.js";

interface CreateOptions {
  role: Role;
  ttl: string;
  name?: string;
  json?: boolean;
  dataDir?: string;
}

export function registerAuth(program: Command): void {
  const auth = program.command("auth").description("API tokens: who may use the control API, and how");
  const token = auth.command("token").description("make and revoke API tokens");
  token
    .command("create")
    .description("make a token (admin); prints it once, on the first line")
    .addOption(new Option("--role <role>", "admin: everything; user: its own volumes; read-only: status, lists, inspect, metrics").choices(roles).makeOptionMandatory())
    .option("--ttl <duration>", "how long it is valid, e.g. 30m, 24h, 90d", "24h")
    .option("--name <who>", "who holds it: the owner of the volumes it creates (default: the role)")
    .option("--json", "print the token and its details as JSON")
    .option("--data-dir <dir>", "sign it here with the secret in DIR/cluster.secret, without a daemon (when no admin token is left)")
    .action(async (o: CreateOptions, command: Command) => {
      const ttlMs = ttlArg(o.ttl);
      const made = o.dataDir !== undefined ? signOffline(o.dataDir, o, ttlMs) : await clientFor(command).createToken({ role: o.role, ...(o.name !== undefined ? { name: o.name } : {}), ttlSec: Math.round(ttlMs / 1000) });
      if (o.json === true) {
        console.log(JSON.stringify(made, null, 2));
        return;
      }
      console.log(made.token);
      console.error(`token ${made.id} for "${made.name}" (${made.role}), valid until ${made.expiresAt}; revoke it with: pxd auth token revoke ${made.id}`);
    });
  token
    .command("revoke <id-or-token>")
    .description("make every node refuse a token from now on (admin); give its id, or the token itself")
    .action(async (ref: string, _o: unknown, command: Command) => {
      const claims = readClaims(ref);
      const id = claims?.id ?? ref;
      if (!tokenIdPattern.test(id)) throw new UsageError(`"${ref.slice(0, 40)}" is neither a token id (16 hex digits, as pxd auth token create printed it) nor a pxd token`);
      const r = await clientFor(command).revokeToken({ id, ...(claims !== undefined ? { expiresAt: claims.exp } : {}) });
      console.log(r.revoked ? `token ${id} is revoked on every node` : `token ${id} was revoked already`);
    });
}

export function registerAudit(program: Command): void {
  program
    .command("audit")
    .description("who changed what, and which tokens were refused, from every node's audit log (admin)")
    .option("--since <duration>", "only records this recent, e.g. 30m, 24h, 7d (default: everything kept)", durationArg)
    .option("--local", "only the answering node's records")
    .option("--json", "print the records as JSON")
    .action(async (o: { since?: number; local?: boolean; json?: boolean }, command: Command) => {
      const r = await clientFor(command).audit(o.since === undefined ? 0 : Date.now() - o.since, { local: o.local === true });
      const records = r.nodes.flatMap((n) => n.records).sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
      if (o.json === true) console.log(json(r));
      else console.log(table(["AT", "NODE", "WHO", "ROLE", "FROM", "REQUEST", "STATUS", "ERROR"], records.map((x) => [x.at, x.node, x.who || "-", x.role || "-", x.from, `${x.method} ${x.path}`, String(x.status), x.error ?? ""])));
      const problems = r.nodes.flatMap((n) => [...(n.error !== undefined ? [`${n.node} did not answer: ${n.error}`] : []), ...(n.chainBroken !== undefined ? [`${n.node}'s audit log does not verify: ${n.chainBroken}`] : [])]);
      if (problems.length > 0) throw new CliError(problems.join("; "));
    });
}

function ttlArg(text: string): number {
  try {
    return parseTtl(text);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

function signOffline(dataDir: string, o: CreateOptions, ttlMs: number): TokenInfo {
  const file = join(dataDir, clusterSecretFile);
  const secret = readCredentialFile(file, "the cluster secret");
  if (secret === undefined) throw new UsageError(`${file} does not exist; --data-dir takes the data dir of a node of the cluster`);
  return offlineAccess(secret).mint(o.role, o.name ?? o.role, ttlMs);
}

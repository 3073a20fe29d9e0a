// The Docker files against the code, without a Docker engine: Dockerfile,
// docker-compose.yml and .dockerignore are parsed here (a small YAML subset
// parser, no npm dependency), checked against src/constants.ts, the API's
// routes and `pxd daemon --help`, and then the compose file's own command
// lines are run: the runtime stage's files are laid out as the Dockerfile's
// COPY lines say, and the three services start as real daemon processes with
// their service names (the addresses they listen on) resolved to free loopback
// addresses and /data replaced by temp dirs.
// They must start, join, see each other and replicate a volume.

import { daemonNodeFlags } from "../../src/os/node-flags.js";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { offlineAccess } from "../../src/daemon/access.js";
import { ApiClient } from "../../src/api/client.js";
import { defaultApiPort, defaultNbdPort, defaultPeerPort, peerSecretBytesMin } from "../../src/constants.js";
import { freeBase, nodeHost, waitUntil } from "../helpers/cluster.js";
import { freePort } from "../helpers/daemon.js";
import { tempDir } from "../helpers/tmp.js";

/** The repository root (this file runs as dist/test/unit/docker-files.test.js). */
const root = fileURLToPath(new URL("../../../", import.meta.url));
const read = (p: string): string => readFileSync(join(root, p), "utf8");

// ---- a YAML subset: block maps, block sequences, JSON-style flow sequences and quoted scalars ----

type Yaml = string | null | Yaml[] | { [key: string]: Yaml };

interface YamlLine {
  indent: number;
  text: string;
  lineNo: number;
}

/**
 * Parses the YAML subset docker-compose.yml keeps to: `key: value`, `key:`
 * with a nested block, `- item` (also `- key: value`), `[...]` flow sequences
 * written as JSON, "double-quoted" and plain scalars (all kept as strings),
 * full-line comments. Anything else (anchors, tags, multi-line scalars) throws,
 * so the compose file cannot drift out of what this test understands.
 */
export function parseYamlSubset(text: string): Yaml {
  const lines: YamlLine[] = [];
  text.split("\n").forEach((raw, i) => {
    if (/^\s*(#.*)?$/.test(raw)) return;
    if (raw.includes("\t")) throw new Error(`line ${i + 1}: tab`);
    const indent = raw.length - raw.trimStart().length;
    let t = raw.trim();
    // A sequence item's content is a block of its own, two columns further in.
    let at = indent;
    while (t.startsWith("- ") || t === "-") {
      lines.push({ indent: at, text: "-", lineNo: i + 1 });
      t = t.slice(1).trimStart();
      at += 2;
      if (t === "") return;
    }
    lines.push({ indent: at, text: t, lineNo: i + 1 });
  });
  let pos = 0;
  const scalar = (s: string, lineNo: number): Yaml => {
    if (s === "" || s === "~" || s === "null") return null;
    if (s.startsWith('"') || s.startsWith("[")) {
      try {
        return JSON.parse(s) as Yaml;
      } catch {
        throw new Error(`line ${lineNo}: not a JSON-style scalar or flow sequence: ${s}`);
      }
    }
    if (/^[&*!|>'{]/.test(s) || / #/.test(s)) throw new Error(`line ${lineNo}: outside the YAML subset: ${s}`);
    return s;
  };
  const block = (indent: number): Yaml => {
    const first = lines[pos]!;
    if (first.text === "-") {
      const list: Yaml[] = [];
      while (pos < lines.length && lines[pos]!.indent === indent && lines[pos]!.text === "-") {
        pos++;
        const next = lines[pos];
        if (next === undefined || next.indent <= indent) list.push(null);
        else if (next.text !== "-" && !/^[A-Za-z0-9_.-]+:(\s|$)/.test(next.text)) {
          list.push(scalar(next.text, next.lineNo)); // `- value`
          pos++;
        } else list.push(block(next.indent));
      }
      return list;
    }
    const map: { [key: string]: Yaml } = {};
    while (pos < lines.length && lines[pos]!.indent === indent) {
      const l = lines[pos]!;
      const m = /^([A-Za-z0-9_.-]+):(?:\s+(.*))?$/.exec(l.text);
      if (m === null) throw new Error(`line ${l.lineNo}: expected "key: value": ${l.text}`);
      const key = m[1]!;
      if (key in map) throw new Error(`line ${l.lineNo}: duplicate key ${key}`);
      pos++;
      const rest = (m[2] ?? "").trim();
      if (rest !== "") map[key] = scalar(rest, l.lineNo);
      else map[key] = pos < lines.length && lines[pos]!.indent > indent ? block(lines[pos]!.indent) : null;
    }
    if (pos < lines.length && lines[pos]!.indent > indent) throw new Error(`line ${lines[pos]!.lineNo}: unexpected indentation`);
    return map;
  };
  if (lines.length === 0) return null;
  const doc = block(lines[0]!.indent);
  if (pos !== lines.length) throw new Error(`line ${lines[pos]!.lineNo}: unexpected indentation`);
  return doc;
}

function asMap(v: Yaml | undefined, what: string): { [key: string]: Yaml } {
  if (v === null || v === undefined || typeof v !== "object" || Array.isArray(v)) throw new Error(`${what} is not a mapping`);
  return v;
}

function asList(v: Yaml | undefined, what: string): Yaml[] {
  if (!Array.isArray(v)) throw new Error(`${what} is not a list`);
  return v;
}

function asStrings(v: Yaml | undefined, what: string): string[] {
  return asList(v, what).map((x, i) => {
    if (typeof x !== "string") throw new Error(`${what}[${i}] is not a string`);
    return x;
  });
}

/** Compose's interpolation of ${VAR}, ${VAR:-default} and ${VAR-default} from `env`. */
function interpolate(s: string, env: Record<string, string | undefined>): string {
  return s.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}/g, (_m, name: string, op: string | undefined, def: string | undefined) => {
    const v = env[name];
    if (op === ":-") return v === undefined || v === "" ? (def ?? "") : v;
    if (op === "-") return v === undefined ? (def ?? "") : v;
    return v ?? "";
  });
}

// ---- the Dockerfile ----

interface Instruction {
  op: string;
  args: string;
}

interface Stage {
  from: string;
  name: string | undefined;
  steps: Instruction[];
}

function parseDockerfile(text: string): Stage[] {
  const joined = text.split("\n").filter((l) => !/^\s*#/.test(l)).join("\n").replace(/\\\n/g, " ");
  const stages: Stage[] = [];
  for (const line of joined.split("\n")) {
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (m === null) continue;
    const op = m[1]!.toUpperCase();
    const args = m[2]!.trim().replace(/\s+/g, " ");
    if (op === "FROM") {
      const f = /^(\S+)(?: AS (\S+))?$/i.exec(args);
      if (f === null) throw new Error(`FROM ${args}`);
      stages.push({ from: f[1]!, name: f[2], steps: [] });
    } else {
      const s = stages[stages.length - 1];
      if (s === undefined) throw new Error(`${op} before FROM`);
      s.steps.push({ op, args });
    }
  }
  return stages;
}

function only(stage: Stage, op: string): string {
  const all = stage.steps.filter((s) => s.op === op);
  if (all.length !== 1) throw new Error(`expected one ${op} in stage ${stage.name ?? stage.from}, found ${all.length}`);
  return all[0]!.args;
}

/** Exec form only: shell form would put /bin/sh -c in front, and signals would not reach node. */
function execForm(args: string, what: string): string[] {
  if (!args.startsWith("[")) throw new Error(`${what} is not in exec (JSON) form: ${args}`);
  return JSON.parse(args) as string[];
}

function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const s of stage.steps.filter((x) => x.op === "ENV")) {
    for (const pair of s.args.split(" ")) {
      const eq = pair.indexOf("=");
      if (eq <= 0) throw new Error(`ENV ${s.args}: only KEY=VALUE pairs are supported here`);
      env[pair.slice(0, eq)] = pair.slice(eq + 1);
    }
  }
  return env;
}

const stages = parseDockerfile(read("Dockerfile"));
const build = stages[0]!;
const runtime = stages[stages.length - 1]!;
const runtimeUser = only(runtime, "USER");
const entrypoint = execForm(only(runtime, "ENTRYPOINT"), "ENTRYPOINT");
const cmd = execForm(only(runtime, "CMD"), "CMD");
const healthcheck = only(runtime, "HEALTHCHECK");
/** The health check's command, as Docker runs it (exec form after the CMD keyword). */
const healthCommand = execForm(healthcheck.slice(healthcheck.indexOf("CMD ") + 4), "HEALTHCHECK CMD");

// ---- docker-compose.yml ----

const compose = asMap(parseYamlSubset(read("docker-compose.yml")), "docker-compose.yml");
const services = asMap(compose["services"], "services");
const serviceNames = Object.keys(services);

interface Service {
  name: string;
  command: string[];
  environment: Record<string, string>;
  volumes: string[];
  ports: string[];
  address: string;
  dependsOn: Record<string, string>;
}

function service(name: string): Service {
  const s = asMap(services[name], `services.${name}`);
  const envMap = asMap(s["environment"], `services.${name}.environment`);
  const environment: Record<string, string> = {};
  for (const [k, v] of Object.entries(envMap)) environment[k] = String(v);
  const networks = asStrings(s["networks"], `services.${name}.networks`);
  if (networks.length !== 1) throw new Error(`services.${name} is on ${networks.length} networks`);
  // The address a node listens on and advertises: its service name, which Docker's DNS resolves on the compose network.
  const address = name;
  const dependsOn: Record<string, string> = {};
  if (s["depends_on"] !== undefined) {
    for (const [dep, v] of Object.entries(asMap(s["depends_on"], `services.${name}.depends_on`))) {
      dependsOn[dep] = String(asMap(v, `services.${name}.depends_on.${dep}`)["condition"]);
    }
  }
  return {
    name,
    command: asStrings(s["command"], `services.${name}.command`),
    environment,
    volumes: asStrings(s["volumes"], `services.${name}.volumes`),
    ports: s["ports"] === undefined ? [] : asStrings(s["ports"], `services.${name}.ports`),
    address,
    dependsOn,
  };
}

function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  if (args.indexOf(name, i + 1) >= 0) throw new Error(`${name} given twice in ${args.join(" ")}`);
  return args[i + 1];
}

/** The services in an order that respects depends_on (compose starts them so). */
function startOrder(all: Service[]): Service[] {
  const done: Service[] = [];
  while (done.length < all.length) {
    const next = all.find((s) => !done.includes(s) && Object.keys(s.dependsOn).every((d) => done.some((x) => x.name === d)));
    if (next === undefined) throw new Error("depends_on has a cycle or names a missing service");
    done.push(next);
  }
  return done;
}

// ---- Dockerfile checks ----

test("Dockerfile: two stages on node:20-bookworm-slim, build with npm ci + npm run build, runtime with npm ci --omit=dev", () => {
  assert.is(stages.length, 2);
  for (const s of stages) assert.is(s.from, "node:20-bookworm-slim");
  assert.is(build.name, "build");
  const buildRuns = build.steps.filter((s) => s.op === "RUN").map((s) => s.args).join(" && ");
  assert.match(buildRuns, /npm ci\b/);
  assert.match(buildRuns, /npm run build\b/);
  const runtimeRuns = runtime.steps.filter((s) => s.op === "RUN").map((s) => s.args).join(" && ");
  assert.match(runtimeRuns, /npm ci --omit=dev\b/);
  assert.not.match(runtimeRuns, /npm run build/);
});

test("Dockerfile: the default command is `node FLAGS dist/bin/pxd.js daemon --data-dir /data --listen 0.0.0.0`, FLAGS the daemon's Node.js flags", () => {
  assert.equal([...entrypoint, ...cmd], ["node", ...daemonNodeFlags, "dist/bin/pxd.js", "daemon", "--data-dir", "/data", "--listen", "0.0.0.0"]);
  assert.is(only(runtime, "WORKDIR"), "/app");
});

test("Dockerfile: EXPOSE is the NBD, API and peer ports of src/constants.ts", () => {
  const exposed = only(runtime, "EXPOSE").split(" ").map((p) => Number(p.replace(/\/tcp$/, "")));
  assert.equal(exposed.sort(), [defaultNbdPort, defaultApiPort, defaultPeerPort].sort());
});

test("Dockerfile: a non-root user that owns the /data volume", () => {
  assert.ok(runtimeUser !== "" && runtimeUser !== "root" && runtimeUser !== "0", `USER ${runtimeUser}`);
  assert.is(only(runtime, "VOLUME"), "/data");
  const runs = runtime.steps.filter((s) => s.op === "RUN").map((s) => s.args).join(" ");
  assert.match(runs, new RegExp(`chown ${runtimeUser}(:${runtimeUser})? /data`));
  // The user is set before the command, the ownership before VOLUME (a new named volume copies it).
  const ops = runtime.steps.map((s) => s.op);
  assert.ok(ops.indexOf("USER") < ops.indexOf("CMD") && ops.lastIndexOf("RUN") < ops.indexOf("VOLUME"));
});

test("Dockerfile: the health check GETs /v1/status with node alone (no curl), 127.0.0.1:9001 unless PXD_HOST says otherwise", () => {
  assert.is(healthCommand[0], "node");
  assert.is(healthCommand[1], "-e");
  const script = healthCommand[2] ?? "";
  const paths = script.match(/\/v1\/[A-Za-z0-9/_-]*|\/metrics/g) ?? [];
  assert.equal(paths, ["/v1/status"]);
  assert.match(script, new RegExp(`127\\.0\\.0\\.1:${defaultApiPort}`));
  assert.match(script, /\.get\(/);
  assert.match(script, /PXD_CA_FILE/, "HTTPS checked against the cluster CA the node keeps");
  assert.not.match(script, /method/); // fetch's default: GET
  // The route exists on the server: GET /v1/status is in src/api/server.ts (and the live test below calls it).
  assert.match(read("src/api/server.ts"), /pattern: \/\^\\\/v1\\\/status\$\/, methods: \{ GET:/);
  assert.match(healthcheck, /--interval=\S+ .*--start-period=\S+/);
});

test("Dockerfile: the build stage copies every file `npm run build` runs", () => {
  const pkg = JSON.parse(read("package.json")) as { scripts: Record<string, string> };
  const copied = build.steps.filter((s) => s.op === "COPY" && !s.args.startsWith("--from=")).flatMap((s) => s.args.split(" ").slice(0, -1));
  const used = pkg.scripts["build"]!.match(/[\w.-]+\/[\w./-]+|[\w-]+\.json/g) ?? [];
  assert.ok(used.length >= 2, pkg.scripts["build"]);
  for (const path of used) assert.ok(copied.some((c) => path === c || path.startsWith(`${c.replace(/\/$/, "")}/`)), `the build stage copies ${path}`);
});

test("deploy/docker-plugin/config.json: a managed plugin whose entrypoint is pxd docker-plugin on the socket dockerd expects, with options the CLI knows", () => {
  const config = JSON.parse(read("deploy/docker-plugin/config.json")) as {
    entrypoint: string[];
    interface: { socket: string; types: string[] };
    propagatedMount: string;
    network: { type: string };
    linux: { capabilities: string[] };
  };
  assert.equal(config.interface.types, ["docker.volumedriver/1.0"]);
  assert.is(config.network.type, "host");
  assert.ok(config.linux.capabilities.includes("CAP_SYS_ADMIN"));
  const [bin, verb, ...args] = config.entrypoint;
  assert.is(verb, "docker-plugin");
  assert.ok(existsSync(join(root, bin!.replace(/^\/app\//, ""))), `${bin} is the image's bin/pxd`);
  assert.is(option(args, "--socket"), `/run/docker/plugins/${config.interface.socket}`);
  assert.is(config.propagatedMount, `${option(args, "--state-dir")}/mounts`);
  const help = spawnSync(process.execPath, [join(root, "dist/bin/pxd.js"), "docker-plugin", "--help"], { encoding: "utf8" });
  assert.is(help.status, 0, help.stderr);
  for (const a of args.filter((x) => x.startsWith("--"))) assert.ok(help.stdout.includes(`${a} <`), `pxd docker-plugin knows ${a}`);
});

test(".dockerignore keeps node_modules, dist, .pxd and .git out, and no COPY from the context needs them", () => {
  const ignored = read(".dockerignore").split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
  for (const want of ["node_modules", "dist", ".pxd", ".git"]) assert.ok(ignored.includes(want), `${want} in .dockerignore`);
  for (const s of stages) {
    for (const c of s.steps.filter((x) => x.op === "COPY" && !x.args.startsWith("--from="))) {
      const sources = c.args.split(" ").slice(0, -1);
      for (const src of sources) {
        assert.ok(existsSync(join(root, src)), `COPY source ${src} exists`);
        assert.not.ok(ignored.includes(src.split("/")[0]!), `COPY source ${src} is not ignored`);
      }
    }
  }
});

test("the runtime's packages are production dependencies: every bare import of dist/src and dist/bin is in dependencies", () => {
  const pkg = JSON.parse(read("package.json")) as { dependencies: Record<string, string> };
  const missing = new Set<string>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".js")) {
        const text = readFileSync(p, "utf8");
        const specs = [...text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s*["']([^"']+)["']/gm), ...text.matchAll(/\bimport\(\s*["']([^"']+)["']\s*\)/g)];
        for (const m of specs) {
          const spec = m[1]!;
          if (spec.startsWith("node:") || spec.startsWith(".")) continue;
          const name = spec.startsWith("@") ? spec.split("/").slice(0, 2).join("/") : spec.split("/")[0]!;
          if (!(name in pkg.dependencies)) missing.add(`${name} (${p.slice(root.length)})`);
        }
      }
    }
  };
  walk(join(root, "dist/src"));
  walk(join(root, "dist/bin"));
  assert.equal([...missing], []);
});

// ---- docker-compose.yml checks ----

const svc = serviceNames.map(service);

test("compose: three services pxd1 (bootstraps), pxd2 and pxd3 (join pxd1), each a pxd daemon of this image", () => {
  assert.equal(serviceNames, ["pxd1", "pxd2", "pxd3"]);
  const images = new Set(serviceNames.map((n) => String(asMap(services[n], n)["image"])));
  assert.is(images.size, 1, "one image for all");
  for (const s of svc) {
    assert.is(s.command[0], "daemon", `${s.name} runs the daemon`);
    assert.is(option(s.command, "--data-dir"), "/data");
    assert.is(option(s.command, "--name"), s.name);
  }
  const first = svc[0]!;
  assert.is(option(first.command, "--join"), undefined, "pxd1 bootstraps");
  for (const s of svc.slice(1)) assert.is(option(s.command, "--join"), `${first.address}:${defaultApiPort}`, `${s.name} joins pxd1's API`);
});

test("compose: each node listens on (and so advertises) its service name, which Docker's DNS resolves on the pxd network: no fixed addresses", () => {
  assert.equal(Object.keys(asMap(compose["networks"], "networks")), ["pxd"]);
  assert.is(asMap(asMap(compose["networks"], "networks")["pxd"], "networks.pxd")["ipam"], undefined, "no subnet to collide with the host's");
  for (const s of svc) {
    assert.equal(asStrings(asMap(services[s.name], s.name)["networks"], "networks"), ["pxd"]);
    assert.is(option(s.command, "--listen"), s.name, `${s.name} --listen is its service name`);
    assert.is(s.environment["PXD_HOST"], `${s.name}:${defaultApiPort}`, `${s.name} PXD_HOST (CLI and health check)`);
  }
});

test("compose: distinct named volumes for /data, all declared", () => {
  const declared = Object.keys(asMap(compose["volumes"], "volumes"));
  const used = svc.map((s) => {
    assert.is(s.volumes.length, 1);
    const [vol, target] = s.volumes[0]!.split(":");
    assert.is(target, "/data");
    assert.ok(declared.includes(vol!), `${vol} declared`);
    return vol!;
  });
  assert.is(new Set(used).size, 3);
});

test("compose: one cluster secret for all, from PXD_CLUSTER_SECRET with a default of at least 16 bytes", () => {
  const values = new Set(svc.map((s) => s.environment["PXD_CLUSTER_SECRET"]));
  assert.is(values.size, 1, "the same secret everywhere");
  const v = [...values][0] ?? "";
  const m = /^\$\{PXD_CLUSTER_SECRET:-([^}]+)\}$/.exec(v);
  assert.ok(m, `secret ${v} comes from PXD_CLUSTER_SECRET with a default`);
  assert.ok(Buffer.byteLength(m![1]!) >= peerSecretBytesMin, "default long enough for the daemon");
  for (const s of svc) assert.is(option(s.command, "--cluster-secret"), undefined, "not on the command line (visible in ps)");
});

test("compose: pxd1 publishes NBD and the API; joiners start once the nodes before them are healthy", () => {
  const published = (s: Service): number[] => s.ports.map((p) => Number(p.split(":").pop()));
  assert.equal(published(svc[0]!).sort(), [defaultApiPort, defaultNbdPort].sort());
  assert.equal(published(svc[1]!), []);
  assert.equal(published(svc[2]!), []);
  for (const s of svc.slice(1)) assert.is(s.dependsOn["pxd1"], "service_healthy", `${s.name} waits for pxd1`);
  for (const n of serviceNames) assert.is(asMap(services[n], n)["healthcheck"], undefined, "the image's health check is used");
});

test("the YAML subset parser reads what YAML means and refuses what it does not know", () => {
  assert.equal(parseYamlSubset("a:\n  - x: 1\n    y: \"2\"\n  - [\"p\", \"q\"]\nb: c\n"), { a: [{ x: "1", y: "2" }, ["p", "q"]], b: "c" });
  assert.throws(() => parseYamlSubset("a: &anchor x\n"));
  assert.throws(() => parseYamlSubset("a: x\na: y\n"));
  assert.is(interpolate("${X:-dflt}", {}), "dflt");
  assert.is(interpolate("${X:-dflt}", { X: "set" }), "set");
});

// ---- run it: the runtime stage's files and the compose file's command lines ----

/** Lays out the runtime stage's files (its COPY lines) under a temp dir standing for "/". */
function stageRuntime(into: string): string {
  let workdir = "/";
  const buildWorkdir = only(build, "WORKDIR");
  for (const s of runtime.steps) {
    if (s.op === "WORKDIR") {
      workdir = s.args;
      mkdirSync(join(into, workdir), { recursive: true });
    } else if (s.op === "COPY") {
      const parts = s.args.split(" ");
      const fromBuild = parts[0]!.startsWith("--from=");
      if (fromBuild) assert.is(parts.shift(), `--from=${build.name}`);
      const dest = parts.pop()!;
      const to = join(into, dest.startsWith("/") ? dest : join(workdir, dest));
      for (const src of parts) {
        // The build stage's WORKDIR holds the repo as built (this checkout after `npx tsc`).
        const from = fromBuild ? join(root, src.slice(buildWorkdir.length)) : join(root, src);
        assert.ok(fromBuild ? src.startsWith(`${buildWorkdir}/`) : true, `${src} under the build stage's WORKDIR`);
        assert.ok(existsSync(from), `${from} exists`);
        const target = dest.endsWith("/") || parts.length > 1 ? join(to, src.split("/").pop()!) : to;
        mkdirSync(dirname(target), { recursive: true });
        cpSync(from, target, { recursive: true });
      }
    }
  }
  // `npm ci --omit=dev` stands here as the checkout's node_modules (dependencies checked above).
  symlinkSync(join(root, "node_modules"), join(into, workdir, "node_modules"));
  return join(into, workdir);
}

/**
 * Where the compose services run here: 127.0.0.11-13 like the cluster tests
 * (or the next free 127.0.0.x1-x3 while another cluster holds those), or
 * PXD_DOCKER_TEST_HOSTS=a,b,c.
 */
const base = process.env["PXD_DOCKER_TEST_HOSTS"] === undefined ? await freeBase(3) : 0;
const testHosts = process.env["PXD_DOCKER_TEST_HOSTS"]?.split(",") ?? [0, 1, 2].map((i) => nodeHost(i, base));

const tmp = tempDir("docker");
const app = stageRuntime(join(tmp.dir, "image"));
const children: ChildProcess[] = [];

function imageEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...envOf(runtime), ...extra };
  delete env["PXD_TEST_LOG"];
  return env;
}

/** Runs the Dockerfile's health check command as Docker would, with a service's environment. */
function healthy(env: Record<string, string>): boolean {
  const [exe, ...args] = healthCommand;
  const r = spawnSync(exe === "node" ? process.execPath : exe!, args, { cwd: app, env: imageEnv(env), timeout: 10000 });
  return r.status === 0;
}

function canListen(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

test.after(async () => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGTERM");
  await Promise.all(
    children.map((c) =>
      c.exitCode !== null
        ? undefined
        : new Promise<void>((resolve) => {
            const t = setTimeout(() => c.kill("SIGKILL"), 10000);
            c.once("exit", () => (clearTimeout(t), resolve()));
          }),
    ),
  );
  tmp.remove();
});

test("the runtime files run: `pxd daemon --help` knows every option the image and the compose file pass", () => {
  const [node, ...rest] = entrypoint;
  const entry = rest[rest.length - 1];
  assert.is(node, "node");
  const help = spawnSync(process.execPath, [entry!, "daemon", "--help"], { cwd: app, env: imageEnv({}), encoding: "utf8" });
  assert.is(help.status, 0, help.stderr);
  for (const args of [cmd, ...svc.map((s) => s.command)]) {
    for (const a of args.filter((x) => x.startsWith("--"))) assert.ok(help.stdout.includes(`${a} <`), `pxd daemon knows ${a}`);
  }
  // The bin/pxd shim (linked onto PATH in the image) finds the compiled CLI.
  const shim = spawnSync(process.execPath, [join(app, "bin/pxd"), "--help"], { cwd: tmp.dir, env: imageEnv({}), encoding: "utf8" });
  assert.is(shim.status, 0, shim.stderr);
  assert.match(shim.stdout, /daemon/);
});

test(`the compose command lines start a 3-node cluster (service names -> ${testHosts.join(", ")}) that joins and replicates`, async () => {
  const ordered = startOrder(svc);
  // Docker's DNS, here: a service name (alone, or before :PORT) becomes its loopback address.
  const hostOf = new Map(svc.map((s, i) => [s.address, testHosts[i]!]));
  const local = (v: string): string => {
    const [host, ...port] = v.split(":");
    const to = hostOf.get(host!);
    return to === undefined ? v : [to, ...port].join(":");
  };
  for (const host of hostOf.values()) {
    for (const port of [defaultNbdPort, defaultApiPort, defaultPeerPort]) {
      if (!(await canListen(host, port))) {
        throw new Error(`${host}:${port} is taken: this test runs the compose command lines on ${testHosts.join(", ")} with the standard ports; another cluster took them since they were picked (or set PXD_DOCKER_TEST_HOSTS to three free loopback addresses, e.g. 127.0.0.61,127.0.0.62,127.0.0.63)`);
      }
    }
  }
  const logs = new Map<string, string>();
  const healthEnv = new Map<string, Record<string, string>>();
  for (const s of ordered) {
    // depends_on: service_healthy, as compose waits for it.
    for (const dep of Object.keys(s.dependsOn)) {
      await waitUntil(`${dep} healthy before ${s.name} starts`, async () => healthy(healthEnv.get(dep)!), 20000).catch((e: Error) => {
        throw new Error(`${e.message}\n${dep} printed:\n${logs.get(dep)}`);
      });
    }
    const env: Record<string, string> = {};
    // The shell has no PXD_CLUSTER_SECRET here: the compose default applies.
    for (const [k, v] of Object.entries(s.environment)) env[k] = local(interpolate(v, {}));
    // The image's PXD_CA_FILE names /data, the node's data dir: here, the service's directory.
    env["PXD_CA_FILE"] = (envOf(runtime)["PXD_CA_FILE"] ?? "").replace(/^\/data\//, `${join(tmp.dir, s.name)}/`);
    healthEnv.set(s.name, env);
    const args = s.command.map((a, i) => (a === "/data" ? join(tmp.dir, s.name) : ["--listen", "--join"].includes(s.command[i - 1]!) ? local(a) : a));
    const childEnv = imageEnv(env);
    const child = spawn(process.execPath, [...entrypoint.slice(1), ...args], { cwd: app, env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    logs.set(s.name, "");
    const collect = (d: Buffer): void => void logs.set(s.name, logs.get(s.name) + d.toString());
    child.stdout!.on("data", collect);
    child.stderr!.on("data", collect);
    child.once("exit", (code) => collect(Buffer.from(`[exited ${code}]\n`)));
  }
  const last = ordered[ordered.length - 1]!;
  await waitUntil(`${last.name} healthy`, async () => healthy(healthEnv.get(last.name)!), 20000);
  // An admin token of the compose file's secret, as an operator would make with pxd auth token create --data-dir.
  const token = (env: Record<string, string>): string => offlineAccess(env["PXD_CLUSTER_SECRET"]!).mint("admin", "admin", 3_600_000).token;
  const apis = svc.map((s) => new ApiClient(healthEnv.get(s.name)!["PXD_HOST"]!, { token: token(healthEnv.get(s.name)!), ca: readFileSync(healthEnv.get(s.name)!["PXD_CA_FILE"]!, "utf8") }));
  const dump = (): string => [...logs].map(([n, l]) => `--- ${n}\n${l}`).join("\n");
  try {
    await waitUntil("three nodes up in every node's /v1/status", async () => {
      for (const api of apis) {
        const st = await api.status();
        if (st.nodes.length !== 3 || st.nodes.some((n) => n.health !== "up")) return false;
      }
      return true;
    }, 20000);
    const st = await apis[2]!.status();
    assert.equal(st.nodes.map((n) => n.name).sort(), ["pxd1", "pxd2", "pxd3"]);
    assert.equal(st.nodes.map((n) => n.address).sort(), [...testHosts].sort());
    // The peers really talk: a 3-replica volume gets a Raft leader.
    await apis[0]!.createVolume({ name: "compose", sizeBytes: 16 * 1024 * 1024, repl: 3 });
    const v = await waitUntil("a leader for the repl-3 volume", async () => {
      const info = await apis[1]!.inspectVolume("compose");
      return info.replicas.some((r) => r.leader) ? info : undefined;
    }, 15000);
    assert.is(v.replicas.length, 3);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${dump()}`);
  }
  // And the health check fails where no node answers.
  assert.not.ok(healthy({ PXD_HOST: `127.0.0.1:${await freePort()}` }), "the health check fails where nothing listens");
});

test.run();

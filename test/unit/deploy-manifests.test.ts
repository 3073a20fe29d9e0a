// deploy/kubernetes against the code, without a cluster: every manifest is
// parsed as YAML and what must agree with pxd does: the driver's name, the
// StorageClass parameters CreateVolume takes, the flags of `pxd daemon` and
// `pxd csi` (from their --help), the ports of src/constants.ts, and the
// socket paths the node-driver-registrar, the kubelet and csi-provisioner
// are given against the plugin's --endpoint and the volumes mounted there.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join, posix } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import { csiDriverName, endpointPath, readParameters } from "../../src/cli/csi.js";
import { defaultApiPort, defaultNbdPort, defaultPeerPort } from "../../src/constants.js";

const root = fileURLToPath(new URL("../../../", import.meta.url));
const dir = join(root, "deploy", "kubernetes");
const pxdJs = join(root, "dist", "bin", "pxd.js");

type Obj = Record<string, any>;

const docs: { file: string; doc: Obj }[] = readdirSync(dir)
  .filter((f) => f.endsWith(".yaml"))
  .sort()
  .flatMap((file) =>
    parseAllDocuments(readFileSync(join(dir, file), "utf8")).map((d) => {
      if (d.errors.length > 0) throw new Error(`${file}: ${d.errors[0]!.message}`);
      return { file, doc: d.toJS() as Obj };
    }),
  );

const ofKind = (kind: string): Obj[] => docs.filter((d) => d.doc["kind"] === kind).map((d) => d.doc);
const one = (kind: string, name: string): Obj => {
  const found = ofKind(kind).filter((d) => d["metadata"].name === name);
  assert.is(found.length, 1, `one ${kind} ${name}`);
  return found[0]!;
};
const container = (workload: Obj, name: string): Obj => {
  const c = workload["spec"].template.spec.containers.find((x: Obj) => x["name"] === name);
  assert.ok(c, `container ${name} in ${workload["metadata"].name}`);
  return c;
};

/** The long options a command's --help lists. */
function helpFlags(...command: string[]): Set<string> {
  const r = spawnSync(process.execPath, [pxdJs, ...command, "--help"], { encoding: "utf8" });
  assert.is(r.status, 0, r.stderr);
  return new Set([...r.stdout.matchAll(/--[a-z][a-z-]*/g)].map((m) => m[0]));
}

/** `--flag=value` and `--flag value` arguments as a map (a bare word is a subcommand). */
function flagsOf(args: string[]): { words: string[]; flags: Map<string, string> } {
  const words: string[] = [];
  const flags = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith("--")) words.push(a);
    else if (a.includes("=")) flags.set(a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1));
    else if (args[i + 1] !== undefined && !args[i + 1]!.startsWith("--")) flags.set(a, args[++i]!);
    else flags.set(a, "");
  }
  return { words, flags };
}

/** The host path behind a path in a container, through its volumeMounts and the pod's hostPath volumes. */
function hostPathOf(workload: Obj, c: Obj, path: string): string | undefined {
  for (const m of c["volumeMounts"] ?? []) {
    const rel = posix.relative(m.mountPath, path);
    if (rel.startsWith("..")) continue;
    const v = workload["spec"].template.spec.volumes.find((x: Obj) => x["name"] === m.name);
    return v?.hostPath ? posix.join(v.hostPath.path, rel) : undefined;
  }
  return undefined;
}

/** The volume a path in a container lies on, and the path relative to it. */
function volumeOf(c: Obj, path: string): string {
  const m = (c["volumeMounts"] ?? []).find((x: Obj) => !posix.relative(x["mountPath"], path).startsWith(".."));
  assert.ok(m, `${path} is on a volume of ${c["name"]}`);
  return `${m.name}:${posix.relative(m.mountPath, path)}`;
}

const entrypoint = ["node", "--initial-old-space-size=64", "dist/bin/pxd.js"];

/** A `pxd csi` container: the image's entrypoint, flags `pxd csi --help` (or the global --host) lists, the mode, and its socket. */
function csiPlugin(workload: Obj, name: string, mode: string): { plugin: Obj; flags: Map<string, string>; socket: string } {
  const plugin = container(workload, name);
  assert.equal(plugin["command"], entrypoint);
  const { words, flags } = flagsOf(plugin["args"]);
  assert.equal(words, ["csi"]);
  const known = new Set([...helpFlags("csi"), "--host"]);
  for (const f of flags.keys()) assert.ok(known.has(f), `pxd csi has no ${f}`);
  assert.is(flags.get("--mode"), mode);
  return { plugin, flags, socket: endpointPath(flags.get("--endpoint")!) };
}

test("every manifest parses, names its kind, and namespaced objects are in namespace pxd", () => {
  assert.ok(docs.length >= 10, `${docs.length} documents`);
  const clusterScoped = new Set(["Namespace", "CSIDriver", "StorageClass", "ClusterRole", "ClusterRoleBinding", "VolumeSnapshotClass"]);
  for (const { file, doc } of docs) {
    assert.ok(typeof doc["apiVersion"] === "string" && typeof doc["kind"] === "string" && typeof doc["metadata"]?.name === "string", file);
    if (!clusterScoped.has(doc["kind"])) assert.is(doc["metadata"].namespace, "pxd", `${file}: ${doc["kind"]} ${doc["metadata"].name}`);
  }
});

test("CSIDriver: the name GetPluginInfo answers, no attach step, persistent volumes only", () => {
  const d = one("CSIDriver", csiDriverName);
  assert.is(d["spec"].attachRequired, false);
  assert.equal(d["spec"].volumeLifecycleModes, ["Persistent"]);
});

test("StorageClasses: provisioner pxd.csi.io, parameters CreateVolume takes, expansion", () => {
  const classes = ofKind("StorageClass");
  assert.ok(classes.length >= 2);
  assert.ok(classes.some((s) => s["parameters"].repl === "3" && s["parameters"].zones === "true"), "an example with zones");
  for (const s of classes) {
    assert.is(s["provisioner"], csiDriverName);
    assert.is(s["allowVolumeExpansion"], true, "csi-resizer grows pxd volumes");
    readParameters(s["parameters"]);
  }
});

test("DaemonSet: the pxd daemon's flags exist in `pxd daemon --help`, and its ports are the defaults", () => {
  const ds = one("DaemonSet", "pxd-node");
  const pxd = container(ds, "pxd");
  const script = pxd["command"].at(-1) as string;
  const run = /exec (node .*? dist\/bin\/pxd\.js) daemon ([^\n;]*)/.exec(script.replace(/\s+/g, " "));
  assert.ok(run, script);
  assert.is(run[1], entrypoint.join(" "));
  const known = helpFlags("daemon");
  for (const flag of [...script.matchAll(/--[a-z][a-z-]*/g)].map((m) => m[0]).filter((f) => f !== "--initial-old-space-size")) assert.ok(known.has(flag), `pxd daemon has no ${flag}`);
  assert.match(script, /--join "\$PXD_SEED:9001"/);
  assert.equal(
    pxd["ports"].map((p: Obj) => p["containerPort"]).sort(),
    [defaultNbdPort, defaultApiPort, defaultPeerPort].sort(),
  );
  assert.is(pxd["readinessProbe"].httpGet.port, defaultApiPort);
  assert.ok(ds["spec"].template.spec.hostNetwork, "the daemon registers the node's own address");
  assert.ok(hostPathOf(ds, pxd, "/var/lib/pxd"), "the data dir is on the host");
});

test("DaemonSet: the node plugin's endpoint is the registrar's --csi-address and, on the host, its --kubelet-registration-path", () => {
  const ds = one("DaemonSet", "pxd-node");
  const { plugin, flags, socket } = csiPlugin(ds, "csi-node", "node");
  assert.is(flags.get("--host"), `$(POD_IP):${defaultApiPort}`);
  const registrar = flagsOf(container(ds, "node-driver-registrar")["args"]).flags;
  const reg = container(ds, "node-driver-registrar");
  assert.is(registrar.get("--csi-address"), socket);
  assert.is(volumeOf(reg, socket), volumeOf(plugin, socket), "the registrar sees the plugin's socket");
  assert.is(registrar.get("--kubelet-registration-path"), hostPathOf(ds, plugin, socket));
  assert.is(registrar.get("--kubelet-registration-path"), `/var/lib/kubelet/plugins/${csiDriverName}/csi.sock`);
  assert.is(hostPathOf(ds, reg, "/registration"), "/var/lib/kubelet/plugins_registry");
  const kubelet = plugin["volumeMounts"].find((m: Obj) => m["mountPath"] === "/var/lib/kubelet");
  assert.is(kubelet?.mountPropagation, "Bidirectional", "mounts made in the plugin reach the kubelet and the pods");
  assert.ok(plugin["securityContext"].privileged, "attach makes block devices and mounts");
  assert.is(hostPathOf(ds, plugin, "/run/pxd/attach"), "/run/pxd/attach", "attach records outlive the plugin's container");
  assert.is(flags.get("--node-id"), "$(NODE_NAME)");
  const nodeName = ds["spec"].template.spec.containers.find((c: Obj) => c["name"] === "pxd").command.at(-1) as string;
  assert.match(nodeName, /--name "\$NODE_NAME"/, "the node id is the pxd node's name, so topology names replica nodes");
});

test("controller: pxd csi --mode controller and csi-provisioner on one socket; the API service's port", () => {
  const dep = one("Deployment", "pxd-csi-controller");
  const { plugin, flags, socket } = csiPlugin(dep, "csi-controller", "controller");
  for (const sidecar of ["csi-provisioner", "csi-resizer", "csi-snapshotter"]) {
    const c = container(dep, sidecar);
    assert.is(flagsOf(c["args"]).flags.get("--csi-address"), socket, sidecar);
    assert.is(volumeOf(c, socket), volumeOf(plugin, socket), sidecar);
  }
  assert.not.ok(dep["spec"].template.spec.containers.some((c: Obj) => /csi-attacher/.test(c["image"])), "no csi-attacher: attachRequired is false");
  const svc = one("Service", "pxd-api");
  assert.is(flags.get("--host"), `${svc["metadata"].name}.${svc["metadata"].namespace}.svc:${svc["spec"].ports[0].port}`);
  assert.is(svc["spec"].ports[0].targetPort, defaultApiPort);
  assert.equal(svc["spec"].selector, one("DaemonSet", "pxd-node")["spec"].template.metadata.labels);
});

test("RBAC: every service account a workload uses exists, and the bindings name real ones", () => {
  const accounts = new Set(ofKind("ServiceAccount").map((s) => `${s["metadata"].namespace}/${s["metadata"].name}`));
  for (const w of [...ofKind("DaemonSet"), ...ofKind("Deployment")]) assert.ok(accounts.has(`pxd/${w["spec"].template.spec.serviceAccountName}`), w["metadata"].name);
  for (const b of [...ofKind("ClusterRoleBinding"), ...ofKind("RoleBinding")]) {
    for (const s of b["subjects"]) assert.ok(accounts.has(`${s.namespace}/${s.name}`), `${b["metadata"].name} binds ${s.name}`);
    const role = one(b["roleRef"].kind, b["roleRef"].name);
    assert.ok(role["rules"].length > 0);
  }
  const rules = one("ClusterRole", "pxd-csi-provisioner")["rules"] as Obj[];
  const can = (resource: string, verb: string): boolean => rules.some((r) => r["resources"].includes(resource) && r["verbs"].includes(verb));
  for (const [r, v] of [["persistentvolumes", "create"], ["persistentvolumes", "delete"], ["persistentvolumeclaims", "update"], ["storageclasses", "get"], ["csinodes", "get"], ["nodes", "get"], ["events", "create"]] as const) assert.ok(can(r, v), `${v} ${r}`);
  const resizer = one("ClusterRole", "pxd-csi-resizer")["rules"] as Obj[];
  for (const [r, v] of [["persistentvolumes", "patch"], ["persistentvolumeclaims/status", "patch"], ["persistentvolumeclaims", "watch"]] as const) {
    assert.ok(resizer.some((x) => x["resources"].includes(r) && x["verbs"].includes(v)), `the resizer may ${v} ${r}`);
  }
  const snapshotter = one("ClusterRole", "pxd-csi-snapshotter")["rules"] as Obj[];
  for (const [r, v] of [["volumesnapshotcontents", "update"], ["volumesnapshotcontents/status", "patch"], ["volumesnapshotclasses", "list"]] as const) {
    assert.ok(snapshotter.some((x) => x["resources"].includes(r) && x["verbs"].includes(v)), `the snapshotter may ${v} ${r}`);
  }
  assert.is(one("VolumeSnapshotClass", "pxd-snapshots")["driver"], "pxd.csi.io", "the snapshot class names the driver");
});

test("the image of deploy/kubernetes carries the proto pxd csi loads and the attach tools", () => {
  const df = readFileSync(join(dir, "Dockerfile"), "utf8");
  assert.match(df, /^FROM pxd:local$/m, "built on the root Dockerfile's image");
  assert.ok(readFileSync(join(root, "Dockerfile"), "utf8").includes(`ENTRYPOINT ${JSON.stringify(entrypoint).replace(/","/g, '", "')}`), "the pxd image's entrypoint is what the manifests run");
  assert.match(df, /^COPY proto \/app\/proto$/m);
  assert.match(df, /nbdfuse/);
  assert.match(df, /^COPY --from=agent \/src\/pxd-attach \/app\/native\/pxd-attach$/m);
  const images = new Set(docs.flatMap(({ doc }) => doc["spec"]?.template?.spec?.containers ?? []).filter((c: Obj) => c["command"]?.includes?.("dist/bin/pxd.js") || /pxd\.js/.test(c["command"]?.at?.(-1) ?? "")).map((c: Obj) => c["image"]));
  assert.equal([...images], ["pxd-csi:local"]);
  assert.match(df, /-t pxd-csi:local/);
});

test.run();

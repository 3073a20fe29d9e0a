// The control API server (HTTP/JSON, docs/formats/control-api.md). It parses
// and validates requests, then calls the Controller the daemon implements;
// it holds no state of its own.
//
// Layering exception (DESIGN.md section 7): src/os is otherwise the only
// place that imports node:net-level modules; the API server imports
// node:http itself because the HTTP protocol is what this file is about.

import { createServer, type IncomingMessage, type ServerOptions, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import type { Server as HttpsServer } from "node:https";
import { printable } from "../base/printable.js";
import { failStop, isBug } from "../base/fail-stop.js";
import { apiBodyBytesMax, apiBodyDepthMax, logFieldCharsMax } from "../constants.js";
import { hostPort, httpsApiHint } from "./client.js";
import { consolePage } from "./console.js";
import { ApiError, type ApiErrorBody, type AuditEvent, type Authenticator, type Caller, type Controller, type DebugController, type Role } from "./types.js";
import {
  checkPathName,
  checkVolumeName,
  parseCreateSnapshotRequest,
  parseRollbackRequest,
  parseSnapshotScheduleRequest,
  snapshotNameProblem,
  hostNamePattern,
  jsonNestsDeeper,
  parseAttachRequest,
  parseAuditQuery,
  parseCreateTokenRequest,
  parseCreateVolumeRequest,
  parseRevokeTokenRequest,
  parseDebugProposeRequest,
  parseDrainNodeRequest,
  parseFlagQuery,
  parseForceQuery,
  parseSinceQuery,
  parseJoinRequest,
  parseScrubRequest,
  parseSetSettingRequest,
  parseUpdateVolumeRequest,
} from "./validate.js";
import {
  apiCloseGraceMs,
  apiConnectionsCheckMs,
  apiHeadersTimeoutMs,
  apiKeepAliveTimeoutMs,
  apiRequestTimeoutMs,
  apiRequestsPerSocketMax,
} from "./limits.js";

export interface ApiServerOptions {
  /** Address to bind, e.g. "127.0.0.1" or "::1". */
  host: string;
  /** TCP port; 0 picks a free one (tests). */
  port: number;
  controller: Controller;
  /** Fault-injection hooks (`pxd daemon --unsafe-debug-api`); without them their routes do not exist (404). */
  debug?: DebugController;
  /**
   * Checks the bearer token of every request but the public routes (join,
   * cluster id, a volume's servers). Without one, every request is served as
   * an admin: only the HTTP layer's own tests start a server so; the daemon
   * always passes one.
   */
  auth?: Authenticator;
  /** Serve HTTPS with this certificate and key (PEM): the node's, signed by the cluster CA. */
  tls?: { certPem: string; keyPem: string };
  /** Told of every request that changes something (any method but GET) and of every refused token (401, 403). */
  audit?: (event: AuditEvent) => void;
  /** One line per event worth an operator's eye: unexpected errors (500s). */
  log: (line: string) => void;
}

export interface ApiServer {
  /** "host:port" as bound, e.g. "127.0.0.1:9001" or "[::1]:9001"; usable as --host. */
  address: string;
  port: number;
  /** Stops accepting, closes idle keep-alive sockets, waits for requests in flight (cut after a grace period). */
  close(): Promise<void>;
}

interface Reply {
  status: number;
  /** A JSON body; absent for 204. */
  json?: unknown;
  /** A text body (used by /metrics) with its content type. */
  text?: { body: string; contentType: string };
}

type Handler = (request: IncomingMessage, params: string[], caller: Caller) => Promise<Reply>;

/**
 * What a route asks of the caller: public (no token: the join has its own
 * proof), read (any role), write (user or admin; the daemon checks that a
 * user owns the volume), admin.
 */
type Need = "public" | "read" | "write" | "admin";

interface Route {
  pattern: RegExp;
  methods: Record<string, Handler>;
  /** Per method; absent: GET reads, every other method writes. */
  need?: Record<string, Need>;
}

const rolesFor: Record<Exclude<Need, "public">, readonly Role[]> = {
  read: ["admin", "user", "read-only"],
  write: ["admin", "user"],
  admin: ["admin"],
};

/** The caller of a request served without an Authenticator (the HTTP layer's own tests). */
const anyone: Caller = { tokenId: "", name: "admin", role: "admin", token: "", address: "" };
/** The caller of a public route: no token, and nothing a role would allow. */
const nobody: Caller = { tokenId: "", name: "", role: "read-only", token: "", address: "" };

export const prometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

function routes(controller: Controller, debug: DebugController | undefined): Route[] {
  const volumeParam = (params: string[]): string => {
    const name = params[0] ?? "";
    checkVolumeName(name);
    return name;
  };
  const snapshotParam = (params: string[]): string => {
    const name = params[1] ?? "";
    const problem = snapshotNameProblem(name);
    if (problem !== null) throw new ApiError(400, "invalid_name", problem);
    return name;
  };
  const pathName = (what: "setting" | "node", params: string[]): string => {
    const name = params[0] ?? "";
    checkPathName(what, name);
    return name;
  };
  return [
    // The console page holds no data; what it shows it reads from the routes below, with the token the user gives it.
    { pattern: /^\/$/, methods: { GET: async () => ({ status: 200, text: { body: consolePage, contentType: "text/html; charset=utf-8" } }) }, need: { GET: "public" } },
    { pattern: /^\/v1\/status$/, methods: { GET: async () => ({ status: 200, json: await controller.status() }) } },
    {
      pattern: /^\/v1\/volumes$/,
      methods: {
        GET: async (_request, _params, caller) => ({ status: 200, json: { volumes: await controller.listVolumes(caller) } }),
        POST: async (request, _params, caller) => {
          const create = parseCreateVolumeRequest(await readJsonBody(request));
          return { status: 201, json: await controller.createVolume(create, caller) };
        },
      },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)$/,
      methods: {
        GET: async (_request, params, caller) => ({ status: 200, json: await controller.inspectVolume(volumeParam(params), caller) }),
        DELETE: async (request, params, caller) => {
          const name = volumeParam(params);
          await controller.deleteVolume(name, { force: parseForceQuery(requestQuery(request.url ?? "")) }, caller);
          return { status: 204 };
        },
        PATCH: async (request, params, caller) => {
          const name = volumeParam(params);
          return { status: 200, json: await controller.updateVolume(name, parseUpdateVolumeRequest(await readJsonBody(request)), caller) };
        },
      },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/snapshots$/,
      methods: {
        GET: async (_request, params, caller) => ({ status: 200, json: { snapshots: await controller.listSnapshots(volumeParam(params), caller) } }),
        POST: async (request, params, caller) => {
          const name = volumeParam(params);
          return { status: 201, json: await controller.createSnapshot(name, parseCreateSnapshotRequest(await readJsonBody(request)), caller) };
        },
      },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/snapshots\/([^/]*)$/,
      methods: {
        GET: async (request, params, caller) => {
          const [volume, snapshot] = [volumeParam(params), snapshotParam(params)];
          if (parseFlagQuery(requestQuery(request.url ?? ""), "local")) return { status: 200, json: await controller.snapshotHolding(volume, snapshot, caller) };
          return { status: 200, json: await controller.inspectSnapshot(volume, snapshot, caller) };
        },
        DELETE: async (_request, params, caller) => {
          await controller.deleteSnapshot(volumeParam(params), snapshotParam(params), caller);
          return { status: 204 };
        },
      },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/snapshot-schedule$/,
      methods: { PUT: async (request, params, caller) => ({ status: 200, json: await controller.setSnapshotSchedule(volumeParam(params), parseSnapshotScheduleRequest(await readJsonBody(request)), caller) }) },
    },
    { pattern: /^\/v1\/snapshots$/, methods: { GET: async (_request, _params, caller) => ({ status: 200, json: { snapshots: await controller.listSnapshots(undefined, caller) } }) } },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/rollback$/,
      methods: { POST: async (request, params, caller) => ({ status: 200, json: await controller.rollbackVolume(volumeParam(params), parseRollbackRequest(await readJsonBody(request)), caller) }) },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/connections$/,
      methods: { GET: async (_request, params, caller) => ({ status: 200, json: await controller.volumeConnections(volumeParam(params), caller) }) },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/attachments$/,
      methods: { POST: async (request, params, caller) => ({ status: 200, json: await controller.attachVolume(volumeParam(params), parseAttachRequest(await readJsonBody(request)), caller) }) },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/attachments\/([^/]*)$/,
      methods: {
        DELETE: async (_request, params, caller) => {
          const host = params[1] ?? "";
          if (!hostNamePattern.test(host)) throw new ApiError(400, "invalid", `${JSON.stringify(host.slice(0, 80))} is not a host name`);
          await controller.detachVolume(volumeParam(params), host, caller);
          return { status: 204 };
        },
      },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/servers$/,
      methods: { GET: async (_request, params) => ({ status: 200, text: { body: (await controller.volumeServers(volumeParam(params))).map((s) => `${s}\n`).join(""), contentType: "text/plain; charset=utf-8" } }) },
      // The attach agent (native/pxd-attach.c) asks it without a token for as long as a device lives; it lists the nodes' NBD addresses, no volume data.
      need: { GET: "public" },
    },
    { pattern: /^\/v1\/attachments$/, methods: { GET: async (_request, _params, caller) => ({ status: 200, json: { attachments: await controller.listAttachments(caller) } }) } },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/disconnect$/,
      methods: { POST: async (_request, params, caller) => ({ status: 200, json: await controller.disconnectVolume(volumeParam(params), caller) }) },
    },
    { pattern: /^\/v1\/nodes$/, methods: { GET: async () => ({ status: 200, json: { nodes: await controller.listNodes() } }) } },
    {
      pattern: /^\/v1\/nodes\/([^/]*)$/,
      need: { DELETE: "admin" },
      methods: {
        DELETE: async (request, params, caller) => {
          await controller.removeNode(pathName("node", params), { force: parseForceQuery(requestQuery(request.url ?? "")) }, caller);
          return { status: 204 };
        },
      },
    },
    {
      pattern: /^\/v1\/nodes\/([^/]*)\/drain$/,
      need: { POST: "admin" },
      methods: { POST: async (request, params, caller) => ({ status: 200, json: await controller.drainNode(pathName("node", params), parseDrainNodeRequest(await readJsonBody(request)), caller) }) },
    },
    { pattern: /^\/v1\/settings$/, methods: { GET: async () => ({ status: 200, json: { settings: await controller.listSettings() } }) } },
    {
      pattern: /^\/v1\/settings\/([^/]*)$/,
      need: { PUT: "admin" },
      methods: { PUT: async (request, params, caller) => ({ status: 200, json: await controller.setSetting(pathName("setting", params), parseSetSettingRequest(await readJsonBody(request)), caller) }) },
    },
    {
      pattern: /^\/v1\/cluster\/join$/,
      // The join proves the cluster secret itself (an HMAC of the request, src/replication/auth.ts).
      need: { POST: "public" },
      methods: { POST: async (request) => ({ status: 200, json: await controller.join(parseJoinRequest(await readJsonBody(request))) }) },
    },
    {
      // A node restarted with --join checks that its data dir belongs to the cluster it names.
      pattern: /^\/v1\/cluster\/id$/,
      need: { GET: "public" },
      methods: { GET: async () => ({ status: 200, json: { clusterId: controller.clusterId() } }) },
    },
    {
      pattern: /^\/v1\/auth\/tokens$/,
      need: { POST: "admin" },
      methods: { POST: async (request, _params, caller) => ({ status: 201, json: await controller.createToken(parseCreateTokenRequest(await readJsonBody(request)), caller) }) },
    },
    {
      pattern: /^\/v1\/audit$/,
      need: { GET: "admin" },
      methods: { GET: async (request, _params, caller) => ({ status: 200, json: await controller.audit(parseAuditQuery(requestQuery(request.url ?? "")), caller) }) },
    },
    {
      pattern: /^\/v1\/auth\/revocations$/,
      need: { POST: "admin" },
      methods: { POST: async (request, _params, caller) => ({ status: 200, json: await controller.revokeToken(parseRevokeTokenRequest(await readJsonBody(request)), caller) }) },
    },

    {
      pattern: /^\/v1\/scrub$/,
      need: { POST: "admin" },
      methods: {
        GET: async () => ({ status: 200, json: await controller.scrubStatus() }),
        POST: async (request) => ({ status: 200, json: await controller.scrub(parseScrubRequest(await readJsonBody(request))) }),
      },
    },
    {
      pattern: /^\/v1\/volumes\/([^/]*)\/stats$/,
      methods: { GET: async (request, params, caller) => ({ status: 200, json: await controller.volumeStats(volumeParam(params), parseFlagQuery(requestQuery(request.url ?? ""), "local"), caller) }) },
    },
    { pattern: /^\/v1\/events$/, methods: { GET: async (request) => ({ status: 200, json: await controller.events(parseSinceQuery(requestQuery(request.url ?? ""))) }) } },
    {
      pattern: /^\/metrics$/,
      methods: { GET: async () => ({ status: 200, text: { body: await controller.metrics(), contentType: prometheusContentType } }) },
    },
    ...(debug === undefined
      ? []
      : [
          {
            pattern: /^\/v1\/debug\/catalog-propose$/,
            need: { POST: "admin" as const },
            methods: { POST: async (request: IncomingMessage) => ({ status: 200, json: await debug.catalogPropose(parseDebugProposeRequest(await readJsonBody(request))) }) },
          },
        ]),
  ];
}

export function startApiServer(options: ApiServerOptions): Promise<ApiServer> {
  const table = routes(options.controller, options.debug);
  let closing: Promise<void> | null = null;
  const httpOptions: ServerOptions = {
    headersTimeout: apiHeadersTimeoutMs,
    requestTimeout: apiRequestTimeoutMs,
    keepAliveTimeout: apiKeepAliveTimeoutMs,
    connectionsCheckingInterval: apiConnectionsCheckMs,
  };
  const handle = (request: IncomingMessage, response: ServerResponse): void => void serve(table, request, response, options, () => closing !== null);
  const server =
    options.tls === undefined
      ? createServer(httpOptions, handle)
      : refusePlainHttp(createHttpsServer({ ...httpOptions, cert: options.tls.certPem, key: options.tls.keyPem, minVersion: "TLSv1.2" }, handle));
  server.maxRequestsPerSocket = apiRequestsPerSocketMax;

  const close = (): Promise<void> => {
    closing ??= new Promise<void>((resolve, reject) => {
      const cut = setTimeout(() => server.closeAllConnections(), apiCloseGraceMs);
      server.close((err) => {
        clearTimeout(cut);
        if (err) reject(err);
        else resolve();
      });
      server.closeIdleConnections();
    });
    return closing;
  };

  return new Promise((resolve, reject) => {
    const onListenError = (err: NodeJS.ErrnoException): void => {
      const where = hostPort(options.host, options.port);
      const hint = err.code === "EADDRINUSE" ? "; another pxd daemon may be running there (stop it with \"pxd down\") or pick another --api-port" : "";
      reject(new Error(`cannot serve the control API on ${where} (${err.code ?? err.message})${hint}`));
    };
    server.once("error", onListenError);
    server.listen(options.port, options.host, () => {
      server.off("error", onListenError);
      server.on("error", (err) => options.log(`api server error: ${err.message}`));
      const bound = server.address() as AddressInfo;
      resolve({ address: hostPort(bound.address, bound.port), port: bound.port, close });
    });
  });
}

/**
 * A client that speaks plain HTTP to the HTTPS port gets a plain HTTP 400
 * that says what to do, instead of a TLS alert it cannot show: the first
 * byte of a connection tells a TLS ClientHello (a handshake record, 0x16,
 * RFC 8446 section 5.1) from a request line. One chunk is read, no more; a
 * connection that sends nothing is cut after apiHeadersTimeoutMs.
 */
function refusePlainHttp(server: HttpsServer): HttpsServer {
  const tlsListeners = server.listeners("connection") as ((socket: Socket) => void)[];
  server.removeAllListeners("connection");
  server.on("connection", (socket: Socket) => {
    // No other listener is on the socket until it is handed on: a reset must not become an uncaught error.
    socket.on("error", () => socket.destroy());
    socket.setTimeout(apiHeadersTimeoutMs, () => socket.destroy());
    socket.once("readable", () => {
      const first = socket.read(1) as Buffer | null;
      if (first === null) return; // closed before a byte
      socket.setTimeout(0);
      socket.unshift(first);
      if (first[0] === 0x16) {
        for (const l of tlsListeners) l.call(server, socket);
        return;
      }
      const address = server.address() as AddressInfo | null;
      const where = `https://${address === null ? "HOST:PORT" : hostPort(socket.localAddress ?? address.address, address.port)}`;
      const body: ApiErrorBody = { error: { code: "https_required", message: `${httpsApiHint(where)}, and use ${where}` } };
      const text = JSON.stringify(body);
      socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`);
      socket.setTimeout(apiHeadersTimeoutMs, () => socket.destroy());
      socket.resume(); // what the client still sends is read and dropped until it closes
    });
  });
  return server;
}

async function serve(
  table: Route[],
  request: IncomingMessage,
  response: ServerResponse,
  options: ApiServerOptions,
  closing: () => boolean,
): Promise<void> {
  let reply: Reply;
  const seen: { caller?: Caller } = {};
  try {
    reply = await dispatch(table, request, options.auth, seen);
  } catch (err) {
    reply = errorReply(err, request, options.log);
  }
  // Once close() has begun, no connection is kept for another request.
  if (closing()) response.setHeader("Connection", "close");
  send(response, reply);
  if (options.audit !== undefined && (request.method !== "GET" || reply.status === 401 || reply.status === 403)) {
    options.audit(auditEvent(request, reply, seen.caller));
  }
}

function auditEvent(request: IncomingMessage, reply: Reply, caller: Caller | undefined): AuditEvent {
  const error = reply.status >= 400 ? (reply.json as ApiErrorBody | undefined)?.error?.message : undefined;
  return {
    who: caller?.name ?? "",
    tokenId: caller?.tokenId ?? "",
    role: caller?.role ?? "",
    from: remoteAddress(request),
    method: printable(request.method ?? "", 16),
    path: printable(request.url ?? "", logFieldCharsMax),
    status: reply.status,
    ...(error !== undefined ? { error: printable(error, logFieldCharsMax) } : {}),
  };
}

function remoteAddress(request: IncomingMessage): string {
  const s = request.socket;
  return s.remoteAddress === undefined ? "" : hostPort(s.remoteAddress, s.remotePort ?? 0);
}

/** The request's caller, or the 401 / 403 that says what to do. */
function authorize(request: IncomingMessage, need: Need, auth: Authenticator | undefined, what: string, seen: { caller?: Caller }): Caller | undefined {
  if (need === "public") return undefined;
  if (auth === undefined) return anyone;
  const header = request.headers["authorization"];
  const m = typeof header === "string" ? /^Bearer +(\S+)$/.exec(header) : null;
  if (m === null) {
    throw new ApiError(401, "unauthorized", `${what} needs an API token: pass --token, or set PXD_TOKEN or PXD_TOKEN_FILE (an admin makes one with "pxd auth token create"; the first admin token is in the bootstrap node's data dir, admin.token)`);
  }
  const v = auth.verify(m[1]!);
  if (!v.ok) throw new ApiError(401, "unauthorized", `${v.why}; get a new token from an admin (pxd auth token create) and pass it with --token, PXD_TOKEN or PXD_TOKEN_FILE`);
  const caller: Caller = { tokenId: v.claims.id, name: v.claims.name, role: v.claims.role, token: m[1]!, address: remoteAddress(request) };
  seen.caller = caller; // known from here on, also to the audit record of a 403
  const allowed = rolesFor[need];
  if (!allowed.includes(caller.role)) {
    throw new ApiError(403, "forbidden", `the token of "${caller.name}" has the role ${caller.role}, which may not ${what}; that needs a token with the role ${allowed.filter((r) => r !== "read-only").join(" or ")} (an admin makes one with "pxd auth token create --role ${allowed.includes("user") ? "user" : "admin"}")`);
  }
  return caller;
}

async function dispatch(table: Route[], request: IncomingMessage, auth: Authenticator | undefined, seen: { caller?: Caller }): Promise<Reply> {
  const path = requestPath(request.url ?? "");
  for (const route of table) {
    const match = route.pattern.exec(path);
    if (!match) continue;
    const method = request.method ?? "";
    const handler = route.methods[method];
    if (!handler) {
      const allowed = Object.keys(route.methods).join(", ");
      throw new ApiError(405, "method_not_allowed", `${method} is not allowed on ${path}; use ${allowed}`);
    }
    const need = route.need?.[method] ?? (method === "GET" ? "read" : "write");
    const caller = authorize(request, need, auth, `${method} ${printable(path, 80)}`, seen);
    const params = match.slice(1).map((p) => decodePathPart(p ?? ""));
    return handler(request, params, caller ?? nobody);
  }
  throw new ApiError(404, "not_found", `no such API path ${JSON.stringify(path)}; the API has /v1/status, /v1/volumes, /v1/volumes/NAME, /v1/volumes/NAME/connections, /v1/volumes/NAME/disconnect, /v1/nodes, /v1/nodes/NODE, /v1/nodes/NODE/drain, /v1/settings, /v1/settings/KEY, /v1/cluster/join, /v1/cluster/id, /v1/auth/tokens, /v1/auth/revocations, /v1/audit, /v1/scrub, /v1/events, /v1/volumes/NAME/stats, /metrics and / (the web console)`);
}

function requestPath(url: string): string {
  // Origin-form ("/v1/status?x=1") is what clients send; routes read their query parameters with requestQuery, others ignore it.
  const q = url.indexOf("?");
  return q < 0 ? url : url.slice(0, q);
}

function requestQuery(url: string): string {
  const q = url.indexOf("?");
  return q < 0 ? "" : url.slice(q + 1);
}

function decodePathPart(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    throw new ApiError(400, "invalid", `the path segment ${JSON.stringify(part)} is not valid percent-encoding`);
  }
}

function errorReply(err: unknown, request: IncomingMessage, log: (line: string) => void): Reply {
  if (err instanceof ApiError) {
    const body: ApiErrorBody = { error: { code: err.code, message: err.message } };
    return { status: err.status, json: body };
  }
  // A failure nothing classified (a peer or a disk that failed) is a 500; a bug stops the process.
  if (isBug(err)) failStop(err, `api: ${request.method} ${printable(request.url ?? "", logFieldCharsMax)}`);
  const message = err instanceof Error ? err.message : String(err);
  log(`api: ${request.method} ${printable(request.url ?? "", logFieldCharsMax)} failed: ${err instanceof Error && err.stack ? err.stack : message}`);
  const body: ApiErrorBody = { error: { code: "internal", message } };
  return { status: 500, json: body };
}

function send(response: ServerResponse, reply: Reply): void {
  if (response.headersSent || response.destroyed) return;
  if (reply.text) {
    const body = Buffer.from(reply.text.body, "utf8");
    response.writeHead(reply.status, { "Content-Type": reply.text.contentType, "Content-Length": body.length });
    response.end(body);
    return;
  }
  if (reply.json === undefined) {
    response.writeHead(reply.status);
    response.end();
    return;
  }
  const body = Buffer.from(JSON.stringify(reply.json) + "\n", "utf8");
  const headers: Record<string, string | number> = { "Content-Type": "application/json; charset=utf-8", "Content-Length": body.length };
  // A body we refused to read (too large, or before the caller was known) is still on the wire; close rather than parse it as the next request.
  if (reply.status === 413 || reply.status === 401 || reply.status === 403) headers["Connection"] = "close";
  response.writeHead(reply.status, headers);
  response.end(body);
}

/** Reads a JSON body of at most apiBodyBytesMax bytes (refusing more before buffering it) and apiBodyDepthMax levels of nesting. */
function readJsonBody(request: IncomingMessage): Promise<unknown> {
  const declared = request.headers["content-length"];
  if (declared !== undefined && Number(declared) > apiBodyBytesMax) return Promise.reject(tooLarge(`${declared} bytes`));
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let bytes = 0;
    const onData = (chunk: Buffer): void => {
      bytes += chunk.length;
      if (bytes > apiBodyBytesMax) {
        request.off("data", onData);
        request.off("end", onEnd);
        chunks.length = 0;
        reject(tooLarge(`more than ${apiBodyBytesMax} bytes`));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = (): void => {
      const body = Buffer.concat(chunks);
      const text = body.toString("utf8");
      if (text.trim() === "") return reject(new ApiError(400, "invalid", "the request has no body; send a JSON object"));
      if (jsonNestsDeeper(body, apiBodyDepthMax)) {
        return reject(new ApiError(400, "invalid", `the body nests arrays and objects more than ${apiBodyDepthMax} deep; API bodies are JSON objects nested at most 2 deep`));
      }
      try {
        resolve(JSON.parse(text) as unknown);
      } catch (err) {
        reject(new ApiError(400, "invalid", `the body is not valid JSON (${(err as Error).message})`));
      }
    };
    request.on("data", onData);
    request.on("end", onEnd);
    request.on("error", reject);
  });
}

function tooLarge(what: string): ApiError {
  return new ApiError(413, "too_large", `the request body is ${what}; the API accepts at most ${apiBodyBytesMax} bytes`);
}


// The typed client of the control API (docs/formats/control-api.md), used by
// the CLI, plugins and tests. Every failure becomes an Error whose message a
// user can act on: ApiError carries the daemon's own message; a daemon that
// cannot be reached becomes DaemonUnreachableError.
//
// Layering exception (DESIGN.md section 7): like server.ts, this file imports
// node:http itself; it is the HTTP side of the API layer.

import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest, type RequestOptions as HttpsRequestOptions } from "node:https";
import { createSecureContext, type ConnectionOptions, type SecureContext } from "node:tls";
import { defaultApiPort } from "../constants.js";
import {
  ApiError,
  type AttachmentInfo,
  type AttachRequest,
  type AuditResponse,
  type CreateTokenRequest,
  type CreateVolumeRequest,
  type RevokeTokenRequest,
  type TokenInfo,
  type DeleteVolumeOptions,
  type DebugProposeRequest,
  type DrainNodeRequest,
  type DebugProposeResponse,
  type JoinRequest,
  type JoinResponse,
  type NodeConnections,
  type NodeInfo,
  type NodeStatus,
  type ScrubRequest,
  type ScrubResponse,
  type SetSettingRequest,
  type SettingInfo,
  type UpdateVolumeRequest,
  type CreateSnapshotRequest,
  type RollbackRequest,
  type RollbackResult,
  type SnapshotHolding,
  type SnapshotInfo,
  type SnapshotScheduleRequest,
  type VolumeInfo,
  type EventsResponse,
  type VolumeStatsResponse,
} from "./types.js";
import { apiClientTimeoutMs, apiResponseBytesMax } from "./limits.js";

export const defaultApiAddress = `127.0.0.1:${defaultApiPort}`;

/** The daemon did not answer at all: refused, unresolvable, reset or timed out. */
export class DaemonUnreachableError extends Error {
  constructor(
    readonly address: string,
    /** errno code (ECONNREFUSED, ENOTFOUND, ...) or "ETIMEDOUT" for our own timeout. */
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "DaemonUnreachableError";
  }
}

export interface ApiAddress {
  host: string;
  port: number;
  /** Given as https://HOST[:PORT]. */
  https: boolean;
  /** Given as http://HOST[:PORT]: plain HTTP even when a CA is known (a node started with --api-plain-http). */
  plain: boolean;
  /** "host:port", IPv6 in brackets; what messages show. */
  display: string;
}

/** Parses ADDR[:PORT] ("127.0.0.1", "node1:9001", "[::1]:9001", "http://h:p"); throws an Error saying what is wrong. */
export function parseApiAddress(text: string): ApiAddress {
  let rest = text.trim();
  const https = rest.startsWith("https://");
  const plain = rest.startsWith("http://");
  if (plain) rest = rest.slice("http://".length).replace(/\/+$/, "");
  if (https) rest = rest.slice("https://".length).replace(/\/+$/, "");
  let host: string;
  let portText: string | undefined;
  const bracketed = /^\[([0-9A-Fa-f:.]+)\](?::(.*))?$/.exec(rest);
  if (bracketed) {
    host = bracketed[1] ?? "";
    portText = bracketed[2];
  } else if ((rest.match(/:/g) ?? []).length > 1) {
    host = rest; // a bare IPv6 address, no port
  } else {
    const colon = rest.indexOf(":");
    host = colon < 0 ? rest : rest.slice(0, colon);
    portText = colon < 0 ? undefined : rest.slice(colon + 1);
  }
  if (host === "" || /[\s/@?#]/.test(host)) {
    throw new Error(`"${text}" is not a daemon address; use HOST or HOST:PORT, e.g. 127.0.0.1:${defaultApiPort}`);
  }
  let port = defaultApiPort;
  if (portText !== undefined) {
    port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
    if (!(port >= 1 && port <= 65535)) throw new Error(`"${text}" has no valid port; use HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:${defaultApiPort}`);
  }
  return { host, port, https, plain, display: `${https ? "https://" : plain ? "http://" : ""}${hostPort(host, port)}` };
}

/** "host:port" for an address and a port, an IPv6 literal in brackets. */
export function hostPort(host: string, port: number): string {
  return `${host.includes(":") ? `[${host}]` : host}:${port}`;
}

export interface ApiClientOptions {
  /** Time allowed for a whole request and answer. */
  timeoutMs?: number;
  /** Tried once when nothing listens at the address (the CLI's default: a local `pxd up` cluster). */
  fallbackAddress?: string;
  /** The API token sent as `Authorization: Bearer` (docs/security.md), or where to read it before each request; without one only the public routes answer. */
  token?: string | (() => string | undefined);
  /**
   * Speak HTTPS and trust this CA (PEM): the cluster's (docs/security.md,
   * "The cluster CA"), or where to read it before each request (a node that
   * is still making it). An address given as http:// stays plain; an
   * https:// address without a CA uses the system's roots; `insecureTls`
   * skips the check (only a join, whose answer the cluster secret
   * authenticates, and the cluster id a restarted member compares).
   */
  ca?: string | (() => string | undefined);
  insecureTls?: boolean;
}

/**
 * TLS contexts by CA text, made once per process: making one parses the CA,
 * about 2 ms of CPU. At most tlsContextsMax (a process trusts one or two CAs).
 */
const tlsContexts = new Map<string, SecureContext>();
const tlsContextsMax = 8;
/** The newest TLS ticket each server (address and CA) issued, at most tlsSessionsMax: the next call to it resumes with it. */
const tlsSessions = new Map<string, Buffer>();
const tlsSessionsMax = 256;

function secureContextFor(ca: string): SecureContext {
  let c = tlsContexts.get(ca);
  if (c === undefined) {
    if (tlsContexts.size >= tlsContextsMax) tlsContexts.clear();
    c = createSecureContext(ca !== "" ? { ca } : {});
    tlsContexts.set(ca, c);
  }
  return c;
}

function rememberSession(key: string, ticket: Buffer): void {
  if (!tlsSessions.has(key) && tlsSessions.size >= tlsSessionsMax) tlsSessions.clear();
  tlsSessions.set(key, ticket);
}

interface RawAnswer {
  status: number;
  statusMessage: string;
  contentType: string;
  body: Buffer;
}

const connectCodes = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL"]);

export class ApiClient {
  address: ApiAddress;
  private readonly timeoutMs: number;
  private fallback: ApiAddress | undefined;
  /** Sent with every request; settable, so a test helper can hand its clients a token once the daemon made one. */
  token: string | (() => string | undefined) | undefined;

  private readonly ca: string | (() => string | undefined) | undefined;
  private readonly insecureTls: boolean;

  /** The CA this call trusts ("" for the system's roots). */
  private caNow(): string {
    return (typeof this.ca === "function" ? this.ca() : this.ca) ?? "";
  }

  constructor(address: string = defaultApiAddress, options: ApiClientOptions = {}) {
    this.address = parseApiAddress(address);
    this.token = options.token;
    this.ca = options.ca;
    this.insecureTls = options.insecureTls === true;
    this.timeoutMs = options.timeoutMs ?? apiClientTimeoutMs;
    this.fallback = options.fallbackAddress === undefined ? undefined : parseApiAddress(options.fallbackAddress);
  }

  /** Whether requests go over HTTPS: an https:// address, or a CA given and no http:// address. */
  speaksTls(): boolean {
    return this.address.https || (!this.address.plain && this.ca !== undefined);
  }

  async status(): Promise<NodeStatus> {
    return (await this.json("GET", "/v1/status")) as NodeStatus;
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    const body = (await this.json("GET", "/v1/volumes")) as { volumes?: unknown };
    if (!Array.isArray(body.volumes)) throw this.badAnswer("GET /v1/volumes", "it has no volumes array");
    return body.volumes as VolumeInfo[];
  }

  async inspectVolume(name: string): Promise<VolumeInfo> {
    return (await this.json("GET", volumePath(name))) as VolumeInfo;
  }

  async createVolume(request: CreateVolumeRequest): Promise<VolumeInfo> {
    return (await this.json("POST", "/v1/volumes", request)) as VolumeInfo;
  }

  async deleteVolume(name: string, options: DeleteVolumeOptions = {}): Promise<void> {
    await this.call("DELETE", volumePath(name) + (options.force === true ? "?force=true" : ""));
  }

  /** The answering node's NBD connections to the volume (a delete asks each node). */
  async volumeConnections(name: string): Promise<NodeConnections> {
    return (await this.json("GET", `${volumePath(name)}/connections`)) as NodeConnections;
  }

  /** Closes the answering node's NBD connections to the volume (a forced delete). */
  async disconnectVolume(name: string): Promise<NodeConnections> {
    return (await this.json("POST", `${volumePath(name)}/disconnect`)) as NodeConnections;
  }

  async attachVolume(name: string, request: AttachRequest): Promise<VolumeInfo> {
    return (await this.json("POST", `${volumePath(name)}/attachments`, request)) as VolumeInfo;
  }

  async detachVolume(name: string, host: string): Promise<void> {
    await this.call("DELETE", `${volumePath(name)}/attachments/${encodeURIComponent(host)}`);
  }

  async listAttachments(): Promise<AttachmentInfo[]> {
    const body = (await this.json("GET", "/v1/attachments")) as { attachments?: unknown };
    if (!Array.isArray(body.attachments)) throw this.badAnswer("GET /v1/attachments", "it has no attachments array");
    return body.attachments as AttachmentInfo[];
  }

  /** HOST:PORT of the nodes serving the volume over NBD, best first. */
  async volumeServers(name: string): Promise<string[]> {
    const text = (await this.call("GET", `${volumePath(name)}/servers`)).body.toString("utf8");
    return text.split("\n").filter((l) => l !== "");
  }

  async createSnapshot(volume: string, request: CreateSnapshotRequest): Promise<SnapshotInfo> {
    return (await this.json("POST", `${volumePath(volume)}/snapshots`, request)) as SnapshotInfo;
  }

  /** A volume's snapshots, or every volume's (volume undefined). */
  async listSnapshots(volume?: string): Promise<SnapshotInfo[]> {
    const path = volume === undefined ? "/v1/snapshots" : `${volumePath(volume)}/snapshots`;
    const body = (await this.json("GET", path)) as { snapshots?: unknown };
    if (!Array.isArray(body.snapshots)) throw this.badAnswer(`GET ${path}`, "it has no snapshots array");
    return body.snapshots as SnapshotInfo[];
  }

  async inspectSnapshot(volume: string, snapshot: string): Promise<SnapshotInfo> {
    return (await this.json("GET", snapshotPath(volume, snapshot))) as SnapshotInfo;
  }

  /** Whether the answering node holds the snapshot, and its space there. */
  async snapshotHolding(volume: string, snapshot: string): Promise<SnapshotHolding> {
    return (await this.json("GET", `${snapshotPath(volume, snapshot)}?local=true`)) as SnapshotHolding;
  }

  async deleteSnapshot(volume: string, snapshot: string): Promise<void> {
    await this.call("DELETE", snapshotPath(volume, snapshot));
  }

  async setSnapshotSchedule(volume: string, request: SnapshotScheduleRequest): Promise<VolumeInfo> {
    return (await this.json("PUT", `${volumePath(volume)}/snapshot-schedule`, request)) as VolumeInfo;
  }

  async rollbackVolume(volume: string, request: RollbackRequest): Promise<RollbackResult> {
    return (await this.json("POST", `${volumePath(volume)}/rollback`, request)) as RollbackResult;
  }

  async updateVolume(name: string, request: UpdateVolumeRequest): Promise<VolumeInfo> {
    return (await this.json("PATCH", volumePath(name), request)) as VolumeInfo;
  }

  async listNodes(): Promise<NodeInfo[]> {
    const body = (await this.json("GET", "/v1/nodes")) as { nodes?: unknown };
    if (!Array.isArray(body.nodes)) throw this.badAnswer("GET /v1/nodes", "it has no nodes array");
    return body.nodes as NodeInfo[];
  }

  /** Marks the node (name or id) draining, or not (`{ draining: false }`). */
  async drainNode(node: string, request: DrainNodeRequest = {}): Promise<NodeInfo> {
    return (await this.json("POST", `/v1/nodes/${encodeURIComponent(node)}/drain`, request)) as NodeInfo;
  }

  /** Removes a node that is down; `force` also when it still holds replicas. */
  async removeNode(node: string, options: { force?: boolean } = {}): Promise<void> {
    await this.call("DELETE", `/v1/nodes/${encodeURIComponent(node)}` + (options.force === true ? "?force=true" : ""));
  }

  async listSettings(): Promise<SettingInfo[]> {
    const body = (await this.json("GET", "/v1/settings")) as { settings?: unknown };
    if (!Array.isArray(body.settings)) throw this.badAnswer("GET /v1/settings", "it has no settings array");
    return body.settings as SettingInfo[];
  }

  /** Sets a setting; a null value returns it to its default. */
  async setSetting(key: string, value: SetSettingRequest["value"]): Promise<SettingInfo> {
    return (await this.json("PUT", `/v1/settings/${encodeURIComponent(key)}`, { value })) as SettingInfo;
  }

  async join(request: JoinRequest): Promise<JoinResponse> {
    return (await this.json("POST", "/v1/cluster/join", request)) as JoinResponse;
  }

  /** Scrubs and waits until it is done (give the client a timeout as long as the scrub may take). */
  async scrub(request: ScrubRequest): Promise<ScrubResponse> {
    return (await this.json("POST", "/v1/scrub", request)) as ScrubResponse;
  }

  /** The last scrub report of each volume on the answering node. */
  async scrubStatus(): Promise<ScrubResponse> {
    return (await this.json("GET", "/v1/scrub")) as ScrubResponse;
  }

  /** The cluster's id; public. */
  async clusterId(): Promise<string> {
    const body = (await this.json("GET", "/v1/cluster/id")) as { clusterId?: unknown };
    if (typeof body.clusterId !== "string") throw this.badAnswer("GET /v1/cluster/id", "it has no clusterId");
    return body.clusterId;
  }

  async createToken(request: CreateTokenRequest): Promise<TokenInfo> {
    return (await this.json("POST", "/v1/auth/tokens", request)) as TokenInfo;
  }

  async revokeToken(request: RevokeTokenRequest): Promise<{ id: string; revoked: boolean }> {
    return (await this.json("POST", "/v1/auth/revocations", request)) as { id: string; revoked: boolean };
  }

  /** Audit records at or after sinceMs, from every node (or only the answering one). */
  async audit(sinceMs: number, options: { local?: boolean } = {}): Promise<AuditResponse> {
    return (await this.json("GET", `/v1/audit?since=${Math.max(0, Math.floor(sinceMs))}${options.local === true ? "&local=true" : ""}`)) as AuditResponse;
  }

  /** The fault-injection hook of a daemon started with --unsafe-debug-api. */
  async debugCatalogPropose(request: DebugProposeRequest): Promise<DebugProposeResponse> {
    return (await this.json("POST", "/v1/debug/catalog-propose", request)) as DebugProposeResponse;
  }

  /** The answering node's cluster events after `sinceSeq`. */
  async events(sinceSeq = 0): Promise<EventsResponse> {
    const body = (await this.json("GET", `/v1/events?since=${sinceSeq}`)) as EventsResponse;
    if (!Array.isArray(body.events)) throw this.badAnswer("GET /v1/events", "it has no events array");
    return body;
  }

  /** The volume's I/O samples of the last two minutes, over every node (or, local, the answering node's). */
  async volumeStats(name: string, local = false): Promise<VolumeStatsResponse> {
    return (await this.json("GET", `${volumePath(name)}/stats${local ? "?local=true" : ""}`)) as VolumeStatsResponse;
  }

  /** Prometheus text exposition. */
  async metrics(): Promise<string> {
    return (await this.call("GET", "/metrics")).body.toString("utf8");
  }

  private async json(method: string, path: string, body?: unknown): Promise<unknown> {
    const answer = await this.call(method, path, body);
    let parsed: unknown;
    try {
      parsed = JSON.parse(answer.body.toString("utf8"));
    } catch {
      throw this.badAnswer(`${method} ${path}`, "it is not JSON");
    }
    if (typeof parsed !== "object" || parsed === null) throw this.badAnswer(`${method} ${path}`, "it is not a JSON object");
    return parsed;
  }

  /** One request; resolves with a 2xx answer, rejects with ApiError or DaemonUnreachableError. */
  private async call(method: string, path: string, body?: unknown): Promise<RawAnswer> {
    const bytes = body === undefined ? undefined : Buffer.from(JSON.stringify(body), "utf8");
    let answer: RawAnswer;
    try {
      answer = await this.exchange(method, path, bytes);
    } catch (e) {
      if (!(e instanceof DaemonUnreachableError) || e.code !== "ECONNREFUSED" || this.fallback === undefined) throw e;
      this.address = this.fallback;
      this.fallback = undefined;
      answer = await this.exchange(method, path, bytes);
    }
    if (answer.status >= 200 && answer.status < 300) return answer;
    throw this.errorFrom(answer);
  }

  private errorFrom(answer: RawAnswer): ApiError {
    try {
      const parsed = JSON.parse(answer.body.toString("utf8")) as { error?: { code?: unknown; message?: unknown } };
      const code = parsed.error?.code;
      const message = parsed.error?.message;
      if (typeof code === "string" && typeof message === "string") return new ApiError(answer.status, code, message);
    } catch {
      // not an API error body: fall through to a generic message
    }
    return new ApiError(
      answer.status,
      `http_${answer.status}`,
      `the daemon at ${this.address.display} answered ${answer.status} ${answer.statusMessage}; is that a pxd daemon?`,
    );
  }

  private badAnswer(what: string, why: string): ApiError {
    return new ApiError(502, "bad_answer", `the answer of ${this.address.display} to ${what} is not what pxd sends (${why}); is that a pxd daemon of the same version?`);
  }

  private exchange(method: string, path: string, body: Buffer | undefined): Promise<RawAnswer> {
    const { host, port, display } = this.address;
    return new Promise((resolve, reject) => {
      let settled = false;
      const finish = (err: Error | null, answer?: RawAnswer): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(answer as RawAnswer);
      };
      const headers: Record<string, string | number> = { Accept: "application/json" };
      const token = typeof this.token === "function" ? this.token() : this.token;
      if (token !== undefined && token !== "") headers["Authorization"] = `Bearer ${token}`;
      if (body) {
        headers["Content-Type"] = "application/json";
        headers["Content-Length"] = body.length;
      }
      // agent: false gives each call its own connection, closed after the answer, so a CLI process exits at once.
      let req: ReturnType<typeof httpRequest>;
      if (this.speaksTls()) {
        const ca = this.caNow();
        const resume = `${display} ${ca}`;
        const session = tlsSessions.get(resume);
        // https.request hands these to tls.connect (ConnectionOptions); its own RequestOptions type does not name them.
        const tlsOptions = { secureContext: secureContextFor(ca), ...(session !== undefined ? { session } : {}) };
        const options: HttpsRequestOptions & ConnectionOptions = { host, port, method, path, headers, agent: false, ...tlsOptions, ...(this.insecureTls ? { rejectUnauthorized: false } : {}) };
        req = httpsRequest(options);
        // The server's session ticket: the next call to it resumes the session (no certificate exchange or signature).
        req.on("socket", (socket) => socket.on("session", (ticket: Buffer) => rememberSession(resume, ticket)));
      } else req = httpRequest({ host, port, method, path, headers, agent: false });
      const timer = setTimeout(() => {
        const seconds = (this.timeoutMs / 1000).toFixed(1).replace(/\.0$/, "");
        finish(new DaemonUnreachableError(display, "ETIMEDOUT", `the pxd daemon at ${display} did not answer ${method} ${path} within ${seconds}s; check that it is running and look at its log`));
        req.destroy();
      }, this.timeoutMs);
      req.on("error", (err: NodeJS.ErrnoException) => finish(this.transportError(err)));
      req.on("response", (response) => readAnswer(response, display, finish));
      req.end(body);
    });
  }

  private transportError(err: NodeJS.ErrnoException): Error {
    const display = this.address.display;
    const code = err.code ?? "EIO";
    if (connectCodes.has(code)) {
      return new DaemonUnreachableError(
        display,
        code,
        `cannot reach the pxd daemon at ${display} (${code}); start it with "pxd daemon" or "npm start", or point --host / PXD_HOST at a running one`,
      );
    }
    if (code === "ERR_SSL_WRONG_VERSION_NUMBER" || /wrong version number|packet length too long/.test(err.message)) {
      const { host, port } = this.address;
      return new DaemonUnreachableError(display, code, `the API at ${display} answers in plain HTTP, not HTTPS (its node runs with --api-plain-http); use --host http://${hostPort(host, port)} (PXD_HOST too)`);
    }
    if (/CERT|SELF_SIGNED|UNABLE_TO|ERR_SSL|ERR_TLS|EPROTO|HOSTNAME|IP_MISMATCH/.test(code)) {
      return new DaemonUnreachableError(display, code, `${httpsApiHint(display)} (this client does not trust it: ${code})`);
    }
    return new DaemonUnreachableError(display, code, `the connection to the pxd daemon at ${display} failed before it answered (${code}: ${err.message}); check its log`);
  }
}

/** What to do when a client does not trust (or did not speak) HTTPS to a node's API: one sentence the server's refusal shares. */
export function httpsApiHint(display: string): string {
  return `the API at ${display} serves HTTPS with the cluster's CA; give its CA with --ca FILE or PXD_CA_FILE (DIR/tls/ca-cert.pem on a node)`;
}

function readAnswer(response: IncomingMessage, display: string, finish: (err: Error | null, answer?: RawAnswer) => void): void {
  const chunks: Buffer[] = [];
  let bytes = 0;
  response.on("data", (chunk: Buffer) => {
    bytes += chunk.length;
    if (bytes > apiResponseBytesMax) {
      finish(new Error(`the answer of the pxd daemon at ${display} is larger than ${apiResponseBytesMax} bytes; refusing to read it`));
      response.destroy();
      return;
    }
    chunks.push(chunk);
  });
  const brokeOff = (why: string, code: string): void =>
    finish(new DaemonUnreachableError(display, code, `the pxd daemon at ${display} broke off its answer (${why}); check its log`));
  response.on("error", (err: NodeJS.ErrnoException) => brokeOff(err.message, err.code ?? "EIO"));
  response.on("close", () => {
    if (!response.complete) brokeOff("connection closed mid-answer", "ECONNRESET");
  });
  response.on("end", () =>
    finish(null, {
      status: response.statusCode ?? 0,
      statusMessage: response.statusMessage ?? "",
      contentType: String(response.headers["content-type"] ?? ""),
      body: Buffer.concat(chunks),
    }),
  );
}

function volumePath(name: string): string {
  return `/v1/volumes/${encodeURIComponent(name)}`;
}

function snapshotPath(volume: string, snapshot: string): string {
  return `${volumePath(volume)}/snapshots/${encodeURIComponent(snapshot)}`;
}

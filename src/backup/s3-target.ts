// A backup target in an S3-compatible bucket: s3://BUCKET/PREFIX, through
// @aws-sdk/client-s3. The endpoint and region come from --s3-endpoint and
// --s3-region, else PXD_S3_ENDPOINT and AWS_REGION (default us-east-1);
// credentials from the SDK's usual chain (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, the shared credentials file ~/.aws/credentials or
// AWS_SHARED_CREDENTIALS_FILE with AWS_PROFILE, ...). A custom endpoint
// (MinIO, Ceph RGW, Garage, ...) is addressed path-style. The SDK retries
// throttling, 5xx and network errors with backoff (s3Attempts); what is still
// failing then is said in one sentence naming what to check.

import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client, S3ServiceException } from "@aws-sdk/client-s3";
import { checkKey, ObjectTooLargeError, TargetUrlError, type BackupTarget } from "./target.js";

export interface S3Options {
  s3Endpoint?: string;
  s3Region?: string;
}

/** Attempts per S3 request, the first included (the SDK's backoff between them). */
const s3Attempts = 5;
/** Keys one ListObjectsV2 page asks for (S3's own maximum). */
const s3ListPageKeys = 1000;

const bucketPattern = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

function explain(e: unknown, what: string, where: string): Error {
  if (e instanceof S3ServiceException) {
    const code = e.name;
    const status = e.$metadata.httpStatusCode;
    if (code === "NoSuchBucket") return new Error(`${what}: bucket ${where} does not exist; create it first`);
    if (code === "InvalidAccessKeyId" || code === "SignatureDoesNotMatch" || code === "AccessDenied" || status === 403) return new Error(`${what}: ${where} refused the credentials (${code}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the credentials file, and the bucket's policy`);
    return new Error(`${what}: ${where} answered ${code}${status !== undefined ? ` (HTTP ${status})` : ""}: ${e.message}`);
  }
  const err = e as NodeJS.ErrnoException;
  if (err.name === "CredentialsProviderError") return new Error(`${what}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write ~/.aws/credentials`);
  return new Error(`${what}: cannot reach ${where} after ${s3Attempts} attempts (${err.code ?? err.name}: ${err.message}); check --s3-endpoint or PXD_S3_ENDPOINT and the network`);
}

/**
 * The SDK warns on every run under Node 20 that its releases from 2027 need
 * Node 22; package.json pins the release this was tested with, so the
 * warning says nothing a user of pxd can act on.
 */
process.env["AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED"] ??= "true";

export function s3Target(url: string, o: S3Options): BackupTarget {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  const bucket = m?.[1] ?? "";
  if (!bucketPattern.test(bucket)) throw new TargetUrlError(`${JSON.stringify(url)} does not name a bucket; use s3://BUCKET/PREFIX`);
  const prefix = (m?.[2] ?? "").replace(/\/+$/, "");
  if (prefix !== "") checkKey(prefix);
  const endpoint = o.s3Endpoint ?? (process.env["PXD_S3_ENDPOINT"] || undefined);
  const region = o.s3Region ?? (process.env["AWS_REGION"] || "us-east-1");
  const client = new S3Client({ region, maxAttempts: s3Attempts, ...(endpoint !== undefined ? { endpoint, forcePathStyle: true } : {}) });
  const where = `s3://${bucket}${endpoint !== undefined ? ` at ${endpoint}` : ""}`;
  const keyOf = (key: string): string => {
    checkKey(key);
    return prefix === "" ? key : `${prefix}/${key}`;
  };
  const call = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (e) {
      throw explain(e, what, where);
    }
  };
  const notFound = (e: unknown): boolean => e instanceof S3ServiceException && (e.name === "NotFound" || e.name === "NoSuchKey" || e.$metadata.httpStatusCode === 404) && e.name !== "NoSuchBucket";
  return {
    url,
    async put(key, data) {
      await call(`writing ${key}`, () => client.send(new PutObjectCommand({ Bucket: bucket, Key: keyOf(key), Body: data, ContentLength: data.length })));
    },
    async get(key, bytesMax) {
      let r;
      try {
        r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: keyOf(key) }));
      } catch (e) {
        if (notFound(e)) return undefined;
        throw explain(e, `reading ${key}`, where);
      }
      const body = r.Body as AsyncIterable<Uint8Array> | undefined;
      if (body === undefined) throw new Error(`reading ${key}: ${where} sent no body`);
      const destroy = (): void => (body as unknown as { destroy?: () => void }).destroy?.();
      if (r.ContentLength !== undefined && r.ContentLength > bytesMax) {
        destroy();
        throw new ObjectTooLargeError(`${key} in ${where} is ${r.ContentLength} bytes, above the ${bytesMax} it may hold`);
      }
      const parts: Buffer[] = [];
      let bytes = 0;
      for await (const part of body) {
        bytes += part.length;
        if (bytes > bytesMax) {
          destroy();
          throw new ObjectTooLargeError(`${key} in ${where} is more than the ${bytesMax} bytes it may hold`);
        }
        parts.push(Buffer.from(part.buffer, part.byteOffset, part.length));
      }
      return Buffer.concat(parts, bytes);
    },
    async exists(key) {
      try {
        await client.send(new HeadObjectCommand({ Bucket: bucket, Key: keyOf(key) }));
        return true;
      } catch (e) {
        if (notFound(e)) return false;
        throw explain(e, `looking for ${key}`, where);
      }
    },
    async list(listPrefix, keysMax) {
      checkKey(listPrefix);
      const full = keyOf(listPrefix.endsWith("/") ? listPrefix : `${listPrefix}/`);
      const strip = prefix === "" ? 0 : prefix.length + 1;
      const out: string[] = [];
      let token: string | undefined;
      do {
        const page = await call(`listing ${listPrefix}`, () => client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: full, MaxKeys: s3ListPageKeys, ...(token !== undefined ? { ContinuationToken: token } : {}) })));
        for (const c of page.Contents ?? []) {
          if (c.Key === undefined || !c.Key.startsWith(full)) continue;
          if (out.length >= keysMax) throw new Error(`more than ${keysMax} objects under ${full} in ${where}`);
          out.push(c.Key.slice(strip));
        }
        token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
      } while (token !== undefined);
      return out.sort();
    },
    async delete(key) {
      await call(`deleting ${key}`, () => client.send(new DeleteObjectCommand({ Bucket: bucket, Key: keyOf(key) })));
    },
    close() {
      client.destroy();
    },
  };
}

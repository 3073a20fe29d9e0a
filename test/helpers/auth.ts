// Credentials every test daemon and client of one test process shares: one
// cluster secret (each daemon DaemonProcess starts gets it, each cluster
// startCluster makes uses it) and an admin token signed with it. CLI
// processes a test spawns inherit PXD_TOKEN, so the tests that drive the CLI
// and the plugins need not pass a token; tests of authentication make their
// own tokens (tokenFor).

import { randomBytes } from "node:crypto";
import { offlineAccess } from "../../src/daemon/access.js";
import type { Role } from "../../src/api/types.js";

export const testClusterSecret = randomBytes(16).toString("hex");

const access = offlineAccess(testClusterSecret);

/** A token of the test secret: what a client of that role and name would hold. */
export function tokenFor(role: Role, name: string = role, ttlMs = 24 * 3600 * 1000): string {
  return access.mint(role, name, ttlMs).token;
}

export const testAdminToken = tokenFor("admin");

process.env["PXD_TOKEN"] = testAdminToken;

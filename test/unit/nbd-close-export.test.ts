// NbdServer.closeExport (a forced volume delete): every connection serving
// that export ends, the others (another export, a handshake) go on.

import { test } from "uvu";
import * as assert from "uvu/assert";
import { startNbdTarget } from "../helpers/nbd-target.js";
import { OPT, REP, RawClient } from "../helpers/nbd-raw-client.js";

test("closeExport ends the connections to one export and reports how many; others keep being served", async () => {
  const t = await startNbdTarget();
  try {
    const disk = [await RawClient.connect(t.port), await RawClient.connect(t.port)];
    for (const c of disk) await c.go("disk");
    const small = await RawClient.connect(t.port);
    await small.go("small");
    const greeting = await RawClient.connect(t.port);
    await greeting.greet();
    assert.is(t.listener.server.closeExport("disk", "volume disk deleted (--force)"), 2);
    for (const c of disk) assert.ok(await c.waitClosed(), "a connection to disk was closed");
    assert.is((await small.readAt(0, 4096)).length, 4096, "another export is still served");
    assert.is((await greeting.option(OPT.LIST)).at(-1)?.type, REP.ACK, "a handshake goes on");
    assert.is(t.listener.server.closeExport("disk", "again"), 0, "nothing left to close");
    assert.is(t.logs.filter((l) => l.endsWith(": volume disk deleted (--force)")).length, 2);
    small.destroy();
    greeting.destroy();
  } finally {
    await t.stop();
  }
});

test.run();

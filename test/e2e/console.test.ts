// The web console in a real browser: Debian's chromium, driven headless by
// playwright-core, opens https://NODE:9001/ of a real three-node cluster while
// fio writes to a volume through another node, and sees the cluster map, the
// volume in the table and its live graph drawn from real samples; a node is
// SIGKILLed and its card turns "down" on the page by itself.
// Screenshots go to a temp dir (kept with PXD_KEEP_SCREENSHOTS=1, path printed).

import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { startCluster, type Cluster } from "../helpers/cluster.js";
import { tempDir } from "../helpers/tmp.js";

const chromiumPath = "/usr/bin/chromium";

let c: Cluster;
let browser: Browser;
let page: Page;
let fio: ChildProcess | undefined;
const shots = tempDir("console");

test.before(async () => {
  if (!existsSync(chromiumPath)) throw new Error(`${chromiumPath} is missing: apt-get install chromium (bash .ci/run installs it)`);
  c = await startCluster(3);
  browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  // The node's certificate is from the cluster's own CA, which this browser does not hold: an operator trusts DIR/tls/ca-cert.pem or accepts the warning once.
  page = await browser.newPage({ viewport: { width: 1400, height: 900 }, ignoreHTTPSErrors: true });
});

test.after(async () => {
  fio?.kill("SIGKILL");
  await browser?.close();
  await c?.dispose();
  if (process.env["PXD_KEEP_SCREENSHOTS"]) console.log(`console screenshots in ${shots.dir}`);
  else shots.remove();
});

test("the console shows the cluster map and a volume's live graph while fio writes, and a killed node turns down", async () => {
  const [first, second, third] = c.nodes as [(typeof c.nodes)[0], (typeof c.nodes)[0], (typeof c.nodes)[0]];
  await first.api.createVolume({ name: "web", sizeBytes: 64 * 1024 * 1024, repl: 3 });
  // Writes through the second node for up to 60 s (killed when the test ends).
  fio = spawn("fio", ["--name=console", "--ioengine=nbd", `--uri=${second.uri("web")}`, "--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=32M", "--time_based", "--runtime=60"], { stdio: "ignore" });

  // Without a token the page asks for one; a read-only token in the address is taken and dropped from it.
  await page.goto(`https://${first.host}:9001/`);
  await page.waitForSelector("#token-form", { timeout: 15000 });
  const readOnly = await first.api.createToken({ role: "read-only", name: "console-test" });
  await page.goto("about:blank");
  await page.goto(`https://${first.host}:9001/#token=${encodeURIComponent(readOnly.token)}`);
  assert.not.match(page.url(), /token=/, "the token leaves the address");
  for (const n of ["node1", "node2", "node3"]) await page.waitForSelector(`.node[data-node="${n}"][data-health="up"]`, { timeout: 15000 });
  assert.match((await page.textContent("#nodes")) ?? "", /catalog leader/);
  await page.waitForSelector('#volumes tr[data-volume="web"]', { timeout: 15000 });
  // The table's IOPS column, from the samples of every node, shows the writes.
  // Expressions evaluated in the page (this project's TypeScript has no DOM types).
  await page.waitForFunction(`Number(document.querySelector('tr[data-volume="web"] td[data-col="iops"]')?.textContent) > 0`, undefined, { timeout: 20000 });
  await page.screenshot({ path: join(shots.dir, "cluster.png"), fullPage: true });

  await page.click('#volumes a[href="#/volume/web"]');
  await page.waitForSelector("#volume-page canvas#graph-iops", { timeout: 15000 });
  await page.waitForFunction(`(() => {
    const g = document.querySelector("#graph-iops");
    return g !== null && Number(g.getAttribute("data-points")) >= 3 && Number(g.getAttribute("data-max")) > 0;
  })()`, undefined, { timeout: 20000 });
  const tp = await page.getAttribute("#graph-throughput", "data-max");
  assert.ok(Number(tp) >= 4096, `the throughput graph drew ${tp} B/s at most`);
  await page.screenshot({ path: join(shots.dir, "volume.png"), fullPage: true });
  assert.ok(statSync(join(shots.dir, "volume.png")).size > 10_000, "a real screenshot");

  await third.kill();
  await page.click('a[href="#/"]');
  await page.waitForSelector('.node[data-node="node3"][data-health="down"]', { timeout: 20000 });
  await page.waitForSelector('li[data-kind="node-down"]', { timeout: 10000 });
  assert.is(await page.getAttribute('.node[data-node="node1"]', "data-health"), "up");
  await page.screenshot({ path: join(shots.dir, "node-down.png"), fullPage: true });
});

test.run();

// Browser test of the status page, run by tests/browser.rs against `clusterway lab`:
//   node run.mjs URL SNAPSHOT_PATH [OUTPUT_DIR]
// Drives Debian's Chromium (headless) with playwright-core. Checks: the demo Services
// appear (demo/empty marked unservable), a change in the snapshot shows up live without a
// reload, the search filters, the detail drawer lists endpoints; saves screenshots.
import { chromium } from 'playwright-core';
import { readFileSync, writeFileSync, renameSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';

const [url, snapshot, outDir = 'test-output/browser'] = process.argv.slice(2);
if (!url || !snapshot) {
  console.error('usage: node run.mjs URL SNAPSHOT_PATH [OUTPUT_DIR]');
  process.exit(2);
}
mkdirSync(outDir, { recursive: true });

const step = (msg) => console.log('browser: ' + msg);
const rowNames = (page) => page.$$eval('#services tbody tr[data-name]', (rows) => rows.map((r) => r.dataset.ns + '/' + r.dataset.name));

async function waitRows(page, pred, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  let names = [];
  while (Date.now() < deadline) {
    names = await rowNames(page);
    if (pred(names)) return names;
    await page.waitForTimeout(100);
  }
  throw new Error(`timed out waiting for ${what}; rows: ${JSON.stringify(names)}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run'],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });

  await page.goto(url, { waitUntil: 'domcontentloaded' });
  step('page loaded');
  const names = await waitRows(page, (n) => ['demo/web', 'demo/dns-echo', 'demo/sticky', 'demo/empty'].every((s) => n.includes(s)), 'the demo Services');
  step('services: ' + names.join(', '));
  const emptyMarked = await page.$eval('#services tr[data-name="empty"]', (tr) => tr.classList.contains('unservable') && tr.textContent.includes('no endpoints'));
  if (!emptyMarked) throw new Error('demo/empty is not marked unservable');
  await page.waitForSelector('#live.on', { timeout: 10000 });
  await page.waitForSelector('#h-ready.ok', { timeout: 10000 });
  step('live updates connected, gateway ready');

  // The announcement card: each routed prefix, its state and since when.
  await page.waitForSelector('#announce:not([hidden]) #announce-list li .pill.ok', { timeout: 10000 });
  const announced = await page.$$eval('#announce-list li', (lis) => lis.map((li) => li.textContent));
  if (!announced.some((t) => /\d+\.\d+\.\d+\.\d+\/\d+ announced since \S+/.test(t))) {
    throw new Error('the announcement card shows no announced prefix with its time: ' + JSON.stringify(announced));
  }
  step('announced routes: ' + announced.join(' | '));

  // A change in the snapshot shows up without a reload: rename demo/sticky to demo/canary.
  await page.evaluate(() => { window.__notReloaded = true; });
  const text = readFileSync(snapshot, 'utf8');
  if (!text.includes('sticky')) throw new Error('the snapshot has no demo/sticky');
  const tmp = join(dirname(snapshot), '.snapshot.browser-test');
  writeFileSync(tmp, text.replaceAll('sticky', 'canary'));
  renameSync(tmp, snapshot);
  await waitRows(page, (n) => n.includes('demo/canary') && !n.includes('demo/sticky'), 'demo/canary to replace demo/sticky live');
  if (!(await page.evaluate(() => window.__notReloaded === true))) throw new Error('the page was reloaded');
  await page.waitForSelector('#events li:has-text("demo/canary")', { timeout: 10000 });
  step('snapshot change shown live (services table and events), no reload');

  // Search filters on the server.
  await page.fill('#search', 'dns');
  await waitRows(page, (n) => n.length === 1 && n[0] === 'demo/dns-echo', 'the search to leave only demo/dns-echo');
  await page.fill('#search', '10.96.0.10');
  await waitRows(page, (n) => n.length === 1 && n[0] === 'demo/web', 'a ClusterIP search to find demo/web');
  await page.fill('#search', 'no-such-service');
  await page.waitForSelector('#services td.empty', { timeout: 5000 });
  await page.fill('#search', '');
  await waitRows(page, (n) => n.length === 5, 'all five Services again (demo/db is headless)');
  step('search filters');

  // Let the charts gather a few seconds of traffic, then screenshot the dashboard.
  await page.waitForSelector('#flows tbody td.mono', { timeout: 10000 });
  await page.waitForTimeout(4000);
  await page.screenshot({ path: join(outDir, 'dashboard.png'), fullPage: true });
  step('screenshot ' + join(outDir, 'dashboard.png'));

  // Service detail: endpoints with conditions.
  await page.click('#services tr[data-name="web"]');
  await page.waitForSelector('#drawer:not([hidden]) td:has-text("pod-1")', { timeout: 10000 });
  const badges = await page.$$eval('#d-body .badge.ok', (b) => b.length);
  if (badges < 2) throw new Error('the detail shows no ready endpoints');
  await page.waitForTimeout(500);
  await page.screenshot({ path: join(outDir, 'service-detail.png') });
  step('detail drawer lists endpoints; screenshot ' + join(outDir, 'service-detail.png'));

  if (errors.length) throw new Error('errors in the page: ' + errors.join(' | '));
} catch (e) {
  failed = true;
  console.error('browser: FAILED: ' + (e && e.stack || e));
  try {
    const pages = browser.contexts().flatMap((c) => c.pages());
    if (pages[0]) await pages[0].screenshot({ path: join(outDir, 'failure.png'), fullPage: true });
  } catch { /* best effort */ }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

// Drives the broker's web console in headless Debian chromium (playwright-core, no bundled
// browser). Called by tests/console_browser.rs in two phases around a real Kafka client:
//
//   node console.test.mjs create    load the overview, create TOPIC through the form (dialog,
//                                   confirmation, CSRF token), see it listed with its partitions
//   node console.test.mjs inspect   open the topic, see offsets and messages appear, check that
//                                   a value holding HTML shows as text, and that a cross-site
//                                   form POST without the token is refused
//
// Env: CONSOLE_URL (http://127.0.0.1:PORT), TOPIC, PARTITIONS, OUT_DIR (screenshots),
// CHROMIUM (default /usr/bin/chromium). Exits non-zero with a message on any failure.
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const phase = process.argv[2];
const url = process.env.CONSOLE_URL;
const topic = process.env.TOPIC;
const partitions = Number(process.env.PARTITIONS || '3');
const outDir = process.env.OUT_DIR || tmpdir();
const TIMEOUT_MS = 15000;

function check(condition, message) {
  if (!condition) throw new Error('check failed: ' + message);
}

async function withBrowser(fn) {
  mkdirSync(outDir, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'console-chromium-'));
  // A fresh profile per run (playwright passes it as --user-data-dir).
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1360, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = browser.pages()[0] || await browser.newPage();
    page.setDefaultTimeout(TIMEOUT_MS);
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));
    await fn(page, browser);
    check(pageErrors.length === 0, 'no script errors on the page: ' + pageErrors.join('; '));
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

async function create(page) {
  await page.goto(url + '/');
  await page.waitForSelector('table [data-broker]');
  await page.waitForSelector('#live.ok');
  await page.screenshot({ path: join(outDir, 'overview.png'), fullPage: true });
  await page.click('a[data-nav="topics"]');
  await page.click('#create-topic');
  await page.fill('#f-name', topic);
  await page.fill('#f-partitions', String(partitions));
  await page.fill('#f-rf', '1');
  await page.click('#dialog-ok');
  // The confirmation step names the topic before anything is sent.
  await page.waitForSelector('#dialog-title:text("Confirm")');
  check((await page.textContent('#dialog-body')).includes(topic), 'confirmation names the topic');
  const created = page.waitForResponse((r) => r.url().endsWith('/api/v1/topics') && r.request().method() === 'POST');
  await page.click('#dialog-ok');
  const response = await created;
  check(response.status() === 201, 'create answered 201, got ' + response.status());
  check(Boolean(response.request().headers()['x-csrf-token']), 'the page sent its CSRF token');
  const row = `tr[data-topic="${topic}"]`;
  await page.waitForSelector(row);
  const shown = (await page.textContent(`${row} td.partitions`)).trim();
  check(shown === String(partitions), `listed with ${partitions} partitions, shows ${shown}`);
  await page.screenshot({ path: join(outDir, 'topics.png'), fullPage: true });
  console.log(`created ${topic} through the console; listed with ${shown} partitions`);
}

async function inspect(page, browser) {
  await page.goto(`${url}/#/topics/${encodeURIComponent(topic)}`);
  await page.waitForSelector('#partitions-table tr[data-partition="0"]');
  // Partition 0's log end offset moves once the client's records are in (the page polls).
  await page.waitForFunction(() => {
    const cell = document.querySelector('#partitions-table tr[data-partition="0"] td.log-end');
    return cell && Number(cell.textContent.replace(/,/g, '')) > 0;
  });
  await page.waitForSelector('#messages-table td.value');
  const values = await page.$$eval('#messages-table td.value', (tds) => tds.map((td) => td.textContent));
  const html = values.find((v) => v.includes('<script>'));
  check(html !== undefined, 'the value with <script> is listed as text: ' + JSON.stringify(values));
  const injected = await page.evaluate(() => ({
    elements: document.querySelectorAll('#messages script, #messages img, #messages b.evil').length,
    flag: window.__xss === undefined ? null : window.__xss,
  }));
  check(injected.elements === 0 && injected.flag === null, 'no markup from record values reached the DOM');
  await page.screenshot({ path: join(outDir, 'topic.png'), fullPage: true });

  // A cross-site form: from another origin (about:blank is opaque: Origin "null"), no token.
  const cross = await browser.newPage();
  const refused = cross.waitForResponse((r) => r.url().endsWith('/api/v1/topics'));
  await cross.setContent(`<form id="f" method="POST" action="${url}/api/v1/topics" enctype="text/plain">
    <input name='{"name":"crosssite","partitions":1,"x":"' value='"}'></form>`);
  await cross.evaluate(() => document.getElementById('f').submit());
  const status = (await refused).status();
  check(status === 403, 'cross-site POST refused with 403, got ' + status);
  const topics = await (await page.request.get(url + '/api/v1/topics')).json();
  check(!topics.topics.some((t) => t.name === 'crosssite'), 'the cross-site POST created nothing');
  console.log(`inspect ${topic}: offsets moved, ${values.length} messages shown escaped; cross-site POST got ${status}`);
}

const phases = { create, inspect };
if (!phases[phase] || !url || !topic) {
  console.error('usage: CONSOLE_URL=... TOPIC=... node console.test.mjs create|inspect');
  process.exit(2);
}
withBrowser(phases[phase]).catch((e) => { console.error(e.stack || String(e)); process.exit(1); });

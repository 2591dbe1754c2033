// Keeps a console page open in headless chromium for SECONDS (the page polls the broker as a
// person's open tab would). Used by scripts/bench-console for the "console open" runs.
//   node hold.mjs http://127.0.0.1:PORT/#/ SECONDS
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, seconds] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'console-hold-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1360, height: 900 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = browser.pages()[0] || await browser.newPage();
await page.goto(url);
await page.waitForTimeout(Number(seconds) * 1000);
if (process.env.SCREENSHOT) await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
await browser.close();
rmSync(profile, { recursive: true, force: true });

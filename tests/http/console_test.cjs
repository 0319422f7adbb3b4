// The browser console (GET /) in Debian's headless chromium driven by playwright-core (ctest
// http.console): the page loads, a prompt with an uploaded image streams its answer into the
// page, and the cluster view shows every stage. A screenshot goes to XCPIPE_REPORT_DIR.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { base, apiKey, png, modelId } = require('./common.cjs');

test('console: chat with an uploaded image streams, stages shown', async () => {
  const workers = parseInt(process.env.XCPIPE_WORKERS || '2', 10);
  const model = await modelId();
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'xcpipe-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    const outside = [];
    page.on('request', (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) outside.push(r.url()); });
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(base + '/');
    await page.fill('#key', apiKey);
    await page.dispatchEvent('#key', 'change');
    await page.waitForFunction((m) => document.getElementById('model').textContent.includes(m), model);
    await page.waitForFunction((n) => document.querySelectorAll('#stages tr.stage').length === n, workers,
                               { timeout: 20000 });
    // Count how often the answer's text changes while it streams.
    await page.evaluate(() => {
      window.__updates = 0;
      new MutationObserver(() => { window.__updates++; })
        .observe(document.getElementById('messages'), { subtree: true, childList: true, characterData: true });
    });
    const image = path.join(process.env.XCPIPE_WORK, 'console.png');
    fs.writeFileSync(image, png(64, 5));
    await page.setInputFiles('#image', image);
    await page.waitForFunction(() => document.getElementById('preview').style.display === 'inline');
    await page.fill('#prompt', 'What is in this picture?');
    await page.click('#send');
    await page.waitForSelector('.msg.assistant[data-done="1"]', { timeout: 60000 });
    const answer = await page.textContent('.msg.assistant .text');
    const failed = await page.$('.msg.assistant.error');
    assert.equal(failed, null, 'the answer is not an error: ' + answer);
    assert.ok(answer.length > 0, 'an answer arrived');
    const updates = await page.evaluate(() => window.__updates);
    assert.ok(updates >= 3, 'the answer streamed in several updates: ' + updates);
    assert.ok(await page.$('.msg.user img'), 'the uploaded image shows in the chat');
    const stages = await page.$$eval('#stages tr.stage', (rows) => rows.map((r) => r.dataset.stage));
    assert.deepEqual(stages, Array.from({ length: workers }, (_, i) => String(i)));
    await page.waitForFunction(() => /completed <b>[1-9]/.test(document.getElementById('summary').innerHTML));
    fs.mkdirSync(process.env.XCPIPE_REPORT_DIR, { recursive: true });
    const shot = path.join(process.env.XCPIPE_REPORT_DIR, 'http_console.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log('screenshot: ' + shot);
    assert.deepEqual(outside, [], 'the page fetched nothing from elsewhere');
    assert.deepEqual(errors, []);
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
});

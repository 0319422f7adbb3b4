// Helpers shared by the HTTP API's Node.js tests (run by run_with_cluster.sh).
'use strict';
const { execFileSync } = require('node:child_process');
const zlib = require('node:zlib');
const OpenAI = require('openai');

const base = process.env.XCPIPE_HTTP_BASE;
const apiKey = process.env.XCPIPE_API_KEY;

function client(options = {}) {
  return new OpenAI({ baseURL: base + '/v1', apiKey, maxRetries: 0, timeout: 300000, ...options });
}

// The served model id, as GET /v1/models lists it.
async function modelId() {
  const res = await fetch(base + '/v1/models', { headers: { Authorization: 'Bearer ' + apiKey } });
  const body = await res.json();
  return body.data[0].id;
}

function crc32(buf) {
  let c, crc = 0xffffffff;
  for (let n = 0; n < buf.length; n++) {
    c = (crc ^ buf[n]) & 0xff;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    crc = (crc >>> 8) ^ c;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

// A size x size RGB PNG whose pixels depend on `seed` (so images differ between requests).
function png(size = 48, seed = 1) {
  const rows = [];
  for (let y = 0; y < size; y++) {
    const row = Buffer.alloc(1 + size * 3);
    for (let x = 0; x < size; x++) {
      row[1 + x * 3] = (x * 5 + seed * 37) & 255;
      row[2 + x * 3] = (y * 7 + seed * 11) & 255;
      row[3 + x * 3] = ((x ^ y) * 3 + seed) & 255;
    }
    rows.push(row);
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4); crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0); ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 8; ihdr[9] = 2;  // 8-bit RGB
  return Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), chunk('IHDR', ihdr),
                        chunk('IDAT', zlib.deflateSync(Buffer.concat(rows))), chunk('IEND', Buffer.alloc(0))]);
}
const pngDataUrl = (size, seed) => 'data:image/png;base64,' + png(size, seed).toString('base64');

// `xcpipe submit --json` against the same coordinator: {token_ids, text, ...}.
function submit(prompt, args = []) {
  const out = execFileSync(process.env.XCPIPE_BIN + '/xcpipe',
                           ['submit', '--coordinator', process.env.XCPIPE_COORDINATOR, '--prompt', prompt, '--json', ...args],
                           { encoding: 'utf8' });
  return JSON.parse(out);
}

// The coordinator's status through the API (GET /v1/status).
async function status() {
  const res = await fetch(base + '/v1/status', { headers: { Authorization: 'Bearer ' + apiKey } });
  if (!res.ok) throw new Error('status ' + res.status);
  return res.json();
}
// KV room the workers report as reserved (their heartbeats carry it: up to ~250 ms behind).
const kvReserved = (s) => s.workers.reduce((sum, w) => sum + w.kv_reserved_bytes, 0);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Polls the status until `done(status)` holds or `ms` pass; returns the last status.
async function waitStatus(done, ms = 10000) {
  const end = Date.now() + ms;
  let s = await status();
  while (!done(s) && Date.now() < end) {
    await sleep(100);
    s = await status();
  }
  return s;
}

module.exports = { OpenAI, base, apiKey, client, modelId, png, pngDataUrl, submit, status, kvReserved, sleep, waitStatus };

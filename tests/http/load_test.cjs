// Many requests at once through the HTTP API (ctest http.load): 32 concurrent streams give the
// tokens of running them one at a time, and a client that disconnects mid-stream frees its KV
// room (the coordinator's status shows it). Run by run_with_cluster.sh.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { client, modelId, pngDataUrl, status, kvReserved, base, apiKey, sleep, waitStatus } = require('./common.cjs');

const openai = client();
let model;
test.before(async () => { model = await modelId(); });

// Mixed lengths, half with an image of their own.
const requests = Array.from({ length: 32 }, (_, i) => {
  const text = `Request ${i}: ` + 'tell me more. '.repeat(1 + (i % 5));
  const content = i % 2 === 0 ? [{ type: 'image_url', image_url: { url: pngDataUrl(32 + (i % 4) * 8, i) } }, { type: 'text', text }]
                              : text;
  return { messages: [{ role: 'user', content }], max_tokens: 4 + ((i * 7) % 21) };
});

async function streamed(r) {
  const stream = await openai.chat.completions.create({ model, temperature: 0, stream: true,
                                                        stream_options: { include_usage: true }, ...r });
  let text = '', usage = null, finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) { text += c.delta.content || ''; finish = c.finish_reason || finish; }
  }
  return { text, tokens: usage.completion_tokens, finish };
}

// KV room held while idle: the chat template's shared head, computed once per plan.
let idleKv = null;
async function idle() {
  if (idleKv === null) {
    await openai.chat.completions.create({ model, max_tokens: 1, messages: [{ role: 'user', content: 'warm up' }] });
    await sleep(1000);  // past the workers' next reports
    idleKv = kvReserved(await status());
  }
  return idleKv;
}

test('32 concurrent streams give the tokens of one-at-a-time runs', async () => {
  const baseline = await idle();
  const alone = [];
  for (const r of requests) alone.push(await streamed(r));
  const t0 = Date.now();
  const together = await Promise.all(requests.map(streamed));
  const ms = Date.now() - t0;
  for (let i = 0; i < requests.length; i++) {
    assert.deepEqual(together[i], alone[i], `request ${i} differs when run with 31 others`);
  }
  const s = await waitStatus((x) => kvReserved(x) === baseline && x.in_flight === 0);
  assert.equal(kvReserved(s), baseline, 'every sequence gave its KV room back');
  console.log(`32 concurrent streams in ${ms} ms; ${together.reduce((n, r) => n + r.tokens, 0)} tokens`);
});

test('a client that disconnects mid-stream cancels its request and frees its KV room', async () => {
  const baseline = await idle();
  assert.equal(kvReserved(await status()), baseline);
  const models = await openai.models.list();
  const controller = new AbortController();
  const res = await fetch(base + '/v1/chat/completions', {
    method: 'POST', signal: controller.signal,
    headers: { Authorization: 'Bearer ' + apiKey, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, stream: true, temperature: 0.8, seed: 3,
                           max_tokens: models.data[0].max_model_len - 600,
                           messages: [{ role: 'user', content: 'Go on forever.' }] }),
  });
  assert.equal(res.status, 200);
  const reader = res.body.getReader();
  let received = '';
  while (!received.includes('"content":"') || received.split('data: ').length < 4) {
    const { value, done } = await reader.read();
    assert.ok(!done, 'the stream ended before the test could disconnect');
    received += Buffer.from(value).toString();
  }
  const during = await waitStatus((x) => kvReserved(x) > baseline, 3000);
  assert.ok(kvReserved(during) > baseline, 'the streaming request holds KV room');
  assert.equal(during.in_flight, 1);
  controller.abort();
  const after = await waitStatus((x) => kvReserved(x) === baseline && x.in_flight === 0);
  assert.equal(kvReserved(after), baseline, 'KV room freed after the disconnect');
  assert.equal(after.in_flight, 0);
  assert.equal(after.completed, during.completed, 'the abandoned request did not run to its end');
  assert.equal(after.failed_by_reason.Cancelled, (during.failed_by_reason.Cancelled || 0) + 1);
});

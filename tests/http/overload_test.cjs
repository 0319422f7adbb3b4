// Bounded overload (ctest http.overload): more requests at once than the coordinator admits
// plus its queue (--max-sequences 2 --max-queue 2), and than one API key may have in progress
// (--http-max-requests-per-key 4). The rest get 429 with Retry-After, refused by the gateway
// (key_busy) or by the coordinator (busy), and every accepted request completes with its full
// answer: none is lost. Run by run_with_cluster.sh.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { modelId, status, kvReserved, base, apiKey, sleep, waitStatus } = require('./common.cjs');

test('overload: 429 with Retry-After, no accepted request lost', async () => {
  const model = await modelId();
  const one = async (i) => {
    const res = await fetch(base + '/v1/chat/completions', {
      method: 'POST', headers: { Authorization: 'Bearer ' + apiKey, 'Content-Type': 'application/json' },
      body: JSON.stringify({ model, temperature: 0, max_tokens: 24, messages: [{ role: 'user', content: `Question ${i}?` }] }),
    });
    return { status: res.status, retryAfter: res.headers.get('retry-after'), body: await res.json() };
  };
  // One request first: the template's shared head is computed (it keeps its KV room).
  assert.equal((await one(-1)).status, 200);
  await sleep(1000);  // past the workers' next reports
  const before = await status();
  const results = await Promise.all(Array.from({ length: 24 }, (_, i) => one(i)));
  const ok = results.filter((r) => r.status === 200), busy = results.filter((r) => r.status === 429);
  assert.equal(ok.length + busy.length, results.length, 'only 200 and 429: ' + results.map((r) => r.status).join(','));
  assert.ok(busy.length >= 1, 'some requests were refused as busy');
  assert.ok(ok.length >= 2, 'the admitted and queued ones were served: ' + ok.length);
  for (const r of busy) {
    assert.equal(r.retryAfter, '1');
    assert.equal(r.body.error.type, 'rate_limit_error');
    assert.ok(['busy', 'key_busy'].includes(r.body.error.code), r.body.error.code);
  }

  for (const r of ok) {
    const c = r.body.choices[0];
    assert.ok(c.finish_reason === 'stop' || r.body.usage.completion_tokens === 24, 'an accepted answer is whole');
  }
  const after = await waitStatus((x) => kvReserved(x) === kvReserved(before) && x.in_flight === 0);
  assert.equal(after.completed - before.completed, ok.length, 'every accepted request completed exactly once');
  assert.equal(after.failed, before.failed, 'none failed');
  assert.equal(kvReserved(after), kvReserved(before), 'every admitted sequence gave its KV room back');
  // Once the burst is over the server serves again.
  assert.equal((await one(99)).status, 200);
});

test('one key past its requests in progress gets 429 from the gateway', async () => {
  const model = await modelId();
  const controller = new AbortController();
  const post = (max_tokens, i, signal) => fetch(base + '/v1/chat/completions', {
    method: 'POST', signal, headers: { Authorization: 'Bearer ' + apiKey, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, temperature: 0, max_tokens, messages: [{ role: 'user', content: `Long ${i}` }] }),
  });
  // Four long requests, one after the other: 2 decoding and 2 queued at the coordinator, all 4
  // held by this key.
  const long = [];
  for (let i = 0; i < 4; i++) {
    long.push(post(3000, i, controller.signal).catch((e) => e));
    const s = await waitStatus((x) => x.in_flight + x.queue_depth >= i + 1, 10000);
    assert.ok(s.in_flight + s.queue_depth >= i + 1, `request ${i} is in progress: ${JSON.stringify(s).slice(0, 200)}`);
  }
  const fifth = await post(4, 5);
  assert.equal(fifth.status, 429);
  assert.equal(fifth.headers.get('retry-after'), '1');
  const body = await fifth.json();
  assert.equal(body.error.code, 'key_busy');
  assert.match(body.error.message, /this API key has 4 requests in progress/);
  // The four give up; their slots and KV room come back, and the key may ask again.
  controller.abort();
  await Promise.all(long);
  const idle = await waitStatus((x) => x.in_flight + x.queue_depth === 0, 20000);
  assert.equal(idle.in_flight + idle.queue_depth, 0);
  assert.equal((await post(4, 6)).status, 200);
});

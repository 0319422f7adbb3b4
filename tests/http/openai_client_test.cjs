// The official `openai` npm client (6.x) against a local cluster through the HTTP API: what an
// existing tool sees. Run by run_with_cluster.sh (ctest http.openai_client).
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { OpenAI, base, client, modelId, pngDataUrl, submit, png } = require('./common.cjs');
const fs = require('node:fs');
const path = require('node:path');

const openai = client();
let model;
test.before(async () => { model = await modelId(); });

test('plain chat', async () => {
  const r = await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hello!' }], max_tokens: 8 });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.model, model);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.ok(r.usage.prompt_tokens > 10);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 8);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  if (r.choices[0].finish_reason === 'length') assert.equal(r.usage.completion_tokens, 8);
});

test('system text and history reach the template', async () => {
  const ask = (messages) => openai.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0 });
  const a = await ask([{ role: 'user', content: 'Name a colour.' }]);
  const b = await ask([{ role: 'system', content: 'You answer in one word.' }, { role: 'user', content: 'Name a colour.' }]);
  const c = await ask([{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello.' },
                       { role: 'user', content: 'Name a colour.' }]);
  assert.ok(b.usage.prompt_tokens !== a.usage.prompt_tokens, 'the system text replaces the default one');
  assert.ok(c.usage.prompt_tokens > a.usage.prompt_tokens, 'history adds its turns');
});

test('streamed chat with an image part, read as it streams, with include_usage', async () => {
  const stream = await openai.chat.completions.create({
    model, max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: pngDataUrl(64, 3) } },
                                         { type: 'text', text: 'Describe the image.' }] }],
  });
  const arrivals = [];
  let text = '', role = null, finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) { usage = chunk.usage; assert.equal(chunk.choices.length, 0); continue; }
    const c = chunk.choices[0];
    if (c.delta.role) role = c.delta.role;
    if (c.delta.content) { text += c.delta.content; arrivals.push(Date.now()); }
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(role, 'assistant', 'the first delta carries the role');
  assert.ok(['stop', 'length'].includes(finish));
  assert.ok(usage, 'include_usage sends a last chunk with usage');
  assert.ok(usage.prompt_tokens > 100, 'the image rows count as prompt tokens: ' + usage.prompt_tokens);
  assert.ok(usage.completion_tokens >= 1);
  assert.ok(chunks >= 3);
  if (usage.completion_tokens > 2) assert.ok(arrivals.length >= 2, 'text arrives in several deltas');
  // The same request whole gives the same text (greedy).
  const whole = await openai.chat.completions.create({
    model, max_tokens: 12, temperature: 0,
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: pngDataUrl(64, 3) } },
                                         { type: 'text', text: 'Describe the image.' }] }],
  });
  assert.equal(whole.choices[0].message.content, text);
  assert.equal(whole.usage.completion_tokens, usage.completion_tokens);
});

test('greedy tokens equal xcpipe submit for the same prompt (text and image)', async () => {
  const prompt = 'Tell me about pipelines.';
  const http = await openai.chat.completions.create({ model, max_tokens: 16, temperature: 0,
                                                      messages: [{ role: 'user', content: prompt }] });
  const cli = submit(prompt, ['--max-new-tokens', '16', '--greedy']);
  assert.equal(http.choices[0].message.content, cli.text);
  assert.equal(http.usage.completion_tokens, cli.token_ids.length);

  const image = path.join(process.env.XCPIPE_WORK, 'img.png');
  fs.writeFileSync(image, png(40, 9));
  const withImage = await openai.chat.completions.create({
    model, max_tokens: 10, temperature: 0,
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: pngDataUrl(40, 9) } },
                                         { type: 'text', text: 'What is this?' }] }],
  });
  const cliImage = submit('<ImageHere>What is this?', ['--image', image, '--max-new-tokens', '10', '--greedy']);
  assert.equal(withImage.choices[0].message.content, cliImage.text);
  assert.equal(withImage.usage.completion_tokens, cliImage.token_ids.length);
});

test('top_k and repetition_penalty are passed through', async () => {
  const prompt = 'Count and repeat.';
  const ask = (extra) => openai.chat.completions.create({ model, max_tokens: 16, messages: [{ role: 'user', content: prompt }],
                                                          ...extra });
  // top_k 1 samples the most likely token: the greedy answer, whatever the seed and temperature.
  const greedy = await ask({ temperature: 0 });
  const topK1 = await ask({ temperature: 1.5, seed: 5, top_k: 1 });
  assert.equal(topK1.choices[0].message.content, greedy.choices[0].message.content);
  // The repetition penalty: the answer `xcpipe submit --repetition-penalty` gives.
  const penalised = await ask({ temperature: 0, repetition_penalty: 3.0 });
  const cli = submit(prompt, ['--max-new-tokens', '16', '--greedy', '--repetition-penalty', '3.0']);
  assert.equal(penalised.choices[0].message.content, cli.text);
  assert.equal(penalised.usage.completion_tokens, cli.token_ids.length);
});

test('min_tokens and ignore_eos (top-level extensions) match xcpipe submit and run to the length', async () => {
  const prompt = 'Say one word.';
  const ask = (extra) => openai.chat.completions.create({ model, max_tokens: 12, temperature: 0,
                                                          messages: [{ role: 'user', content: prompt }], ...extra });
  const held = await ask({ min_tokens: 12, ignore_eos: true });
  assert.equal(held.usage.completion_tokens, 12, 'ignore_eos generates exactly max_tokens');
  assert.equal(held.choices[0].finish_reason, 'length');
  const cli = submit(prompt, ['--max-new-tokens', '12', '--greedy', '--min-tokens', '12', '--ignore-eos']);
  assert.equal(cli.token_ids.length, 12);
  assert.equal(held.choices[0].message.content, cli.text);
  await assert.rejects(ask({ min_tokens: 13 }), (err) => {
    assert.equal(err.status, 400);
    assert.ok(err.message.includes('min_tokens (13) is more than max_tokens (12)'), err.message);
    return true;
  });
});

test('num_beams (top-level extension) gives the beam search xcpipe submit --num-beams gives', async () => {
  const prompt = 'Name three colours.';
  const ask = (extra) => openai.chat.completions.create({ model, max_tokens: 10,
                                                          messages: [{ role: 'user', content: prompt }], ...extra });
  const beams = await ask({ num_beams: 4, repetition_penalty: 1.5, length_penalty: 1.0, early_stopping: false });
  const cli = submit(prompt, ['--max-new-tokens', '10', '--num-beams', '4', '--repetition-penalty', '1.5']);
  assert.equal(beams.choices[0].message.content, cli.text);
  assert.equal(beams.usage.completion_tokens, cli.token_ids.length);
  await assert.rejects(ask({ num_beams: 4, temperature: 0.7 }), (err) => {
    assert.equal(err.status, 400);
    assert.ok(err.message.includes('needs greedy decoding'), err.message);
    return true;
  });
});

test('seed makes sampling reproducible', async () => {
  const ask = (seed) => openai.chat.completions.create({ model, max_tokens: 16, temperature: 1.0, top_p: 0.95, seed,
                                                         messages: [{ role: 'user', content: 'Say something random.' }] });
  const a = await ask(1234), b = await ask(1234);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content);
  assert.equal(a.usage.completion_tokens, b.usage.completion_tokens);
});

test('a stop sequence ends the answer and is not sent, streamed or not', async () => {
  const messages = [{ role: 'user', content: 'Write a long sentence.' }];
  const full = (await openai.chat.completions.create({ model, max_tokens: 32, temperature: 0, messages })).choices[0].message.content;
  assert.ok(full.length >= 6, 'need some text to cut: ' + JSON.stringify(full));
  const mid = Math.floor(full.length / 2);
  const stop = full.slice(mid, mid + 2);
  const expected = full.slice(0, full.indexOf(stop));
  const cut = await openai.chat.completions.create({ model, max_tokens: 32, temperature: 0, messages, stop: [stop, 'never-appears'] });
  assert.equal(cut.choices[0].message.content, expected);
  assert.equal(cut.choices[0].finish_reason, 'stop');
  const stream = await openai.chat.completions.create({ model, max_tokens: 32, temperature: 0, messages, stop, stream: true });
  let text = '', finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) { text += c.delta.content || ''; finish = c.finish_reason || finish; }
  }
  assert.equal(text, expected);
  assert.equal(finish, 'stop');
});

test('a bad request is a BadRequestError with our message', async () => {
  const bad = async (body, message) => {
    await assert.rejects(openai.chat.completions.create({ model, max_tokens: 4, ...body }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, 'got ' + err.constructor.name + ': ' + err.message);
      assert.equal(err.status, 400);
      assert.ok(err.message.includes(message), err.message);
      return true;
    });
  };
  await bad({ messages: [{ role: 'user', content: 'x' }], n: 2 }, 'more than one choice per request (n = 2) is not implemented');
  await bad({ messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f' } }] },
            'tool calling is not implemented');
  await bad({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/png;base64,@@@@' } }] }] },
            'is not valid base64 at character 0');
  await bad({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/gif;base64,R0lGODlh' } }] }] },
            'expected image/png or image/jpeg');
  const five = Array.from({ length: 5 }, (_, i) => ({ type: 'image_url', image_url: { url: pngDataUrl(16, i) } }));
  await bad({ messages: [{ role: 'user', content: five }] }, 'at most 4 are accepted per request');
  await bad({ messages: [{ role: 'user', content: 'x' }], max_tokens: 4000 }, 'exceeds the context of');
  await bad({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'file:///etc/passwd' } }] }] },
            'is not a file below the server\'s --allowed-media-dir');
});

// The cluster runs with --allowed-media-dir @WORK@/media --allow-remote-images
// --remote-image-ca-file @WORK@/tls/cert.pem (CMake; run_with_cluster.sh makes the certificates).
test('image URLs: file:// below the allowed folder, http(s):// with redirects, refusals', async () => {
  const http = require('node:http');
  const https = require('node:https');
  const tls = path.join(process.env.XCPIPE_WORK, 'tls');
  const tlsServer = (name) => https.createServer({ key: fs.readFileSync(path.join(tls, name + '-key.pem')),
                                                   cert: fs.readFileSync(path.join(tls, name + '.pem')) },
                                                 (req, res) => { res.writeHead(200); res.end(png(40, 9)); });
  const trusted = tlsServer('cert'), untrusted = tlsServer('other');
  await new Promise((r) => trusted.listen(0, '127.0.0.1', r));
  await new Promise((r) => untrusted.listen(0, '127.0.0.1', r));
  const media = path.join(process.env.XCPIPE_WORK, 'media');
  fs.writeFileSync(path.join(media, 'a.png'), png(40, 9));
  fs.writeFileSync(path.join(process.env.XCPIPE_WORK, 'outside.png'), png(40, 9));
  const server = http.createServer((req, res) => {
    if (req.url === '/a.png') { res.writeHead(200, { 'Content-Type': 'image/png' }); res.end(png(40, 9)); return; }
    if (req.url === '/moved') { res.writeHead(302, { Location: '/a.png' }); res.end(); return; }
    const hop = /^\/loop(\d+)$/.exec(req.url);
    if (hop) { res.writeHead(302, { Location: '/loop' + (Number(hop[1]) + 1) }); res.end(); return; }
    if (req.url === '/text') { res.writeHead(200); res.end('not an image'); return; }
    res.writeHead(404); res.end();
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const origin = 'http://127.0.0.1:' + server.address().port;
  try {
    const ask = (url) => openai.chat.completions.create({
      model, max_tokens: 6, temperature: 0,
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url } }, { type: 'text', text: 'What is this?' }] }],
    });
    const inline = (await ask(pngDataUrl(40, 9))).choices[0].message.content;
    assert.equal((await ask('file://' + path.join(media, 'a.png'))).choices[0].message.content, inline);
    assert.equal((await ask(origin + '/a.png')).choices[0].message.content, inline);
    assert.equal((await ask(origin + '/moved')).choices[0].message.content, inline, 'one redirect is followed');
    assert.equal((await ask(`https://127.0.0.1:${trusted.address().port}/a.png`)).choices[0].message.content, inline,
                 'https with a trusted certificate');
    const refused = async (url, message) => {
      await assert.rejects(ask(url), (err) => {
        assert.ok(err instanceof OpenAI.BadRequestError, err.message);
        assert.ok(err.message.includes(message), err.message);
        return true;
      });
    };
    await refused('file://' + path.join(media, '..', 'outside.png'), '--allowed-media-dir');
    await refused(origin + '/loop0', 'more than 3 redirects');
    await refused(origin + '/text', 'neither a PNG nor a JPEG');
    await refused(origin + '/missing', 'answered HTTP 404');
    await refused(`https://127.0.0.1:${untrusted.address().port}/a.png`, 'the certificate is not trusted');
    await refused('ftp://example.com/a.png', "the URL scheme 'ftp' is not accepted");
  } finally {
    server.close();
    trusted.close();
    untrusted.close();
  }
});

test('errors: 401 without or with a wrong key, 404 unknown model and path, 405, 413', async () => {
  await assert.rejects(client({ apiKey: 'wrong-key-wrong-key' }).chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }] }),
                       (err) => err instanceof OpenAI.AuthenticationError && err.status === 401);
  await assert.rejects(openai.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
                       (err) => err instanceof OpenAI.NotFoundError && err.message.includes(model));
  const noKey = await fetch(base + '/v1/models');
  assert.equal(noKey.status, 401);
  assert.match((await noKey.json()).error.message, /Authorization: Bearer/);
  const unknown = await fetch(base + '/v2/nothing');
  assert.equal(unknown.status, 404);
  const wrongMethod = await fetch(base + '/v1/chat/completions', { headers: { Authorization: 'Bearer ' + process.env.XCPIPE_API_KEY } });
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.headers.get('allow'), 'POST');
  const huge = await fetch(base + '/v1/chat/completions', {
    method: 'POST', headers: { Authorization: 'Bearer ' + process.env.XCPIPE_API_KEY, 'Content-Type': 'application/json' },
    body: 'x'.repeat(49 << 20),
  }).catch((e) => e);
  // The server answers 413 from the header (Content-Length) and closes without reading the body.
  if (!(huge instanceof Error)) assert.equal(huge.status, 413);
  const utf8 = await fetch(base + '/v1/chat/completions', {
    method: 'POST', headers: { Authorization: 'Bearer ' + process.env.XCPIPE_API_KEY, 'Content-Type': 'application/json' },
    body: Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"ab'), Buffer.from([0xff]), Buffer.from('"}]}')]),
  });
  assert.equal(utf8.status, 400);
  assert.match((await utf8.json()).error.message, /not valid UTF-8 at byte offset 41/);
});

test('GET /v1/models and /health', async () => {
  const models = await openai.models.list();
  assert.equal(models.data.length, 1);
  assert.equal(models.data[0].id, model);
  assert.ok(models.data[0].max_model_len >= 256);
  const health = await fetch(base + '/health');
  assert.equal(health.status, 200);
  assert.equal((await health.json()).status, 'serving');
});

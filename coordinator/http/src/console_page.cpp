#include "xcpipe/http/console_page.h"

namespace xcpipe::http {

// The page is plain HTML, CSS and script in one string: nothing to build, nothing fetched from
// elsewhere (the server's Content-Security-Policy forbids it), so it works on an air-gapped
// cluster. Element ids are what the browser test drives (tests/http/console_test.mjs).
std::string_view ConsolePageHtml() {
  static constexpr std::string_view kPage = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>xcpipe console</title>
<style>
  :root { --fg:#1d2330; --muted:#6b7385; --line:#d9dde6; --accent:#2f6fde; --bg:#f6f7fa; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.45 system-ui, sans-serif; color:var(--fg); background:var(--bg); }
  header { display:flex; gap:12px; align-items:center; padding:10px 16px; background:#fff; border-bottom:1px solid var(--line); }
  header h1 { font-size:16px; margin:0; }
  header .grow { flex:1; }
  input[type=password], input[type=text], textarea { font:inherit; padding:6px 8px; border:1px solid var(--line); border-radius:6px; }
  button { font:inherit; padding:6px 14px; border:0; border-radius:6px; background:var(--accent); color:#fff; cursor:pointer; }
  button:disabled { opacity:.5; cursor:default; }
  main { display:grid; grid-template-columns: minmax(320px, 1fr) minmax(360px, 1fr); gap:16px; padding:16px; }
  section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:12px; min-width:0; }
  section h2 { font-size:14px; margin:0 0 8px; }
  #messages { height:52vh; overflow:auto; display:flex; flex-direction:column; gap:8px; }
  .msg { padding:8px 10px; border-radius:8px; white-space:pre-wrap; word-break:break-word; }
  .user { background:#e8effc; align-self:flex-end; max-width:85%; }
  .assistant { background:#f1f2f5; align-self:flex-start; max-width:85%; }
  .error { background:#fde8e8; color:#8a1c1c; }
  .msg img { max-width:160px; display:block; margin-bottom:4px; border-radius:4px; }
  #composer { display:flex; flex-direction:column; gap:8px; margin-top:8px; }
  #composer .row { display:flex; gap:8px; align-items:center; }
  #prompt { width:100%; min-height:60px; resize:vertical; }
  #preview { max-height:48px; display:none; border-radius:4px; }
  .muted { color:var(--muted); }
  table { width:100%; border-collapse:collapse; font-size:12px; }
  th, td { text-align:left; padding:4px 6px; border-bottom:1px solid var(--line); vertical-align:top; }
  .bar { position:relative; height:10px; background:#eef0f4; border-radius:3px; margin:2px 0; min-width:90px; }
  .bar > span { position:absolute; left:0; top:0; bottom:0; background:var(--accent); border-radius:3px; }
  .bar.over > span { background:#d24a4a; }
  .cat { display:grid; grid-template-columns: 70px 1fr; gap:4px; align-items:center; }
  #summary { display:flex; flex-wrap:wrap; gap:12px; margin-bottom:8px; }
  #summary b { font-weight:600; }
</style>
</head>
<body>
<header>
  <h1>xcpipe</h1><span id="model" class="muted">model: …</span><span class="grow"></span>
  <label>API key <input id="key" type="password" placeholder="(none)" size="28" autocomplete="off"></label>
</header>
<main>
  <section>
    <h2>Chat</h2>
    <div id="messages"></div>
    <div id="composer">
      <textarea id="prompt" placeholder="Ask something; attach an image if you like"></textarea>
      <div class="row">
        <input id="image" type="file" accept="image/png,image/jpeg">
        <img id="preview" alt="">
        <span class="grow"></span>
        <label class="muted">max tokens <input id="max-tokens" type="text" value="128" size="4"></label>
        <button id="clear" type="button" style="background:#8a92a6">New chat</button>
        <button id="send" type="button">Send</button>
      </div>
    </div>
  </section>
  <section>
    <h2>Cluster</h2>
    <div id="summary" class="muted">waiting for status…</div>
    <table>
      <thead><tr><th>stage</th><th>host / device</th><th>blocks</th><th>memory used / planned</th><th>step p50</th></tr></thead>
      <tbody id="stages"></tbody>
    </table>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const keyBox = $("key");
keyBox.value = localStorage.getItem("xcpipe.key") || "";
keyBox.addEventListener("change", () => localStorage.setItem("xcpipe.key", keyBox.value));
function headers() {
  const h = { "Content-Type": "application/json" };
  if (keyBox.value) h["Authorization"] = "Bearer " + keyBox.value;
  return h;
}
let modelId = "";
const history = [];
let imageUrl = null;

function add(role, text, img) {
  const d = document.createElement("div");
  d.className = "msg " + role;
  if (img) { const i = document.createElement("img"); i.src = img; d.appendChild(i); }
  const t = document.createElement("span");
  t.className = "text";
  t.textContent = text;
  d.appendChild(t);
  $("messages").appendChild(d);
  $("messages").scrollTop = $("messages").scrollHeight;
  return d;
}

$("image").addEventListener("change", () => {
  const f = $("image").files[0];
  if (!f) { imageUrl = null; $("preview").style.display = "none"; return; }
  const r = new FileReader();
  r.onload = () => { imageUrl = r.result; $("preview").src = imageUrl; $("preview").style.display = "inline"; };
  r.readAsDataURL(f);
});
$("clear").addEventListener("click", () => { history.length = 0; $("messages").textContent = ""; });

async function send() {
  const text = $("prompt").value.trim();
  if (!text && !imageUrl) return;
  const content = [];
  if (imageUrl) content.push({ type: "image_url", image_url: { url: imageUrl } });
  if (text) content.push({ type: "text", text });
  add("user", text, imageUrl);
  history.push({ role: "user", content });
  $("prompt").value = ""; imageUrl = null; $("image").value = ""; $("preview").style.display = "none";
  const out = add("assistant", "");
  out.dataset.done = "0";
  const span = out.querySelector(".text");
  $("send").disabled = true;
  let answer = "";
  try {
    const body = { model: modelId || undefined, messages: history, stream: true,
                   stream_options: { include_usage: true }, max_tokens: parseInt($("max-tokens").value, 10) || 128 };
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!res.ok) {
      let msg = res.status + " " + res.statusText;
      try { msg = (await res.json()).error.message; } catch (e) {}
      throw new Error(msg);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const c of chunk.choices || []) {
            if (c.delta && c.delta.content) { answer += c.delta.content; span.textContent = answer; }
          }
          if (chunk.usage) out.title = chunk.usage.prompt_tokens + " prompt + " + chunk.usage.completion_tokens + " completion tokens";
        }
      }
    }
    history.push({ role: "assistant", content: answer });
  } catch (e) {
    out.classList.add("error");
    span.textContent = "Error: " + e.message;
    history.pop();
  } finally {
    out.dataset.done = "1";
    $("send").disabled = false;
  }
}
$("send").addEventListener("click", send);
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); send(); } });

function mib(b) { return (b / 1048576).toFixed(b < 10485760 ? 1 : 0) + " MiB"; }
function bar(used, planned) {
  const pct = planned > 0 ? Math.min(100, 100 * used / planned) : 0;
  return '<div class="bar' + (planned > 0 && used > planned ? " over" : "") + '" title="' + mib(used) + " / " + mib(planned) +
         '"><span style="width:' + pct.toFixed(1) + '%"></span></div>';
}
function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

async function refresh() {
  try {
    const res = await fetch("/v1/status", { headers: headers() });
    const s = await res.json();
    if (!res.ok) throw new Error(s.error ? s.error.message : res.statusText);
    $("summary").innerHTML = "<span>state <b>" + esc(s.state) + "</b></span><span>stages <b>" + s.stages +
      "</b></span><span>queue <b>" + s.queue_depth + "</b></span><span>in flight <b>" + s.in_flight +
      "</b></span><span>completed <b>" + s.completed + "</b></span><span>failed <b>" + s.failed +
      "</b></span><span>data plane <b>" + esc(s.data_plane || "-") + "</b></span><span>TTFT p50 <b>" +
      (s.ttft_p50_ms || 0).toFixed(0) + " ms</b></span>";
    const rows = (s.workers || []).slice().sort((a, b) => a.stage - b.stage).map((w) => {
      const cats = ["weights", "kv", "activations"].map((c) =>
        '<div class="cat"><span class="muted">' + c + "</span>" +
        bar((w.used_by_category || {})[c] || 0, (w.planned_by_category || {})[c] || 0) + "</div>").join("");
      return '<tr class="stage" data-stage="' + w.stage + '"><td>' + w.stage + "<br><span class=muted>" + esc(w.state) +
        "</span></td><td>" + esc(w.host) + "<br>" + esc(w.device) + "</td><td>" + esc(w.blocks) + "</td><td>" + cats +
        '</td><td>' + (w.step_p50_ms || 0).toFixed(2) + " ms<br><span class=muted>" + (w.steps || 0) + " steps</span></td></tr>";
    });
    $("stages").innerHTML = rows.join("");
  } catch (e) {
    $("summary").textContent = "status: " + e.message;
  }
}
async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: headers() });
    const m = await res.json();
    if (res.ok) { modelId = m.data[0].id; $("model").textContent = "model: " + modelId + " (context " + m.data[0].max_model_len + ")"; }
    else $("model").textContent = m.error.message;
  } catch (e) {}
}
keyBox.addEventListener("change", () => { loadModel(); refresh(); });
loadModel(); refresh(); setInterval(refresh, 2000);
</script>
</body>
</html>
)HTML";
  return kPage;
}

}  // namespace xcpipe::http

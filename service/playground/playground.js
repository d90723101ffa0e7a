// rnnserve playground: a plain ES module, no dependencies, no build step.
// Talks to the native API only: GET /v1/models, POST /v1/models/{m}/generate (SSE over fetch),
// /v1/sessions (create, feed, reset, delete) for the live sentiment box.

const $ = (id) => document.getElementById(id);

// -- errors ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

function errorFrom(status, data, text) {
  const e = data && data.error;
  if (e) return new ApiError(status, e.code, e.message, e.field);
  const msg = (text || "").trim().slice(0, 200) || "request failed";
  return new ApiError(status, status ? `http_${status}` : "error", msg);
}

function showError(err, where) {
  const code = err instanceof ApiError ? err.code : err.name || "error";
  const status = err instanceof ApiError && err.status ? ` (${err.status})` : "";
  const field = err instanceof ApiError && err.field ? ` — field “${err.field}”` : "";
  $("error-code").textContent = `${where ? where + ": " : ""}${code}${status}`;
  $("error-message").textContent = `${err.message}${field}`;
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

// -- HTTP --------------------------------------------------------------------------------------

function newKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works on plain http too
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// API keys (docs/reliability.md): on a 401 the page asks for a key once and keeps it in this
// tab's sessionStorage; every API call then sends it as a Bearer token.
function withKey(headers = {}) {
  const key = sessionStorage.getItem("rnnserve-key");
  return key ? { ...headers, authorization: `Bearer ${key}` } : headers;
}

async function authFetch(path, init) {
  let r = await fetch(path, { ...init, headers: withKey(init.headers) });
  if (r.status === 401) {
    const key = window.prompt("This server needs an API key:");
    if (key && key.trim()) {
      sessionStorage.setItem("rnnserve-key", key.trim());
      r = await fetch(path, { ...init, headers: withKey(init.headers) });
    }
  }
  return r;
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await authFetch(path, init);
  } catch (e) {
    throw new ApiError(0, "network_error", `cannot reach the server (${e.message})`);
  }
  if (r.status === 204) return null;
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) throw errorFrom(r.status, data, text);
  return data;
}

// Server-sent events from a fetch body: yields [event, data] per message.
async function* sse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield [event, data.join("\n")];
    }
  }
}

// -- models ------------------------------------------------------------------------------------

let models = [];

function fillSelect(select, list, empty) {
  select.replaceChildren();
  for (const m of list) select.add(new Option(`${m.name} (${m.cell})`, m.name));
  if (!list.length) select.add(new Option(empty, ""));
  select.disabled = !list.length;
}

async function loadModels() {
  const data = await api("GET", "/v1/models");
  models = data.models;
  const lms = models.filter((m) => m.task === "next_token");
  const cls = models.filter((m) => m.task === "classify");
  fillSelect($("gen-model"), lms, "no language model loaded");
  fillSelect($("sent-model"), cls, "no classifier loaded");
  $("sent-model").value = await shortTextClassifier(cls);
  $("generate").disabled = !lms.length;
  $("sent-text").disabled = !cls.length;
  const providers = [...new Set(models.map((m) => m.provider))].join(", ");
  $("server-status").textContent =
    `${models.length} model${models.length === 1 ? "" : "s"} loaded · ${providers || "no provider"}`;
  onGenModel();
}

const modelByName = (name) => models.find((m) => m.name === name);

// People type a sentence or two into the live box: default to the classifier trained on the
// shortest texts (its manifest's training `data.max_len`; e.g. sentiment-sst2 over the IMDB
// models). The list has no training details, so each classifier's own entry is read.
async function shortTextClassifier(cls) {
  if (cls.length < 2) return cls.length ? cls[0].name : "";
  const details = await Promise.all(
    cls.map((m) => api("GET", `/v1/models/${encodeURIComponent(m.name)}`).catch(() => null)),
  );
  const maxLen = (d) => d?.training?.config?.data?.max_len ?? Infinity;
  let best = 0;
  details.forEach((d, i) => {
    if (maxLen(d) < maxLen(details[best])) best = i;
  });
  return cls[best].name;
}

function onGenModel() {
  const m = modelByName($("gen-model").value);
  if (!m) return;
  $("gen-model-info").textContent =
    `${m.cell.toUpperCase()} · ${m.num_layers} layer${m.num_layers === 1 ? "" : "s"} × ` +
    `${m.hidden_size} units · ${m.tokenizer} vocabulary of ${m.vocab_size} · version ${m.version}`;
  // the model's own sampling defaults (its manifest), every one of them, on every change
  const s = m.sampling || {};
  if (s.temperature != null) $("temperature").value = s.temperature;
  if (s.top_p != null) $("top_p").value = s.top_p;
  $("top_k").value = s.top_k ?? 0;
  if (s.max_tokens != null) $("max_tokens").value = s.max_tokens;
  updateOutputs();
}

function updateOutputs() {
  $("temperature-out").textContent = Number($("temperature").value).toFixed(2);
  $("top_p-out").textContent = Number($("top_p").value).toFixed(2);
}

// -- generation --------------------------------------------------------------------------------

let genAbort = null;
const genText = () => $("gen-text").firstChild || $("gen-text").appendChild(document.createTextNode(""));

function setGenerating(on) {
  $("generate").disabled = on;
  $("stop").disabled = !on;
  $("caret").hidden = !on;
  document.body.dataset.gen = on ? "streaming" : "idle";
}

// Seeds are integers up to 2^63 - 1 and a JavaScript number is exact only below 2^53, so the
// page carries a seed as its digits, both ways: the box's digits go into the request text as
// they are, and the seed of the `done` event is read from the event's text (JSON.parse's source
// access; where a browser lacks it, the number, exact for every seed the server draws).
function genRequest() {
  const body = {
    prompt: $("prompt").value,
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
    stream: true,
  };
  const topK = Number($("top_k").value);
  if (topK > 0) body.top_k = topK;
  let json = JSON.stringify(body);
  const seed = $("seed").value.trim();
  if (seed !== "") {
    // not digits: sent as the string it is, for the server to refuse naming the field
    const value = /^[0-9]+$/.test(seed) ? seed.replace(/^0+(?=[0-9])/, "") : JSON.stringify(seed);
    json = `${json.slice(0, -1)},"seed":${value}}`;
  }
  return { body, json };
}

const exactSeed = (key, value, context) =>
  key === "seed" && context && typeof context.source === "string" ? context.source : value;

function tokensPerSecond(n, since, end) {
  const secs = (end - since) / 1000;
  return secs > 0 ? `${(n / secs).toFixed(0)} tok/s` : "… tok/s";
}

async function generate() {
  if (genAbort) return;
  clearError();
  const model = $("gen-model").value;
  const { body, json } = genRequest();
  genAbort = new AbortController();
  setGenerating(true);
  $("gen-prompt").textContent = body.prompt;
  genText().data = "";
  const out = $("gen-output");
  const status = $("gen-status");
  status.textContent = "waiting for the first token…";
  const t0 = performance.now();
  let first = null;
  let n = 0;
  let pending = "";
  let frame = 0;
  const flush = () => {
    frame = 0;
    const stick = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    genText().appendData(pending);
    pending = "";
    if (stick) out.scrollTop = out.scrollHeight;
    status.textContent = `${n} tokens · ${tokensPerSecond(n, first ?? t0, performance.now())}`;
  };
  try {
    let r;
    try {
      r = await authFetch(`/v1/models/${encodeURIComponent(model)}/generate`, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "text/event-stream" },
        body: json,
        signal: genAbort.signal,
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, "network_error", `cannot reach the server (${e.message})`);
    }
    if (!r.ok) {
      const text = await r.text();
      let data = null;
      try { data = JSON.parse(text); } catch { data = null; }
      throw errorFrom(r.status, data, text);
    }
    let done = null;
    for await (const [event, data] of sse(r.body)) {
      if (data === "[DONE]") break;
      const payload = JSON.parse(data, exactSeed);
      if (event === "token") {
        n += 1;
        first ??= performance.now();
        pending += payload.text;
        if (!frame) frame = requestAnimationFrame(flush);
      } else if (event === "done") {
        done = payload;
      } else if (event === "error") {
        throw errorFrom(null, payload, data);
      }
    }
    const end = performance.now(); // the whole request: the rate counts the wait for the first token
    if (frame) cancelAnimationFrame(frame);
    flush();
    if (!done) throw new ApiError(0, "stream_interrupted", "the stream ended without a result");
    const ttft = first ? `${(first - t0).toFixed(0)} ms to first token · ` : "";
    const why = done.finish_reason === "stop" ? `stop “${done.stop}”` : done.finish_reason;
    status.textContent =
      `${n} tokens · ${tokensPerSecond(n, t0, end)} · ${ttft}finished: ${why} · seed ${done.seed}`;
    $("seed").placeholder = `random (last: ${done.seed})`;
  } catch (e) {
    if (frame) cancelAnimationFrame(frame);
    if (pending) flush();
    if (e.name === "AbortError") {
      status.textContent = `stopped after ${n} tokens (the server cancelled the generation)`;
    } else {
      status.textContent = "failed";
      showError(e, "generate");
    }
  } finally {
    genAbort = null;
    setGenerating(false);
  }
}

function stop() {
  // aborting the fetch closes the connection; the server notices and drops the stream
  if (genAbort) genAbort.abort();
}

// -- live sentiment ----------------------------------------------------------------------------
// Invariant: `sent.fed` is exactly the text the session's state has consumed (null: unknown).
// A change that extends `fed` feeds only the new characters; any other edit resets the session
// (same id, version + 1) and re-feeds the whole text. Updates are serialized: while a request is
// in flight further keystrokes only mark the box dirty, and the loop catches up afterwards.

const sent = { model: null, sid: null, version: null, fed: "", busy: false };
const GONE = new Set(["session_not_found", "session_expired", "session_evicted"]);

function showSession() {
  $("sent-session").textContent = sent.sid ?? "—";
  $("sent-session").title = sent.sid ?? "";
  $("sent-version").textContent = sent.version ?? "—";
  $("sent-fed").textContent = sent.fed === null ? "?" : String(sent.fed.length);
}

function renderVerdict(output, pendingChars) {
  const label = $("sent-label");
  const bars = $("sent-bars");
  label.className = "label-chip";
  if (!output || !output.probs) {
    label.textContent = "—";
    $("sent-prob").textContent = pendingChars ? "(waiting for a complete word)" : "start typing";
    bars.replaceChildren();
    return;
  }
  label.textContent = output.label;
  label.classList.add(output.label);
  $("sent-prob").textContent = `p = ${output.probs[output.label].toFixed(3)}`;
  const m = modelByName(sent.model);
  const names = (m && m.labels) || Object.keys(output.probs);
  bars.replaceChildren(
    ...names.map((name) => {
      const p = output.probs[name] ?? 0;
      const row = document.createElement("div");
      row.className = `bar ${name}`;
      const tag = document.createElement("span");
      tag.textContent = name;
      const track = document.createElement("div");
      track.className = "track";
      track.setAttribute("role", "meter");
      track.setAttribute("aria-label", `probability of ${name}`);
      track.setAttribute("aria-valuemin", "0");
      track.setAttribute("aria-valuemax", "1");
      track.setAttribute("aria-valuenow", p.toFixed(3));
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      track.append(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = `${(100 * p).toFixed(1)}%`;
      row.append(tag, track, pct);
      return row;
    }),
  );
}

async function ensureSession() {
  if (sent.sid) return;
  const info = await api("POST", "/v1/sessions", { model: sent.model });
  Object.assign(sent, { sid: info.session_id, version: info.version, fed: "" });
  showSession();
}

async function feed(chunk) {
  const out = await api(
    "POST",
    `/v1/sessions/${encodeURIComponent(sent.sid)}/feed`,
    { text: chunk, expected_version: sent.version },
    { "Idempotency-Key": newKey() },
  );
  sent.version = out.version;
  sent.fed += chunk;
  $("sent-chunk").textContent = JSON.stringify(chunk.length > 24 ? chunk.slice(0, 23) + "…" : chunk);
  renderVerdict(out.output, out.pending_chars);
  showSession();
}

async function step(text) {
  await ensureSession();
  if (sent.fed !== null && text.startsWith(sent.fed)) {
    if (text.length > sent.fed.length) await feed(text.slice(sent.fed.length));
    return;
  }
  // not an append (a deletion, or an edit in the middle): start over on the same session
  const info = await api(
    "POST",
    `/v1/sessions/${encodeURIComponent(sent.sid)}/reset`,
    { expected_version: sent.version },
    { "Idempotency-Key": newKey() },
  );
  Object.assign(sent, { version: info.version, fed: "" });
  showSession();
  $("sent-note").textContent =
    `Edit was not an append: session reset (version ${info.version}) and ${text.length} characters re-fed.`;
  if (text) await feed(text);
  else renderVerdict(null, 0);
}

async function syncSentiment() {
  if (sent.busy || !sent.model) return;
  // a note tells what the previous update did (a reset, a new session): typing moves on from it
  $("sent-note").textContent = "";
  sent.busy = true;
  document.body.dataset.sentiment = "busy";
  let recoveries = 0;
  try {
    while (sent.fed !== $("sent-text").value) {
      try {
        await step($("sent-text").value);
        clearErrorIf("sentiment");
      } catch (e) {
        if (!(e instanceof ApiError) || recoveries >= 2) throw e;
        recoveries += 1;
        if (GONE.has(e.code)) {
          // expired or evicted: a fresh session, re-fed with everything
          $("sent-note").textContent = `Session ${e.code.replace("session_", "")}: starting a new one.`;
          Object.assign(sent, { sid: null, version: null, fed: "" });
        } else if (e.code === "version_conflict") {
          // someone else moved it on: learn its version, then reset and re-feed
          const info = await api("GET", `/v1/sessions/${encodeURIComponent(sent.sid)}`);
          Object.assign(sent, { version: info.version, fed: null });
        } else {
          throw e;
        }
      }
    }
  } catch (e) {
    showError(e, "sentiment");
  } finally {
    sent.busy = false;
    document.body.dataset.sentiment = "idle";
  }
}

function clearErrorIf(where) {
  if (!$("error").hidden && $("error-code").textContent.startsWith(where)) clearError();
}

function dropSession(keepalive = false) {
  if (!sent.sid) return;
  const init = { method: "DELETE", keepalive, headers: withKey() };
  fetch(`/v1/sessions/${encodeURIComponent(sent.sid)}`, init).catch(() => {});
  Object.assign(sent, { sid: null, version: null, fed: "" });
}

function onSentModel() {
  dropSession();
  sent.model = $("sent-model").value || null;
  $("sent-note").textContent = "";
  renderVerdict(null, 0);
  showSession();
  syncSentiment();
}

// -- wiring ------------------------------------------------------------------------------------

function main() {
  document.body.dataset.gen = "idle";
  document.body.dataset.sentiment = "idle";
  $("error-close").addEventListener("click", clearError);
  $("gen-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    generate();
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
      ev.preventDefault();
      generate();
    }
  });
  $("stop").addEventListener("click", stop);
  $("gen-model").addEventListener("change", onGenModel);
  $("temperature").addEventListener("input", updateOutputs);
  $("top_p").addEventListener("input", updateOutputs);
  $("sent-model").addEventListener("change", onSentModel);
  $("sent-text").addEventListener("input", syncSentiment);
  window.addEventListener("pagehide", () => dropSession(true));
  updateOutputs();
  loadModels()
    .then(() => {
      sent.model = $("sent-model").value || null;
      document.body.dataset.ready = "true";
    })
    .catch((e) => {
      $("server-status").textContent = "server unreachable";
      showError(e, "models");
    });
}

main();

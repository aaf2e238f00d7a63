// The console's own script. Pages are complete without it; it adds what only a script can:
// times in the reader's zone, an upload with a progress bar, a run's curves kept current, a
// streaming chat playground, and the in-browser verification of an audit record. It calls the
// same API as any client, with the session's cookie and, for changes, its CSRF token.
"use strict";

const csrfToken = () => document.querySelector('meta[name="csrf-token"]')?.content ?? "";

// Times are sent as RFC 3339 in UTC; shown here in the reader's own time zone.
function localTimes() {
  for (const element of document.querySelectorAll("time[datetime]")) {
    const when = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      element.textContent = when.toLocaleString();
      element.title = element.getAttribute("datetime");
    }
  }
}

// A dataset's upload: the file goes to the API's ingest as the request body, with progress.
function upload(form) {
  const status = form.querySelector("#upload-status");
  const progress = form.querySelector("#upload-progress");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const file = form.querySelector("#upload-file").files[0];
    if (!file) {
      status.textContent = "Choose a file first.";
      return;
    }
    const query = new URLSearchParams({ format: form.elements.format.value, dedup: form.elements.dedup.value });
    if (form.elements.text_column.value.trim()) query.set("text_column", form.elements.text_column.value.trim());
    const request = new XMLHttpRequest();
    request.open("POST", `${form.dataset.url}?${query}`);
    request.setRequestHeader("content-type", "application/octet-stream");
    request.setRequestHeader("x-csrf-token", csrfToken());
    request.upload.addEventListener("progress", (progressEvent) => {
      if (progressEvent.lengthComputable) {
        progress.value = Math.round((100 * progressEvent.loaded) / progressEvent.total);
        status.textContent = `Sent ${progressEvent.loaded} of ${progressEvent.total} bytes…`;
      }
    });
    request.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = {};
      }
      if (request.status === 201) {
        progress.value = 100;
        const page = `/console/datasets/${encodeURIComponent(form.dataset.dataset)}/versions/${body.version}`;
        status.innerHTML = "";
        status.append(`Version ${body.version}: ${body.rows} rows ingested. `);
        const link = document.createElement("a");
        link.href = page;
        link.textContent = "Open it";
        status.append(link);
      } else {
        status.textContent = `Refused (${request.status}): ${body.error?.message ?? request.statusText}`;
      }
    });
    request.addEventListener("error", () => {
      status.textContent = "The upload failed: the connection was lost.";
    });
    status.textContent = "Uploading…";
    request.send(file);
  });
}

const SVG = "http://www.w3.org/2000/svg";

// Draws series (each a list of [x, y]) into an SVG: the first as a line, the rest as dots.
function drawCurve(svg, series) {
  const [width, height, pad] = [480, 220, 36];
  svg.replaceChildren();
  const points = series.flat();
  if (points.length === 0) return;
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) [y0, y1] = [y0 - 1, y1 + 1];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - y0) / (y1 - y0)) * (height - 2 * pad);
  const axis = document.createElementNS(SVG, "path");
  axis.setAttribute("d", `M${pad},${pad / 2}V${height - pad}H${width - pad / 2}`);
  axis.setAttribute("class", "axis");
  svg.append(axis);
  for (const [text, x, y, anchor] of [
    [y1.toPrecision(3), pad - 4, pad, "end"],
    [y0.toPrecision(3), pad - 4, height - pad, "end"],
    [`step ${x0}`, pad, height - pad + 16, "start"],
    [`${x1}`, width - pad, height - pad + 16, "end"],
  ]) {
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", x);
    label.setAttribute("y", y);
    label.setAttribute("text-anchor", anchor);
    label.textContent = text;
    svg.append(label);
  }
  series.forEach((points, index) => {
    if (index === 0 && points.length > 0) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" "));
      svg.append(line);
    } else {
      for (const [x, y] of points) {
        const dot = document.createElementNS(SVG, "circle");
        dot.setAttribute("cx", sx(x).toFixed(1));
        dot.setAttribute("cy", sy(y).toFixed(1));
        dot.setAttribute("r", 3);
        svg.append(dot);
      }
    }
  });
}

// A run's curves: metrics are fetched after the last step seen, every second, until it ends.
function runCurves(root) {
  const series = { loss: [], validation_loss: [], learning_rate: [], tokens_per_second: [] };
  let after = -1;
  const show = (name, value) => {
    const element = root.querySelector(`[data-latest="${name}"]`);
    if (element && value !== undefined) element.textContent = typeof value === "number" ? value.toPrecision(4) : value;
  };
  const poll = async () => {
    let body;
    try {
      const response = await fetch(`${root.dataset.metrics}?after=${after}&limit=1000`, { credentials: "same-origin" });
      if (!response.ok) return;
      body = await response.json();
    } catch {
      setTimeout(poll, 3000);
      return;
    }
    const log = document.getElementById("run-log");
    for (const row of body.metrics) {
      const fields = Object.entries(row.metrics)
        .map(([name, value]) => `${name}=${typeof value === "number" ? Number(value.toPrecision(5)) : value}`)
        .join(" ");
      log?.append(`${new Date(row.created_at).toISOString()} ${row.kind} step ${row.step} ${fields}\n`);
      for (const name of Object.keys(series)) {
        if (typeof row.metrics[name] === "number") series[name].push([row.step, row.metrics[name]]);
      }
      after = Math.max(after, row.step);
    }
    const last = (name) => series[name].at(-1)?.[1];
    show("step", after >= 0 ? String(after) : "—");
    for (const name of Object.keys(series)) show(name, last(name));
    show("points", `${series.loss.length} training and ${series.validation_loss.length} validation points`);
    for (const svg of root.querySelectorAll("svg[data-curve]")) {
      drawCurve(svg, svg.dataset.curve.split(" ").map((name) => series[name]));
    }
    const state = document.getElementById("job-state");
    if (state) state.textContent = body.state;
    const finished = ["succeeded", "failed", "cancelled"].includes(body.state);
    if (!finished || body.metrics.length === 1000) setTimeout(poll, 1000);
  };
  poll();
}

// The chat playground: one message to the deployment through the OpenAI-compatible API,
// streamed as server-sent events and shown as it arrives.
function playground(form) {
  const answer = document.getElementById("playground-answer");
  const stats = document.getElementById("playground-stats");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    answer.textContent = "";
    stats.textContent = "waiting…";
    const started = performance.now();
    let firstToken = null;
    let chunks = 0;
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json", "x-csrf-token": csrfToken() },
      body: JSON.stringify({
        model: form.dataset.model,
        messages: [{ role: "user", content: form.elements.prompt.value }],
        max_tokens: Number(form.elements.max_tokens.value),
        stream: true,
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      stats.textContent = `refused (${response.status}): ${body.error?.message ?? response.statusText}`;
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += value;
      const lines = pending.split("\n");
      pending = lines.pop();
      for (const line of lines) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const delta = JSON.parse(line.slice(6)).choices?.[0]?.delta?.content;
        if (delta) {
          firstToken ??= performance.now() - started;
          chunks += 1;
          answer.textContent += delta;
        }
      }
    }
    const total = performance.now() - started;
    stats.textContent = `${chunks} chunks, first after ${Math.round(firstToken ?? total)} ms, all in ${Math.round(total)} ms`;
    answer.dataset.done = "true";
  });
}

// --- Audit verification, with this browser's own SHA-256 and Ed25519 (WebCrypto) ---

const bytesOf = (text) => new TextEncoder().encode(text);
const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
const toBase64 = (bytes) => btoa(String.fromCharCode(...bytes));
const concat = (...parts) => {
  const joined = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    joined.set(part, at);
    at += part.length;
  }
  return joined;
};
const sha256 = async (bytes) => new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

// RFC 9162 section 2.1.3.2: the root a leaf's inclusion proof leads to.
async function rootFromProof(leaf, index, size, proof) {
  let [fn, sn] = [BigInt(index), BigInt(size) - 1n];
  let node = leaf;
  for (const sibling of proof) {
    if (sn === 0n) throw new Error("the proof is longer than the tree is deep");
    if ((fn & 1n) === 1n || fn === sn) {
      node = await sha256(concat([1], sibling, node));
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      node = await sha256(concat([1], node, sibling));
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error("the proof is shorter than the tree is deep");
  return node;
}

// A signed note's verifier key: NAME+HEXID+base64(0x01 || 32-byte Ed25519 key).
async function readVerifierKey(text) {
  // The base64 part may itself hold "+": split at the first two only.
  const [name, hexId, ...rest] = text.trim().split("+");
  const encoded = rest.join("+");
  const blob = fromBase64(encoded ?? "");
  if (!name || !hexId || blob.length !== 33 || blob[0] !== 1) throw new Error("not a signed-note Ed25519 verifier key");
  const id = await sha256(concat(bytesOf(`${name}\n`), blob));
  const expected = Array.from(id.slice(0, 4), (b) => b.toString(16).padStart(2, "0")).join("");
  if (expected !== hexId.toLowerCase()) throw new Error("the key's id does not match the key");
  const key = await crypto.subtle.importKey("raw", blob.slice(1), { name: "Ed25519" }, false, ["verify"]);
  return { name, id: id.slice(0, 4), key };
}

// Checks the note's signature by `verifier` and returns its text's lines.
async function openNote(note, verifier) {
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new Error("the checkpoint has no signature block");
  const text = note.slice(0, split + 1);
  for (const line of note.slice(split + 2).split("\n")) {
    if (!line.startsWith("\u2014 ")) continue;
    const [name, encoded] = line.slice(2).split(" ");
    const blob = fromBase64(encoded);
    if (name !== verifier.name || !equal(blob.slice(0, 4), verifier.id)) continue;
    const good = await crypto.subtle.verify({ name: "Ed25519" }, verifier.key, blob.slice(4), bytesOf(text));
    if (!good) throw new Error(`the signature by ${name} does not verify`);
    return text.split("\n");
  }
  throw new Error("the checkpoint carries no signature by this key");
}

function auditVerify(section) {
  const steps = document.getElementById("verify-steps");
  const result = document.getElementById("verify-result");
  const step = (text) => {
    const item = document.createElement("li");
    item.textContent = text;
    steps.append(item);
  };
  document.getElementById("verify-button").addEventListener("click", async () => {
    steps.replaceChildren();
    result.textContent = "";
    result.className = "";
    try {
      if (!window.crypto?.subtle) throw new Error("this browser offers WebCrypto only over HTTPS or on localhost");
      const record = document.getElementById("verify-record").value;
      const leaf = await sha256(concat([0], bytesOf(record)));
      step(`Leaf hash of the record: ${toBase64(leaf)}`);
      if (toBase64(leaf) !== section.dataset.leaf) step("(the server's leaf hash differs: the record shown is not the one logged)");
      const proof = section.dataset.proof.split(" ").filter(Boolean).map(fromBase64);
      const root = await rootFromProof(leaf, section.dataset.index, section.dataset.size, proof);
      step(`Root from ${proof.length} proof hashes: ${toBase64(root)}`);
      const verifier = await readVerifierKey(document.getElementById("verify-key").value);
      const lines = await openNote(document.getElementById("verify-checkpoint").value, verifier);
      step(`The checkpoint's Ed25519 signature by ${verifier.name} verifies`);
      const [origin, size, signedRoot] = lines;
      if (size !== section.dataset.size) throw new Error(`the checkpoint is for ${size} records, the proof for ${section.dataset.size}`);
      if (signedRoot !== toBase64(root)) throw new Error("the root the proof leads to is not the root the checkpoint signs");
      step(`The signed root of ${origin} at ${size} records is the root the proof leads to`);
      result.textContent = `Verified: record ${section.dataset.index} is in the log ${origin} of ${size} records, as signed.`;
      result.className = "verified";
    } catch (error) {
      result.textContent = `Not verified: ${error.message}`;
      result.className = "problem";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  const form = document.getElementById("upload");
  if (form) upload(form);
  const curves = document.getElementById("run-curves");
  if (curves) runCurves(curves);
  const chat = document.getElementById("playground");
  if (chat) playground(chat);
  const verify = document.getElementById("verify");
  if (verify) auditVerify(verify);
});

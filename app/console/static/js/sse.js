// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, and the key must never be in
// a URL. Reconnects after a dropped connection with `Last-Event-ID`, so the server sends only what was missed.

import { authHeaders, ApiError } from "./api.js";

// Split a text buffer into complete SSE messages; returns [messages, rest].
export function parseSSE(buffer) {
  const messages = [];
  const blocks = buffer.replace(/\r\n?/g, "\n").split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    const msg = { event: "message", data: [], id: null };
    let any = false;
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;  // a comment: heartbeats
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      any = true;
      if (field === "event") msg.event = value;
      else if (field === "data") msg.data.push(value);
      else if (field === "id") msg.id = value;
    }
    if (any) messages.push({ event: msg.event, id: msg.id, data: msg.data.join("\n") });
  }
  return [messages, rest];
}

// Follow `path` until an `end` message or `signal` aborts. onMessage({event, id, data}) gets parsed JSON data.
export async function follow(path, onMessage, { signal, onState = () => {}, retryMs = 1000 } = {}) {
  let lastId = null;
  let delay = retryMs;
  while (!signal?.aborted) {
    try {
      const headers = authHeaders({ Accept: "text/event-stream" });
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers, signal, cache: "no-store" });
      if (!response.ok) {
        let body = {};
        try { body = await response.json(); } catch { /* not JSON */ }
        // 4xx other than 429 will not get better by retrying
        if (response.status >= 400 && response.status < 500 && response.status !== 429) {
          throw new ApiError(response.status, body.detail || response.statusText, body);
        }
        throw new Error(`stream answered ${response.status}`);
      }
      onState("live");
      delay = retryMs;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        const [messages, rest] = parseSSE(buffer);
        buffer = rest;
        for (const m of messages) {
          if (m.id) lastId = m.id;
          let data = null;
          try { data = m.data ? JSON.parse(m.data) : null; } catch { data = m.data; }
          onMessage({ event: m.event, id: m.id, data });
          if (m.event === "end") { onState("ended"); return; }
        }
      }
    } catch (err) {
      if (signal?.aborted) return;
      if (err instanceof ApiError) { onState("error", err); throw err; }
    }
    onState("reconnecting");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

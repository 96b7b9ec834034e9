// Every call to the REST API: the key from sessionStorage as `Authorization: Bearer` (never in a URL), and
// problem+json errors turned into ApiError with the server's `detail`.

const KEY = "finetune.key";

export function getKey() { return sessionStorage.getItem(KEY); }
export function setKey(key) { sessionStorage.setItem(KEY, key); }
export function clearKey() { sessionStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, detail, body) {
    super(detail || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

export function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function problem(response) {
  let body = {};
  try { body = await response.json(); } catch { /* not JSON */ }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("console:unauthorized"));
  return new ApiError(response.status, body.detail || response.statusText, body);
}

export async function api(path, { method = "GET", json, body, signal, headers = {} } = {}) {
  const init = { method, signal, headers: authHeaders(headers), cache: "no-store" };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await problem(response);
  if (response.status === 204) return null;
  return response.json();
}

// A path with query parameters (never the key).
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

// Every page of a cursor-paged listing.
export async function allPages(path, params = {}, { signal, max = 100 } = {}) {
  const items = [];
  let cursor;
  for (let i = 0; i < max; i++) {
    const page = await api(withQuery(path, { ...params, cursor }), { signal });
    items.push(...page.items);
    if (!page.next_cursor) break;
    cursor = page.next_cursor;
  }
  return items;
}

// A multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    const key = getKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) { onProgress(1); resolve(xhr.response); return; }
      const body = xhr.response || {};
      if (xhr.status === 401) window.dispatchEvent(new CustomEvent("console:unauthorized"));
      reject(new ApiError(xhr.status, body.detail || `HTTP ${xhr.status}`, body));
    };
    xhr.onerror = () => reject(new ApiError(0, "The upload failed: the server could not be reached."));
    xhr.send(form);
  });
}

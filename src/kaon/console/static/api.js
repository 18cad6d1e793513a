// The console's only way to the control plane: the REST API under /api/v1, with the
// signed-in token as a Bearer header, so it sees exactly what the CLI with that token sees.
// The token lives in sessionStorage: it is gone when the tab closes.

const KEY = "kaon.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function signIn(value) {
  sessionStorage.setItem(KEY, value.trim());
}

export function signOut() {
  sessionStorage.removeItem(KEY);
  window.dispatchEvent(new Event("kaon-signed-out"));
}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

function headers(extra) {
  return { Authorization: `Bearer ${token()}`, ...extra };
}

async function failure(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) {
    /* not JSON: keep the status text */
  }
  if (response.status === 401) signOut();
  return new ApiError(response.status, detail);
}

// GET or POST a JSON route; answers { data, headers }.
export async function call(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  const data = response.status === 204 ? null : await response.json();
  return { data, headers: response.headers };
}

export async function get(path, signal) {
  return (await call(path, { signal })).data;
}

export function ws(workspace) {
  return `/api/v1/workspaces/${encodeURIComponent(workspace)}`;
}

// Follow a worker's log: the API streams it (chunked text) until the job ends.
// `onText` gets each piece as it arrives; answers the byte offset reached.
export async function followLog(path, offset, onText, signal) {
  const response = await fetch(`${path}&offset=${offset}&follow=true`, { headers: headers(), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    offset += value.byteLength;
    onText(decoder.decode(value, { stream: true }));
  }
  return offset;
}

// Secrets and the audit log. Secrets show names, versions and who changed them when: their
// values never leave the control plane (the API has no route that answers one to a person).
import { useState } from "preact/hooks";
import { ApiError, get, ws } from "./api.js";
import { ErrorLine, Loading, ago, html, usePoll } from "./ui.js";

export function Secrets({ workspace }) {
  const { data, error } = usePoll((signal) => get(`${ws(workspace)}/secrets`, signal), [workspace]);
  if (!data) return html`<section><h1>Secrets</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  return html`<section>
    <h1>Secrets <small>${workspace}</small></h1>
    <p class="muted">Values are never shown, here or anywhere: set one with <code>kaon secret set NAME</code>; a job reads it from its environment (<code>env: {VAR: {secret: NAME}}</code>).</p>
    <${ErrorLine} error=${error} />
    <table class="grid" data-testid="secrets"><thead><tr><th>name</th><th>version</th><th>created by</th><th>created</th><th>last set by</th><th>last set</th></tr></thead>
      <tbody>${data.map((s) => html`<tr><td class="mono">${s.name}</td><td>${s.version}</td><td>${s.created_by}</td><td title=${s.created_at}>${ago(s.created_at)}</td><td>${s.updated_by}</td><td title=${s.updated_at}>${ago(s.updated_at)}</td></tr>`)}
      ${data.length === 0 && html`<tr><td colspan="6" class="muted">no secrets in ${workspace}</td></tr>`}</tbody>
    </table>
  </section>`;
}

const OUTCOMES = ["", "ok", "denied", "failed", "error"];
const AUDIT_LIMIT = 500;

// The chain's state: only an admin may walk it (it spans every workspace).
function Verify() {
  const [round, setRound] = useState(0);
  const { data, error } = usePoll(
    async (signal) => {
      try {
        return await get("/api/v1/audit/verify", signal);
      } catch (e) {
        if (e instanceof ApiError && e.status === 403) return { forbidden: true };
        throw e;
      }
    },
    [round],
    60_000,
  );
  const again = html`<button class="small" onClick=${() => setRound(round + 1)}>verify again</button>`;
  if (error) return html`<${ErrorLine} error=${error} />`;
  if (!data) return html`<p class="verify unknown" data-testid="verify">verifying the chain…</p>`;
  if (data.forbidden) return html`<p class="verify unknown" data-testid="verify">Only an admin may verify the chain (it spans every workspace): <code>kaon audit verify</code>.</p>`;
  if (data.ok) return html`<p class="verify ok" data-testid="verify">Chain verified: ${data.checked} records, none edited, removed or reordered. ${again}</p>`;
  return html`<p class="verify bad" data-testid="verify">Chain broken at record ${data.first_bad_seq}: ${data.problem} (${data.checked} checked). ${again}</p>`;
}

export function Audit({ me }) {
  const [workspace, setWorkspace] = useState("");
  const [outcome, setOutcome] = useState("");
  const [text, setText] = useState("");
  const query = new URLSearchParams({ limit: AUDIT_LIMIT });
  if (workspace) query.set("workspace", workspace);
  const { data, error } = usePoll((signal) => get(`/api/v1/audit?${query}`, signal), [workspace]);
  const needle = text.trim().toLowerCase();
  const shown = (data || [])
    .filter((r) => !outcome || r.outcome === outcome)
    .filter((r) => !needle || [r.action, r.resource, r.token_name, r.principal, r.source].some((v) => v && v.toLowerCase().includes(needle)))
    .reverse();
  return html`<section>
    <h1>Audit log</h1>
    <p class="muted">${me.role === "admin" ? "Every workspace's records (an admin token)." : "The records of your workspaces."} Newest first, the last ${AUDIT_LIMIT}.</p>
    <${Verify} />
    <div class="filters">
      <label>workspace <select data-testid="audit-workspace" value=${workspace} onChange=${(e) => setWorkspace(e.target.value)}>
        <option value="">${me.role === "admin" ? "all" : "all of mine"}</option>
        ${me.workspaces.map((w) => html`<option value=${w}>${w}</option>`)}
      </select></label>
      <label>outcome <select data-testid="audit-outcome" value=${outcome} onChange=${(e) => setOutcome(e.target.value)}>
        ${OUTCOMES.map((o) => html`<option value=${o}>${o || "any"}</option>`)}
      </select></label>
      <label>search <input data-testid="audit-search" placeholder="action, resource, token" value=${text} onInput=${(e) => setText(e.target.value)} /></label>
    </div>
    <${ErrorLine} error=${error} />
    ${!data ? html`<${Loading} />` : html`<table class="grid" data-testid="audit"><thead><tr><th>#</th><th>when</th><th>who</th><th>workspace</th><th>action</th><th>resource</th><th>outcome</th><th>from</th></tr></thead>
      <tbody>${shown.map((r) => html`<tr data-testid="audit-record"><td>${r.seq}</td><td class="mono" title=${r.time}>${ago(r.time)}</td><td>${r.token_name || r.principal || ""}</td><td>${r.workspace || ""}</td><td class="mono">${r.action}</td><td class="mono wrap">${r.resource || ""}</td><td><span class=${`badge state-${r.outcome === "ok" ? "ready" : "failed"}`}>${r.outcome} ${r.status}</span></td><td class="muted">${r.source || ""}</td></tr>`)}
      ${shown.length === 0 && html`<tr><td colspan="8" class="muted">no records match</td></tr>`}</tbody>
    </table>`}
  </section>`;
}

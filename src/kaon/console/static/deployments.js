// Deployments: the list, and a deployment's page: its replicas, its traffic and scaling as
// the gateways reported them, and a form to try one of its handlers.
import { useState } from "preact/hooks";
import { call, get, ws } from "./api.js";
import { jobPath } from "./jobs.js";
import { Badge, Chart, ErrorLine, Loading, ago, html, usePoll } from "./ui.js";

const TIMELINE_MS = 2000;

export function Deployments({ workspace }) {
  const { data, error } = usePoll((signal) => get(`${ws(workspace)}/deployments`, signal), [workspace]);
  if (!data) return html`<section><h1>Deployments</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  return html`<section>
    <h1>Deployments</h1>
    <${ErrorLine} error=${error} />
    <table class="grid" data-testid="deployments"><thead><tr><th>name</th><th>state</th><th>replicas ready / wanted</th><th>generation</th><th>message</th><th>updated</th></tr></thead>
      <tbody>${data.map((d) => html`<tr><td><a href=${`#/deployments/${encodeURIComponent(d.name)}?ws=${encodeURIComponent(workspace)}`}>${d.name}</a></td><td><${Badge} state=${d.status} /></td><td>${d.ready_replicas} / ${d.desired_replicas}</td><td>${d.generation}</td><td>${d.message}</td><td>${ago(d.updated_at)}</td></tr>`)}
      ${data.length === 0 && html`<tr><td colspan="6" class="muted">no deployments in ${workspace}</td></tr>`}</tbody>
    </table>
  </section>`;
}

const fixed = (v, digits = 1) => (v == null ? "–" : Number(v).toFixed(digits));

// The last minutes of traffic, one sample a second, and the autoscaler's decisions.
function Traffic({ workspace, name }) {
  const path = `${ws(workspace)}/deployments/${encodeURIComponent(name)}/timeline`;
  const { data, error } = usePoll((signal) => get(path, signal), [workspace, name], TIMELINE_MS);
  if (!data) return html`<${ErrorLine} error=${error} />`;
  const samples = data.samples;
  const last = samples[samples.length - 1];
  const end = last ? last.time : 0;
  const x = samples.map((s) => s.time - end);
  const peak = samples.reduce((m, s) => Math.max(m, s.requests_per_s), 0);
  const events = [...data.scaling].reverse();
  return html`<div data-testid="traffic">
    <${ErrorLine} error=${error} />
    <dl class="facts" data-testid="traffic-now" data-peak-rps=${peak}>
      <dt>requests</dt><dd>${fixed(last?.requests_per_s, 2)}/s <span class="muted">(peak ${fixed(peak, 2)}/s)</span></dd>
      <dt>latency p50 / p99</dt><dd>${fixed(last?.p50_ms)} / ${fixed(last?.p99_ms)} ms</dd>
      <dt>errors (5xx)</dt><dd>${fixed(last?.errors_per_s, 2)}/s</dd>
    </dl>
    ${samples.length === 0
      ? html`<p class="muted">No traffic reported yet. The gateways report every second; the control plane keeps the last ${Math.round(data.window_s / 60)} minutes in memory.</p>`
      : html`<div class="charts">
          <${Chart} title="requests and errors per second" xLabel="seconds" x=${x}
            series=${[{ label: "requests/s", values: samples.map((s) => s.requests_per_s) }, { label: "errors/s", values: samples.map((s) => s.errors_per_s) }]} />
          <${Chart} title="latency (ms, in the gateway)" xLabel="seconds" x=${x}
            series=${[{ label: "p50", values: samples.map((s) => s.p50_ms) }, { label: "p99", values: samples.map((s) => s.p99_ms) }]} />
        </div>`}
    <h2>Scaling</h2>
    <table class="grid" data-testid="scaling"><thead><tr><th>when</th><th>replicas</th><th>why</th></tr></thead>
      <tbody>${events.map((e) => html`<tr data-testid="scaling-event"><td>${ago(new Date(e.time * 1000).toISOString())}</td><td>${e.replicas_before} → ${e.replicas_after}</td><td>${e.reason}</td></tr>`)}
      ${events.length === 0 && html`<tr><td colspan="3" class="muted">no scaling since the control plane started</td></tr>`}</tbody>
    </table>
  </div>`;
}

// Call a handler through the gateway (the control plane forwards it with this tab's token,
// or a deployment token pasted here) and show what came back.
function TryIt({ workspace, name }) {
  const [handler, setHandler] = useState("predict");
  const [body, setBody] = useState('{"x": [1, 2, 3]}');
  const [token, setToken] = useState("");
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const send = async (e) => {
    e.preventDefault();
    let parsed;
    try {
      parsed = body.trim() ? JSON.parse(body) : null;
    } catch (err) {
      setError(new Error(`the body is not JSON: ${err.message}`));
      return;
    }
    setBusy(true);
    setError(null);
    try {
      const path = `${ws(workspace)}/deployments/${encodeURIComponent(name)}/try`;
      setResult((await call(path, { method: "POST", body: { handler, body: parsed, token: token || null } })).data);
    } catch (err) {
      setResult(null);
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const ok = result && result.status < 400;
  let reply = result?.body ?? "";
  if (result?.content_type?.includes("json")) {
    try {
      reply = JSON.stringify(JSON.parse(reply), null, 2);
    } catch (_) {
      /* not whole JSON (cut, or a stream): show it as it came */
    }
  }
  return html`<form class="try" onSubmit=${send} data-testid="try">
    <div class="try-row">
      <label>handler <input data-testid="try-handler" value=${handler} onInput=${(e) => setHandler(e.target.value)} /></label>
      <label class="grow">deployment token <input type="password" autocomplete="off" data-testid="try-token" placeholder="optional: this tab's token otherwise" value=${token} onInput=${(e) => setToken(e.target.value)} /></label>
      <button type="submit" data-testid="try-send" disabled=${busy}>${busy ? "calling…" : "Send"}</button>
    </div>
    <textarea data-testid="try-body" rows="4" spellcheck="false" value=${body} onInput=${(e) => setBody(e.target.value)}></textarea>
    <${ErrorLine} error=${error} />
    ${result && html`<div class="try-result">
      <p><span class=${`badge ${ok ? "state-ready" : "state-failed"}`} data-testid="try-status">${result.status}</span>
        <span data-testid="try-latency">${fixed(result.latency_ms)} ms</span>
        <span class="muted">${result.content_type || ""}${result.truncated ? " (cut at 64 KiB)" : ""}</span></p>
      <pre class="log" data-testid="try-reply">${reply}</pre>
    </div>`}
  </form>`;
}

export function DeploymentPage({ workspace, name }) {
  const { data: d, error } = usePoll((signal) => get(`${ws(workspace)}/deployments/${encodeURIComponent(name)}`, signal), [workspace, name]);
  if (!d) return html`<section><${ErrorLine} error=${error} /><${Loading} /></section>`;
  return html`<section>
    <header class="page-head"><h1>${d.name}</h1><${Badge} state=${d.status} /></header>
    <${ErrorLine} error=${error} />
    ${d.message && html`<p class="message">${d.message}</p>`}
    <dl class="facts">
      <dt>replicas</dt><dd>${d.ready_replicas} ready of ${d.desired_replicas} wanted</dd>
      <dt>generation</dt><dd>${d.generation}</dd>
      <dt>created</dt><dd>${ago(d.created_at)}</dd>
    </dl>
    <h2>Try it</h2>
    <${TryIt} workspace=${workspace} name=${d.name} />
    <h2>Traffic</h2>
    <${Traffic} workspace=${workspace} name=${d.name} />
    <h2>Replicas</h2>
    <table class="grid" data-testid="replicas"><thead><tr><th>job</th><th>generation</th><th>state</th><th>address</th><th>why / message</th><th>since</th></tr></thead>
      <tbody>${d.replicas.map((r) => html`<tr><td><a class="mono" href=${jobPath(workspace, r.job_id)}>${r.job_id}</a></td><td>${r.generation}</td><td><${Badge} state=${r.state} /></td><td class="mono">${r.url || ""}</td><td>${r.waiting_reason || r.message}</td><td>${ago(r.created_at)}</td></tr>`)}</tbody>
    </table>
    ${d.hidden_replicas > 0 && html`<p class="muted">${d.hidden_replicas} older ended replicas not shown</p>`}
    <h2>Call it</h2>
    <p class="muted">Clients call a deployment through the gateway, with a deployment token (<code>kaon deploy token ${d.name}</code>):</p>
    <pre class="spec">curl -H "Authorization: Bearer $TOKEN" -d '{"x": [1, 2]}' $KAON_GATEWAY/${workspace}/${d.name}/predict</pre>
    <h2>Spec</h2>
    <pre class="spec">${JSON.stringify(d.spec, null, 2)}</pre>
  </section>`;
}

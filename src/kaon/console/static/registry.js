// Artifacts (versioned files a workspace keeps) and the model registry (models, their
// versions, each an artifact, and the aliases that name one). Read-only: the CLI and SDK
// push and promote.
import { get, ws } from "./api.js";
import { jobPath } from "./jobs.js";
import { ErrorLine, Loading, ago, bytes, html, usePoll } from "./ui.js";

const enc = encodeURIComponent;
const artifactPath = (workspace, ref) => `#/artifacts/${enc(ref)}?ws=${enc(workspace)}`;
const modelPath = (workspace, name) => `#/models/${enc(name)}?ws=${enc(workspace)}`;
const short = (sha) => (sha ? sha.slice(0, 12) : "");

function Source({ workspace, job }) {
  return job ? html`<a class="mono" href=${jobPath(workspace, job)}>${job}</a>` : html`<span class="muted">uploaded</span>`;
}

export function Artifacts({ workspace }) {
  const { data, error } = usePoll((signal) => get(`${ws(workspace)}/artifacts`, signal), [workspace]);
  if (!data) return html`<section><h1>Artifacts</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  return html`<section>
    <h1>Artifacts <small>${workspace}</small></h1>
    <p class="muted">Versioned sets of files (checkpoints, datasets, models): <code>kaon artifact push NAME FOLDER</code>. A version never changes; its digest covers every file.</p>
    <${ErrorLine} error=${error} />
    <table class="grid" data-testid="artifacts"><thead><tr><th>artifact</th><th>kind</th><th>files</th><th>size</th><th>digest</th><th>from</th><th>by</th><th>created</th></tr></thead>
      <tbody>${data.map((a) => html`<tr><td><a class="mono" href=${artifactPath(workspace, `${a.name}:${a.version}`)}>${a.name}:${a.version}</a></td><td>${a.kind}</td><td>${a.file_count}</td><td>${bytes(a.size)}</td><td class="mono">${short(a.digest)}</td><td><${Source} workspace=${workspace} job=${a.source_job_id} /></td><td>${a.created_by}</td><td title=${a.created_at}>${ago(a.created_at)}</td></tr>`)}
      ${data.length === 0 && html`<tr><td colspan="8" class="muted">no artifacts in ${workspace}</td></tr>`}</tbody>
    </table>
  </section>`;
}

export function ArtifactPage({ workspace, artifact: ref }) {
  const { data: a, error } = usePoll((signal) => get(`${ws(workspace)}/artifacts/${enc(ref)}`, signal), [workspace, ref], 10_000);
  if (!a) return html`<section><${ErrorLine} error=${error} /><${Loading} /></section>`;
  return html`<section>
    <header class="page-head"><h1>${a.name}:${a.version}</h1><span class="badge">${a.kind}</span></header>
    <${ErrorLine} error=${error} />
    <dl class="facts">
      <dt>files</dt><dd>${a.file_count} (${bytes(a.size)})</dd>
      <dt>digest</dt><dd class="mono">${short(a.digest)}</dd>
      <dt>from</dt><dd><${Source} workspace=${workspace} job=${a.source_job_id} /></dd>
      <dt>created</dt><dd>${ago(a.created_at)} by ${a.created_by}</dd>
    </dl>
    <p class="muted">Fetch it with <code>kaon artifact get ${a.name}:${a.version} DIR</code>.</p>
    <h2>Files</h2>
    <table class="grid" data-testid="artifact-files"><thead><tr><th>path</th><th>size</th><th>sha256</th></tr></thead>
      <tbody>${(a.files || []).map((f) => html`<tr><td class="mono">${f.path}</td><td>${bytes(f.size)}</td><td class="mono">${short(f.sha256)}</td></tr>`)}</tbody>
    </table>
    ${Object.keys(a.metadata || {}).length > 0 && html`<h2>Metadata</h2><pre class="spec">${JSON.stringify(a.metadata, null, 2)}</pre>`}
  </section>`;
}

export function Models({ workspace }) {
  const { data, error } = usePoll((signal) => get(`${ws(workspace)}/models`, signal), [workspace]);
  if (!data) return html`<section><h1>Models</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  return html`<section>
    <h1>Models <small>${workspace}</small></h1>
    <p class="muted">Registered models: each version is an artifact; an alias (<code>production</code>, say) names one, and <code>kaon deploy create NAME --model MODEL:ALIAS</code> serves it.</p>
    <${ErrorLine} error=${error} />
    <table class="grid" data-testid="models"><thead><tr><th>model</th><th>latest version</th><th>aliases</th><th>description</th><th>created</th></tr></thead>
      <tbody>${data.map((m) => html`<tr><td><a href=${modelPath(workspace, m.name)}>${m.name}</a></td><td>${m.latest_version ?? ""}</td><td>${Object.entries(m.aliases).map(([alias, v]) => html`<span class="label">${alias} → ${v}</span>`)}</td><td>${m.description}</td><td title=${m.created_at}>${ago(m.created_at)}</td></tr>`)}
      ${data.length === 0 && html`<tr><td colspan="5" class="muted">no models in ${workspace}</td></tr>`}</tbody>
    </table>
  </section>`;
}

export function ModelPage({ workspace, name }) {
  const { data: m, error } = usePoll((signal) => get(`${ws(workspace)}/models/${enc(name)}`, signal), [workspace, name]);
  if (!m) return html`<section><${ErrorLine} error=${error} /><${Loading} /></section>`;
  return html`<section>
    <header class="page-head"><h1>${m.name}</h1></header>
    <${ErrorLine} error=${error} />
    ${m.description && html`<p class="message">${m.description}</p>`}
    <h2>Versions</h2>
    <table class="grid" data-testid="model-versions"><thead><tr><th>version</th><th>aliases</th><th>artifact</th><th>metrics</th><th>from</th><th>by</th><th>created</th></tr></thead>
      <tbody>${m.versions.map((v) => html`<tr><td>${v.version}</td><td>${v.aliases.map((a) => html`<span class="label">${a}</span>`)}</td><td><a class="mono" href=${artifactPath(workspace, v.artifact)}>${v.artifact}</a></td><td>${Object.entries(v.metrics).map(([k, x]) => html`<div>${k} ${Number(x).toPrecision(4)}</div>`)}</td><td><${Source} workspace=${workspace} job=${v.source_job_id} /></td><td>${v.created_by}</td><td title=${v.created_at}>${ago(v.created_at)}</td></tr>`)}
      ${m.versions.length === 0 && html`<tr><td colspan="7" class="muted">no versions</td></tr>`}</tbody>
    </table>
  </section>`;
}

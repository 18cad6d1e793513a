// The jobs list (server-side paging and a state filter) and one job's page.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { call, followLog, get, ws } from "./api.js";
import { Badge, Chart, ErrorLine, Loading, ago, duration, html, usePoll } from "./ui.js";

const STATES = ["queued", "starting", "running", "retrying", "preempted", "succeeded", "failed", "cancelled"];
const PAGE = 50;
const ACTIVE = new Set(["queued", "starting", "running", "retrying", "preempted"]);

export function jobPath(workspace, id) {
  return `#/jobs/${encodeURIComponent(id)}?ws=${encodeURIComponent(workspace)}`;
}

async function cancel(workspace, id) {
  await call(`${ws(workspace)}/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
}

export function JobsPage({ workspace, query }) {
  const state = query.get("status") || "";
  // The cursors of the pages before this one: Next pushes, Previous pops.
  const [cursors, setCursors] = useState([]);
  useEffect(() => setCursors([]), [workspace, state]);
  const cursor = cursors[cursors.length - 1];
  const { data, error } = usePoll(
    async (signal) => {
      const params = new URLSearchParams({ limit: PAGE });
      if (state) params.append("status", state);
      if (cursor) params.set("cursor", cursor);
      const r = await call(`${ws(workspace)}/jobs?${params}`, { signal });
      return { jobs: r.data, next: r.headers.get("X-Next-Cursor"), total: Number(r.headers.get("X-Total-Count")) };
    },
    [workspace, state, cursor],
  );
  const [actionError, setActionError] = useState(null);
  const filter = (value) => {
    location.hash = value ? `#/jobs?status=${value}` : "#/jobs";
  };
  return html`<section>
    <header class="page-head">
      <h1>Jobs</h1>
      <label>state
        <select data-testid="state-filter" value=${state} onChange=${(e) => filter(e.target.value)}>
          <option value="">any</option>
          ${STATES.map((s) => html`<option value=${s}>${s}</option>`)}
        </select>
      </label>
      ${data && html`<span class="muted" data-testid="total">${data.total} job${data.total === 1 ? "" : "s"}</span>`}
    </header>
    <${ErrorLine} error=${error || actionError} />
    ${!data ? html`<${Loading} />` : html`<table class="grid" data-testid="jobs">
      <thead><tr><th>job</th><th>name</th><th>state</th><th>why / message</th><th>workers</th><th>submitted</th><th>ran</th><th></th></tr></thead>
      <tbody>
        ${data.jobs.map((j) => html`<tr data-job=${j.id}>
          <td><a href=${jobPath(workspace, j.id)} class="mono">${j.id}</a></td>
          <td>${j.name || ""}</td>
          <td><${Badge} state=${j.status} /></td>
          <td class="why" data-testid="why">${j.waiting_reason || j.message}</td>
          <td>${j.spec.workers}</td>
          <td title=${j.submitted_at}>${ago(j.submitted_at)}</td>
          <td>${duration(j.started_at, j.finished_at)}</td>
          <td>${ACTIVE.has(j.status) && html`<button class="small" onClick=${() => cancel(workspace, j.id).catch(setActionError)}>cancel</button>`}</td>
        </tr>`)}
        ${data.jobs.length === 0 && html`<tr><td colspan="8" class="muted">no jobs${state ? ` in state ${state}` : ""}</td></tr>`}
      </tbody>
    </table>
    <nav class="pager">
      <button disabled=${cursors.length === 0} onClick=${() => setCursors(cursors.slice(0, -1))}>← newer</button>
      <span class="muted">page ${cursors.length + 1} of ${Math.max(1, Math.ceil(data.total / PAGE))}</span>
      <button data-testid="next-page" disabled=${!data.next} onClick=${() => setCursors([...cursors, data.next])}>older →</button>
    </nav>`}
  </section>`;
}

export function JobPage({ workspace, id }) {
  const base = `${ws(workspace)}/jobs/${encodeURIComponent(id)}`;
  const job = usePoll((signal) => get(base, signal), [base]);
  const metrics = usePoll((signal) => get(`${base}/metrics`, signal), [base], 2000);
  const usage = usePoll((signal) => get(`${base}/usage`, signal), [base], 2000);
  const [actionError, setActionError] = useState(null);
  const j = job.data;
  if (!j) return html`<section><${ErrorLine} error=${job.error} />${!job.error && html`<${Loading} />`}</section>`;
  const resubmit = async () => {
    try {
      const r = await call(`${ws(workspace)}/jobs`, { method: "POST", body: j.spec });
      location.hash = jobPath(workspace, r.data.id);
    } catch (e) {
      setActionError(e);
    }
  };
  return html`<section>
    <header class="page-head">
      <h1><span class="mono">${j.id}</span> ${j.name && html`<small>${j.name}</small>`}</h1>
      <${Badge} state=${j.status} />
      ${ACTIVE.has(j.status) && html`<button data-testid="cancel" onClick=${() => cancel(workspace, j.id).catch(setActionError)}>cancel</button>`}
      <button onClick=${resubmit}>resubmit</button>
    </header>
    <${ErrorLine} error=${job.error || actionError} />
    ${j.waiting_reason && html`<p class="waiting" data-testid="waiting-reason">waiting: ${j.waiting_reason}</p>`}
    ${j.message && html`<p class="message" data-testid="message">${j.message}</p>`}
    <dl class="facts">
      <dt>workspace</dt><dd>${j.workspace}</dd>
      <dt>submitted</dt><dd title=${j.submitted_at}>${ago(j.submitted_at)}</dd>
      <dt>ran</dt><dd>${duration(j.started_at, j.finished_at)}</dd>
      <dt>restarts</dt><dd>${j.restart_count}</dd>
      <dt>preemptions</dt><dd>${j.preemptions}</dd>
      <dt>lost GPU time</dt><dd>${Math.round(j.lost_gpu_seconds)} s</dd>
    </dl>
    <h2>Metrics</h2>
    <${Metrics} points=${metrics.data} />
    <h2>Resource usage</h2>
    <${Usage} usage=${usage.data} />
    <h2>Logs</h2>
    <${Logs} base=${base} workers=${j.spec.workers} />
    <h2>Workers (current attempt)</h2>
    <table class="grid"><thead><tr><th>worker</th><th>node</th><th>GPUs</th><th>pid</th><th>exit</th><th>reason</th></tr></thead>
      <tbody>${j.workers.map((w) => html`<tr><td>${w.index}</td><td>${w.node}</td><td>${w.gpus.join(", ")}</td><td>${w.pid ?? ""}</td><td>${w.exit_code ?? ""}</td><td>${w.reason ?? ""}</td></tr>`)}
      ${j.workers.length === 0 && html`<tr><td colspan="6" class="muted">not placed yet</td></tr>`}</tbody>
    </table>
    <h2>Spec</h2>
    <pre class="spec" data-testid="spec">${JSON.stringify(j.spec, null, 2)}</pre>
  </section>`;
}

// One chart per metric name; one line per worker; x is the step when reported, else time.
function Metrics({ points }) {
  const charts = useMemo(() => chartsOf(points || []), [points]);
  if (!points) return html`<${Loading} />`;
  if (charts.length === 0) return html`<p class="muted">no metrics reported yet (kaon.report)</p>`;
  return html`<div class="charts">${charts.map((c) => html`<${Chart} key=${c.title} ...${c} />`)}</div>`;
}

function chartsOf(points) {
  const byName = new Map();
  for (const p of points) {
    if (!byName.has(p.name)) byName.set(p.name, []);
    byName.get(p.name).push(p);
  }
  return [...byName].map(([name, ps]) => {
    const useStep = ps.every((p) => p.step != null);
    const t0 = Math.min(...ps.map((p) => p.time));
    const xOf = (p) => (useStep ? p.step : p.time - t0);
    const xs = [...new Set(ps.map(xOf))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const workers = [...new Set(ps.map((p) => p.worker))].sort((a, b) => a - b);
    const series = workers.map((w) => {
      const values = xs.map(() => null);
      for (const p of ps) if (p.worker === w) values[index.get(xOf(p))] = p.value;
      return { label: `worker ${w}`, values };
    });
    return { title: name, x: xs, series, xLabel: useStep ? "step" : "seconds" };
  });
}

// CPU and memory over time (and the GPUs' where NVML measured them), one line per worker,
// from the samples each worker's supervisor sends every few seconds.
// Each chart's y axis starts at zero, so a steady use reads as steady, not as noise.
const FROM_ZERO = (u, min, max) => [0, max > 0 ? max * 1.15 : 1];
const USAGE_CHARTS = [
  { title: "CPU (cores)", field: "cpu", scale: 1, yRange: FROM_ZERO },
  { title: "memory (GiB)", field: "rss_bytes", scale: 2 ** -30, yRange: FROM_ZERO },
  { title: "GPU utilisation (%)", field: "gpu_util", scale: 1, yRange: [0, 100] },
  { title: "GPU memory (GiB)", field: "gpu_mem_bytes", scale: 2 ** -30, yRange: FROM_ZERO },
];

function Usage({ usage }) {
  const charts = useMemo(() => usageCharts(usage ? usage.workers : []), [usage]);
  if (!usage) return html`<p class="muted">loading…</p>`;
  if (charts.length === 0) return html`<p class="muted" data-testid="no-usage">no usage sampled yet (workers send it every few seconds)</p>`;
  return html`<div class="charts" data-testid="usage">${charts.map((c) => html`<${Chart} key=${c.title} ...${c} />`)}</div>`;
}

function usageCharts(workers) {
  const samples = workers.flatMap((w) => w.series);
  if (samples.length === 0) return [];
  const t0 = Math.min(...samples.map((s) => s.time));
  const xs = [...new Set(samples.map((s) => s.time - t0))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  return USAGE_CHARTS.filter((c) => samples.some((s) => s[c.field] != null)).map((c) => ({
    title: c.title,
    yRange: c.yRange,
    x: xs,
    xLabel: "seconds",
    series: workers.map((w) => {
      const values = xs.map(() => null);
      for (const s of w.series) if (s[c.field] != null) values[index.get(s.time - t0)] = s[c.field] * c.scale;
      return { label: `worker ${w.worker}`, values };
    }),
  }));
}

// A worker's log, streamed as it is written, with a filter that keeps matching lines.
function Logs({ base, workers }) {
  const [worker, setWorker] = useState(0);
  const [text, setText] = useState("");
  const [search, setSearch] = useState("");
  const [error, setError] = useState(null);
  const pre = useRef(null);
  useEffect(() => {
    setText("");
    setError(null);
    const controller = new AbortController();
    let offset = 0;
    const run = async () => {
      // The stream ends with the job; it is opened again only if it broke.
      try {
        offset = await followLog(`${base}/logs?worker=${worker}`, offset, (t) => setText((s) => s + t), controller.signal);
      } catch (e) {
        if (e.name === "AbortError") return;
        setError(e);
        setTimeout(run, 2000);
      }
    };
    run();
    return () => controller.abort();
  }, [base, worker]);
  useEffect(() => {
    if (pre.current && !search) pre.current.scrollTop = pre.current.scrollHeight;
  }, [text]);
  const shown = search ? text.split("\n").filter((l) => l.includes(search)).join("\n") : text;
  return html`<div class="logs">
    <div class="log-tools">
      <label>worker
        <select data-testid="log-worker" value=${worker} onChange=${(e) => setWorker(Number(e.target.value))}>
          ${Array.from({ length: workers }, (_, i) => html`<option value=${i}>${i}</option>`)}
        </select>
      </label>
      <input type="search" placeholder="search the log" data-testid="log-search" value=${search} onInput=${(e) => setSearch(e.target.value)} />
    </div>
    <${ErrorLine} error=${error} />
    <pre class="log" ref=${pre} data-testid="log">${shown || html`<span class="muted">${search ? "no line matches" : "no output yet"}</span>`}</pre>
  </div>`;
}

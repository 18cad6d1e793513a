// Overview, nodes and quotas: each reads the API, as its token allows.
import { useState } from "preact/hooks";
import { call, get, ws } from "./api.js";
import { jobPath } from "./jobs.js";
import { Badge, Chart, ErrorLine, Loading, Meter, ago, bytes, html, usePoll } from "./ui.js";

const HOLDING = ["starting", "running", "retrying", "preempted"]; // states that hold resources
const WINDOWS = [["1 h", 3600], ["6 h", 6 * 3600], ["24 h", 24 * 3600]]; // history spans
const HISTORY_POLL_MS = 5000; // the server records a point every 15 s; no need for more

// What holds resources in each of the caller's workspaces, and how many jobs wait there.
async function workload(workspaces, signal) {
  const holding = new URLSearchParams({ limit: 1000 });
  HOLDING.forEach((s) => holding.append("status", s));
  return Promise.all(
    workspaces.map(async (name) => {
      const [running, queued] = await Promise.all([
        call(`${ws(name)}/jobs?${holding}`, { signal }),
        call(`${ws(name)}/jobs?status=queued&limit=1`, { signal }),
      ]);
      const jobs = running.data;
      const sum = (f) => jobs.reduce((n, j) => n + f(j.spec.resources) * j.spec.workers, 0);
      return {
        name,
        jobs,
        queued: Number(queued.headers.get("X-Total-Count")),
        cpu: sum((r) => r.cpu),
        memory: sum((r) => r.memory),
        gpus: sum((r) => r.gpus),
      };
    }),
  );
}

function capacity(nodes) {
  const ready = nodes.filter((n) => n.state === "ready");
  const add = (f) => ready.reduce((n, x) => n + f(x), 0);
  return {
    nodes: ready.length,
    cpu: add((n) => n.cpu),
    cpuUsed: add((n) => n.cpu_allocated),
    memory: add((n) => n.memory),
    memoryUsed: add((n) => n.memory_allocated),
    gpus: add((n) => n.gpus.length),
    gpusUsed: add((n) => n.gpus_allocated.length),
  };
}

// The pool over the last `windowS` seconds, as the control plane recorded it: pool-wide
// totals, and per workspace (the token's own only) its use, quota, borrowed and lent.
const history = (windowS, signal) => get(`/api/v1/history?window_s=${windowS}`, signal);

// What the history's memory is, in words: it starts again when the control plane does.
function Retention({ h }) {
  const since = new Date(h.since * 1000);
  return html`<p class="muted" data-testid="history-retention">The control plane keeps a point every ${h.interval_s} s for ${h.retention_s / 3600} h, in memory, since it last started (${since.toLocaleString()}): a restart forgets it.</p>`;
}

function PoolHistory() {
  const [windowS, setWindowS] = useState(3600);
  const { data: h, error } = usePoll((signal) => history(windowS, signal), [windowS], HISTORY_POLL_MS);
  if (!h) return html`<${ErrorLine} error=${error} /><${Loading} />`;
  const held = (f) => h.workspaces.map((w) => ({ label: w.workspace, values: f(w).used.map((v) => v ?? 0) }));
  const charts = [
    { title: "GPUs allocated", series: [{ label: "pool capacity", values: h.pool.gpus }, { label: "all workspaces", values: h.pool.gpus_allocated }, ...held((w) => w.gpus)] },
    { title: "CPUs allocated", series: [{ label: "pool capacity", values: h.pool.cpus }, { label: "all workspaces", values: h.pool.cpus_allocated }, ...held((w) => w.cpus)] },
    { title: "jobs", series: [{ label: "queued", values: h.pool.queued }, { label: "running", values: h.pool.running }] },
    {
      title: "GPU utilisation (%, measured)",
      yRange: [0, 100],
      series: [{ label: "allocated GPUs", values: h.pool.gpu_util }, ...h.workspaces.map((w) => ({ label: w.workspace, values: w.gpu_util }))],
    },
  ];
  const measured = h.pool.gpu_util.some((v) => v != null);
  return html`<div data-testid="history" data-points=${h.time.length}>
    <div class="filters">${WINDOWS.map(([label, s]) => html`<button class=${s === windowS ? "small active" : "small"} onClick=${() => setWindowS(s)}>${label}</button>`)}</div>
    <${ErrorLine} error=${error} />
    <${Retention} h=${h} />
    <div class="charts">${charts.map((c) => html`<${Chart} key=${c.title} time=${true} xLabel="time" x=${h.time} ...${c} />`)}</div>
    ${!measured && html`<p class="muted">No GPU utilisation measured in this span: it comes from NVML on the workers' nodes (GPUs only declared are not measured).</p>`}
  </div>`;
}

export function Overview({ me }) {
  const { data, error } = usePoll(
    async (signal) => {
      const [nodes, spaces] = await Promise.all([get("/api/v1/nodes", signal), workload(me.workspaces, signal)]);
      return { cap: capacity(nodes), spaces };
    },
    [me.workspaces.join(",")],
  );
  if (!data) return html`<section><h1>Overview</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  const { cap, spaces } = data;
  const running = spaces.flatMap((s) => s.jobs.map((j) => ({ ...j, ws: s.name })));
  return html`<section>
    <h1>Overview</h1>
    <${ErrorLine} error=${error} />
    <div class="cards">
      <div class="card"><h3>CPUs</h3><${Meter} used=${cap.cpuUsed} total=${cap.cpu} label=${`${cap.cpuUsed} of ${cap.cpu} allocated`} /></div>
      <div class="card"><h3>Memory</h3><${Meter} used=${cap.memoryUsed} total=${cap.memory} label=${`${bytes(cap.memoryUsed)} of ${bytes(cap.memory)}`} /></div>
      <div class="card"><h3>GPUs</h3><${Meter} used=${cap.gpusUsed} total=${cap.gpus} label=${`${cap.gpusUsed} of ${cap.gpus} allocated`} /></div>
      <div class="card"><h3>Nodes ready</h3><p class="big">${cap.nodes}</p></div>
      <div class="card"><h3>Queue</h3><p class="big" data-testid="queue-length">${spaces.reduce((n, s) => n + s.queued, 0)}</p><p class="muted">jobs waiting</p></div>
    </div>
    <h2>Allocation by workspace</h2>
    <table class="grid" data-testid="allocation"><thead><tr><th>workspace</th><th>running jobs</th><th>queued</th><th>CPUs</th><th>memory</th><th>GPUs</th></tr></thead>
      <tbody>${spaces.map((s) => html`<tr><td>${s.name}</td><td>${s.jobs.length}</td><td>${s.queued}</td><td>${s.cpu}</td><td>${bytes(s.memory)}</td><td>${s.gpus}</td></tr>`)}</tbody>
    </table>
    <h2>Over time</h2>
    <p class="muted">Pool-wide totals, and each of your workspaces' allocation (an admin sees every workspace).</p>
    <${PoolHistory} />
    <h2>Running now</h2>
    <table class="grid"><thead><tr><th>job</th><th>workspace</th><th>state</th><th>workers</th><th>started</th></tr></thead>
      <tbody>${running.map((j) => html`<tr><td><a class="mono" href=${jobPath(j.ws, j.id)}>${j.id}</a> ${j.name || ""}</td><td>${j.ws}</td><td><${Badge} state=${j.status} /></td><td>${j.spec.workers}</td><td>${ago(j.started_at)}</td></tr>`)}
      ${running.length === 0 && html`<tr><td colspan="5" class="muted">nothing runs</td></tr>`}</tbody>
    </table>
  </section>`;
}

// One GPU of a node: its model, who holds it (named only for the token's own workspaces)
// and its utilisation and memory as NVML last measured them ("not measured" otherwise).
function Gpu({ gpu, use }) {
  const held = use ? use.held : false;
  const holder = !held ? html`<span class="muted">free</span>`
    : use.job_id ? html`<a class="mono" href=${jobPath(use.workspace, use.job_id)}>${use.job_name || use.job_id}</a> worker ${use.worker}`
    : html`<span class="muted">in use</span>`;
  const measured = use && use.util !== null && use.util !== undefined;
  return html`<div class=${held ? "gpu busy" : "gpu"} data-testid="gpu">
    <div>${gpu.index}: ${gpu.model} ${bytes(gpu.memory)} · ${holder}</div>
    ${held && (measured
      ? html`<div data-testid="gpu-util"><${Meter} used=${use.util} total=${100} label=${`${Math.round(use.util)} %`} /></div>
        ${use.memory_used !== null && html`<div><${Meter} used=${use.memory_used} total=${use.memory_total} label=${`${bytes(use.memory_used)} / ${bytes(use.memory_total)}`} /></div>`}`
      : html`<div class="muted" data-testid="gpu-util">not measured</div>`)}
  </div>`;
}

export function Nodes({ me }) {
  const { data, error } = usePoll(async (signal) => {
    const [nodes, spaces] = await Promise.all([get("/api/v1/nodes", signal), workload(me.workspaces, signal)]);
    return { nodes, spaces };
  }, [me.workspaces.join(",")]);
  if (!data) return html`<section><h1>Nodes</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  // What runs on a node, as far as this token can see (its own workspaces' jobs).
  const on = (node) =>
    data.spaces.flatMap((s) => s.jobs.filter((j) => j.workers.some((w) => w.node === node.id || w.node === node.name)).map((j) => ({ ...j, ws: s.name })));
  return html`<section>
    <h1>Nodes</h1>
    <${ErrorLine} error=${error} />
    <table class="grid" data-testid="nodes"><thead><tr><th>node</th><th>pool</th><th>state</th><th>CPUs</th><th>memory</th><th>GPUs</th><th>labels</th><th>runs</th><th>heartbeat</th></tr></thead>
      <tbody>${data.nodes.map((n) => html`<tr>
        <td><b>${n.name}</b><div class="muted mono">${n.address}</div></td>
        <td>${n.executor}</td>
        <td><${Badge} state=${n.state} />${n.message && html`<div class="muted">${n.message}</div>`}</td>
        <td><${Meter} used=${n.cpu_allocated} total=${n.cpu} label=${`${n.cpu_allocated} / ${n.cpu}`} /></td>
        <td><${Meter} used=${n.memory_allocated} total=${n.memory} label=${`${bytes(n.memory_allocated)} / ${bytes(n.memory)}`} /></td>
        <td>${n.gpus.length === 0 ? html`<span class="muted">none</span>` : n.gpus.map((g) => html`<${Gpu} gpu=${g} use=${(n.gpu_use || []).find((u) => u.index === g.index)} />`)}</td>
        <td>${Object.entries(n.labels).map(([k, v]) => html`<span class="label">${k}=${v}</span>`)}</td>
        <td>${on(n).map((j) => html`<div><a class="mono" href=${jobPath(j.ws, j.id)}>${j.id}</a></div>`)}</td>
        <td>${ago(n.heartbeat_at)}</td>
      </tr>`)}</tbody>
    </table>
  </section>`;
}

// "2 GPUs, 3 CPUs, 1 GiB": the non-zero parts of a share's borrowed or lent amounts.
function amounts(w, key) {
  if (!w) return html`<span class="muted">none</span>`;
  const last = (r) => w[r][key][w[r][key].length - 1] ?? 0;
  const parts = [
    [last("gpus"), (v) => `${+v.toFixed(2)} GPUs`],
    [last("cpus"), (v) => `${+v.toFixed(2)} CPUs`],
    [last("memory"), (v) => bytes(v)],
  ].filter(([v]) => v > 0);
  return parts.length ? parts.map(([v, f]) => f(v)).join(", ") : html`<span class="muted">none</span>`;
}

// One workspace's share of one resource over time: quota, use, borrowed and lent.
function shareCharts(h) {
  const resources = [["gpus", "GPUs"], ["cpus", "CPUs"]];
  return h.workspaces.flatMap((w) =>
    resources
      .filter(([r]) => w[r].quota.some((v) => v != null))
      .map(([r, label]) => ({
        title: `${w.workspace}: ${label}`,
        series: ["quota", "used", "borrowed", "lent"].map((k) => ({ label: k, values: w[r][k].map((v) => (k === "quota" ? v : v ?? 0)) })),
      })),
  );
}

export function Quotas() {
  const { data, error } = usePoll(async (signal) => {
    const [quotas, h] = await Promise.all([get("/api/v1/quotas", signal), history(3600, signal)]);
    return { quotas, h };
  }, [], HISTORY_POLL_MS); // both together, so "used" and "borrowed" agree
  if (!data) return html`<section><h1>Quotas</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  const cell = (used, nominal, fmt = (x) => x) =>
    nominal == null ? html`${fmt(used)} <span class="muted">(no quota)</span>` : html`<${Meter} used=${used} total=${nominal} label=${`${fmt(used)} of ${fmt(nominal)}${used > nominal ? " (borrowing)" : ""}`} />`;
  const now = Object.fromEntries(data.h.workspaces.map((w) => [w.workspace, w]));
  const charts = shareCharts(data.h);
  return html`<section>
    <h1>Quotas</h1>
    <p class="muted">A workspace's share of the pool. Over its share it borrows idle capacity, which it gives back when the lender needs it (preemption). What is borrowed is lent by the workspaces under their share, each in proportion to its unused quota.</p>
    <${ErrorLine} error=${error} />
    <table class="grid" data-testid="quotas"><thead><tr><th>workspace</th><th>GPUs</th><th>CPUs</th><th>memory</th><th>borrowed now</th><th>lent now</th><th>may borrow (GPUs)</th></tr></thead>
      <tbody>${data.quotas.map((q) => html`<tr data-workspace=${q.workspace}><td>${q.workspace}</td><td>${cell(q.used.gpus, q.quota.gpus)}</td><td>${cell(q.used.cpus, q.quota.cpus)}</td><td>${cell(q.used.memory, q.quota.memory, bytes)}</td>
        <td data-testid="borrowed">${amounts(now[q.workspace], "borrowed")}</td><td data-testid="lent">${amounts(now[q.workspace], "lent")}</td><td>${q.quota.borrow_limit ?? "any"}</td></tr>`)}
      ${data.quotas.length === 0 && html`<tr><td colspan="7" class="muted">no quotas set: workspaces share the pool by priority</td></tr>`}</tbody>
    </table>
    ${charts.length > 0 && html`<h2>The last hour</h2>
      <${Retention} h=${data.h} />
      <div class="charts" data-testid="quota-history">${charts.map((c) => html`<${Chart} key=${c.title} time=${true} xLabel="time" x=${data.h.time} ...${c} />`)}</div>`}
  </section>`;
}

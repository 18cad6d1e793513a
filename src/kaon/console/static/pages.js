// Overview, nodes and quotas: each reads the API, as its token allows.
import { useRef } from "preact/hooks";
import { call, get, ws } from "./api.js";
import { jobPath } from "./jobs.js";
import { Badge, Chart, ErrorLine, Loading, Meter, ago, bytes, html, usePoll } from "./ui.js";

const HOLDING = ["starting", "running", "retrying", "preempted"]; // states that hold resources
const HISTORY = 120; // overview samples kept for its chart (about three minutes)

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

export function Overview({ me }) {
  const history = useRef({ t: [], cpu: [], gpus: [] });
  const { data, error } = usePoll(
    async (signal) => {
      const [nodes, spaces] = await Promise.all([get("/api/v1/nodes", signal), workload(me.workspaces, signal)]);
      const cap = capacity(nodes);
      const h = history.current;
      h.t.push(Date.now() / 1000);
      h.cpu.push(cap.cpu ? (100 * cap.cpuUsed) / cap.cpu : 0);
      h.gpus.push(cap.gpus ? (100 * cap.gpusUsed) / cap.gpus : null);
      for (const k of ["t", "cpu", "gpus"]) h[k] = h[k].slice(-HISTORY);
      return { cap, spaces, history: { ...h } };
    },
    [me.workspaces.join(",")],
  );
  if (!data) return html`<section><h1>Overview</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  const { cap, spaces } = data;
  const running = spaces.flatMap((s) => s.jobs.map((j) => ({ ...j, ws: s.name })));
  const t0 = data.history.t[0];
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
    <${Chart} title="pool allocated (%), since this page opened" xLabel="seconds" yRange=${[0, 100]} x=${data.history.t.map((t) => Math.round(t - t0))}
      series=${[{ label: "CPU", values: data.history.cpu }, { label: "GPU", values: data.history.gpus }]} />
    <h2>Running now</h2>
    <table class="grid"><thead><tr><th>job</th><th>workspace</th><th>state</th><th>workers</th><th>started</th></tr></thead>
      <tbody>${running.map((j) => html`<tr><td><a class="mono" href=${jobPath(j.ws, j.id)}>${j.id}</a> ${j.name || ""}</td><td>${j.ws}</td><td><${Badge} state=${j.status} /></td><td>${j.spec.workers}</td><td>${ago(j.started_at)}</td></tr>`)}
      ${running.length === 0 && html`<tr><td colspan="5" class="muted">nothing runs</td></tr>`}</tbody>
    </table>
  </section>`;
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
        <td>${n.gpus.length === 0 ? html`<span class="muted">none</span>` : n.gpus.map((g) => html`<div class=${n.gpus_allocated.includes(g.index) ? "gpu busy" : "gpu"}>${g.index}: ${g.model} ${bytes(g.memory)}${n.gpus_allocated.includes(g.index) ? " (allocated)" : ""}</div>`)}</td>
        <td>${Object.entries(n.labels).map(([k, v]) => html`<span class="label">${k}=${v}</span>`)}</td>
        <td>${on(n).map((j) => html`<div><a class="mono" href=${jobPath(j.ws, j.id)}>${j.id}</a></div>`)}</td>
        <td>${ago(n.heartbeat_at)}</td>
      </tr>`)}</tbody>
    </table>
  </section>`;
}

export function Quotas() {
  const { data, error } = usePoll((signal) => get("/api/v1/quotas", signal), []);
  if (!data) return html`<section><h1>Quotas</h1><${ErrorLine} error=${error} /><${Loading} /></section>`;
  const cell = (used, nominal, fmt = (x) => x) =>
    nominal == null ? html`${fmt(used)} <span class="muted">(no quota)</span>` : html`<${Meter} used=${used} total=${nominal} label=${`${fmt(used)} of ${fmt(nominal)}${used > nominal ? " (borrowing)" : ""}`} />`;
  return html`<section>
    <h1>Quotas</h1>
    <p class="muted">A workspace's share of the pool. Over its share it borrows idle capacity, which it gives back when the lender needs it (preemption).</p>
    <${ErrorLine} error=${error} />
    <table class="grid" data-testid="quotas"><thead><tr><th>workspace</th><th>GPUs</th><th>CPUs</th><th>memory</th><th>may borrow (GPUs)</th></tr></thead>
      <tbody>${data.map((q) => html`<tr><td>${q.workspace}</td><td>${cell(q.used.gpus, q.quota.gpus)}</td><td>${cell(q.used.cpus, q.quota.cpus)}</td><td>${cell(q.used.memory, q.quota.memory, bytes)}</td><td>${q.quota.borrow_limit ?? "any"}</td></tr>`)}
      ${data.length === 0 && html`<tr><td colspan="5" class="muted">no quotas set: workspaces share the pool by priority</td></tr>`}</tbody>
    </table>
  </section>`;
}

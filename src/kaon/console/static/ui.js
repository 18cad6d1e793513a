// Pieces every page shares: the html tag, polling, formatting, state badges, charts.
import { h } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import htm from "./vendor/htm.js";
import uPlot from "./vendor/uplot.js";

export const html = htm.bind(h);

// Pages refresh by polling the API (every POLL_MS), which keeps them live without a
// second protocol; logs alone stream, since they are a stream already.
export const POLL_MS = 1500;

// usePoll(load, deps): { data, error } refreshed every POLL_MS while the page is shown.
export function usePoll(load, deps, ms = POLL_MS) {
  const [state, setState] = useState({ data: null, error: null });
  useEffect(() => {
    let alive = true;
    let timer = null;
    const controller = new AbortController();
    const tick = async () => {
      try {
        const data = await load(controller.signal);
        if (alive) setState({ data, error: null });
      } catch (error) {
        if (alive && error.name !== "AbortError") setState((s) => ({ data: s.data, error }));
      }
      if (alive) timer = setTimeout(tick, ms);
    };
    setState({ data: null, error: null });
    tick();
    return () => {
      alive = false;
      clearTimeout(timer);
      controller.abort();
    };
  }, deps);
  return state;
}

export function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n >= 10 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

export function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export function duration(fromIso, toIso) {
  if (!fromIso) return "";
  const s = ((toIso ? Date.parse(toIso) : Date.now()) - Date.parse(fromIso)) / 1000;
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${Math.round((s % 3600) / 60)}m`;
}

export function Badge({ state }) {
  return html`<span class="badge state-${state}" data-testid="state">${state}</span>`;
}

export function Meter({ used, total, label }) {
  const pct = total > 0 ? Math.min(100, (100 * used) / total) : 0;
  return html`<div class="meter" title=${label}>
    <div class="meter-fill" style=${`width:${pct}%`}></div>
    <span class="meter-text">${label}</span>
  </div>`;
}

export function ErrorLine({ error }) {
  return error ? html`<p class="error" role="alert">${error.message}</p>` : null;
}

export function Loading() {
  return html`<p class="muted">loading…</p>`;
}

const PALETTE = ["#3b6fd8", "#d8743b", "#2e9e6a", "#a24bd0", "#c43d5a", "#6b7d2a"];

// A line chart of { x: number[], series: [{ label, values: (number|null)[] }] }; with
// `time`, x is unix seconds, shown as clock times.
export function Chart({ title, x, series, xLabel, yRange, time = false }) {
  const box = useRef(null);
  const plot = useRef(null);
  useEffect(() => {
    const width = Math.max(320, box.current.clientWidth || 600);
    const opts = {
      width,
      height: 220,
      scales: yRange ? { x: { time }, y: { range: yRange } } : { x: { time } },
      axes: [{ label: xLabel }, {}],
      series: [{ label: xLabel }, ...series.map((s, i) => ({ label: s.label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true }))],
    };
    plot.current = new uPlot(opts, [x, ...series.map((s) => s.values)], box.current);
    return () => plot.current.destroy();
  }, [series.length, xLabel]);
  useEffect(() => {
    plot.current.setData([x, ...series.map((s) => s.values)]);
  }, [x, series]);
  return html`<figure class="chart" data-testid="chart" data-metric=${title}>
    <figcaption>${title}</figcaption>
    <div ref=${box}></div>
  </figure>`;
}

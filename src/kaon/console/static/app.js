// The console's shell: sign-in, the navigation, the workspace picker and the page router.
// Pages are addressed by the URL's fragment (#/jobs?status=queued), so a link or a reload
// lands on the same page and the server only serves files.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, get, signIn, signOut, token } from "./api.js";
import { JobPage, JobsPage } from "./jobs.js";
import { Audit, Secrets } from "./data.js";
import { DeploymentPage, Deployments } from "./deployments.js";
import { Nodes, Overview, Quotas } from "./pages.js";
import { ArtifactPage, Artifacts, ModelPage, Models } from "./registry.js";
import { ErrorLine, Loading, html } from "./ui.js";

const NAV = [
  ["overview", "Overview"],
  ["nodes", "Nodes"],
  ["jobs", "Jobs"],
  ["deployments", "Deployments"],
  ["quotas", "Quotas"],
  ["artifacts", "Artifacts"],
  ["models", "Models"],
  ["secrets", "Secrets"],
  ["audit", "Audit log"],
];
const WS_KEY = "kaon.workspace";

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts: parts.length ? parts : ["overview"], query: new URLSearchParams(search) };
}

function useHash() {
  const [route, setRoute] = useState(parseHash());
  useEffect(() => {
    const onChange = () => setRoute(parseHash());
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return route;
}

function SignIn({ onDone, error }) {
  const [value, setValue] = useState("");
  const submit = (e) => {
    e.preventDefault();
    if (!value.trim()) return;
    signIn(value);
    onDone();
  };
  return html`<main class="signin">
    <form onSubmit=${submit}>
      <h1><span class="logo">K</span> Kaon</h1>
      <p>Sign in with an API token (<code>kaon up</code> prints the admin token; <code>kaon token create</code> makes more).</p>
      <input type="password" name="token" autocomplete="off" placeholder="kaon_…" data-testid="token" value=${value} onInput=${(e) => setValue(e.target.value)} />
      <button type="submit" data-testid="sign-in">Sign in</button>
      <${ErrorLine} error=${error} />
      <p class="muted">The token stays in this tab (sessionStorage) and is sent only to this control plane.</p>
    </form>
  </main>`;
}

function Page({ me, workspace, route }) {
  const [page, arg] = route.parts;
  const ws = route.query.get("ws") || workspace;
  switch (page) {
    case "overview":
      return html`<${Overview} me=${me} />`;
    case "nodes":
      return html`<${Nodes} me=${me} />`;
    case "jobs":
      return arg ? html`<${JobPage} key=${arg} workspace=${ws} id=${arg} />` : html`<${JobsPage} workspace=${workspace} query=${route.query} />`;
    case "deployments":
      return arg ? html`<${DeploymentPage} workspace=${ws} name=${arg} />` : html`<${Deployments} workspace=${workspace} />`;
    case "quotas":
      return html`<${Quotas} />`;
    case "artifacts":
      return arg ? html`<${ArtifactPage} key=${arg} workspace=${ws} artifact=${arg} />` : html`<${Artifacts} workspace=${workspace} />`;
    case "models":
      return arg ? html`<${ModelPage} key=${arg} workspace=${ws} name=${arg} />` : html`<${Models} workspace=${workspace} />`;
    case "secrets":
      return html`<${Secrets} workspace=${workspace} />`;
    case "audit":
      return html`<${Audit} me=${me} />`;
    default:
      return html`<p>No page ${page}. <a href="#/overview">Overview</a></p>`;
  }
}

function App() {
  const [signedIn, setSignedIn] = useState(Boolean(token()));
  const [me, setMe] = useState(null);
  const [error, setError] = useState(null);
  const [workspace, setWorkspace] = useState(sessionStorage.getItem(WS_KEY));
  const route = useHash();
  useEffect(() => {
    const out = () => {
      setSignedIn(false);
      setMe(null);
    };
    window.addEventListener("kaon-signed-out", out);
    return () => window.removeEventListener("kaon-signed-out", out);
  }, []);
  useEffect(() => {
    if (!signedIn) return;
    get("/api/v1/whoami")
      .then((who) => {
        setMe(who);
        setError(null);
        if (!who.workspaces.includes(workspace)) setWorkspace(who.workspaces[0] || null);
      })
      .catch((e) => setError(e instanceof ApiError && e.status === 401 ? new Error("that token is not valid here") : e));
  }, [signedIn]);
  useEffect(() => {
    if (workspace) sessionStorage.setItem(WS_KEY, workspace);
  }, [workspace]);
  if (!signedIn) return html`<${SignIn} error=${error} onDone=${() => setSignedIn(true)} />`;
  if (!me) return html`<main class="content">${error ? html`<${ErrorLine} error=${error} />` : html`<${Loading} />`}</main>`;
  const current = route.parts[0];
  return html`<div class="shell">
    <nav class="side">
      <div class="brand"><span class="logo">K</span> Kaon</div>
      ${NAV.map(([id, label]) => html`<a href=${`#/${id}`} class=${current === id ? "active" : ""} data-nav=${id}>${label}</a>`)}
      <div class="who">
        <label>workspace
          <select data-testid="workspace" value=${workspace} onChange=${(e) => setWorkspace(e.target.value)}>
            ${me.workspaces.map((w) => html`<option value=${w}>${w}</option>`)}
          </select>
        </label>
        <div class="muted" data-testid="whoami">${me.token} (${me.role})</div>
        <button class="link" data-testid="sign-out" onClick=${signOut}>sign out</button>
      </div>
    </nav>
    <main class="content">
      ${me.workspaces.length === 0 ? html`<p>This token belongs to no workspace.</p>` : html`<${Page} me=${me} workspace=${workspace} route=${route} />`}
    </main>
  </div>`;
}

render(html`<${App} />`, document.getElementById("app"));

// Pushbase console: a thin client of the HTTP API. Every value from the server is put in the page
// with textContent (never innerHTML), so data cannot inject markup.
"use strict";

const KEY_STORE = "pushbase.key";
const main = document.getElementById("main");

function key() { return localStorage.getItem(KEY_STORE) || ""; }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "on") { for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn); }
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function toast(message) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.style.display = "block";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.style.display = "none"; }, 4000);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status; this.body = body;
  }
}

// Bumped by every navigation: an answer that arrives after the page changed is dropped (StalePage),
// so a slow earlier page never draws over the one now shown.
let pageGeneration = 0;
class StalePage extends Error {}

async function api(method, path, body) {
  const generation = pageGeneration;
  const headers = { "x-api-key": key() };
  const options = { method, headers };
  if (body !== undefined) { headers["content-type"] = "application/json"; options.body = JSON.stringify(body); }
  const response = await fetch(path, options);
  const text = await response.text();
  if (generation !== pageGeneration) throw new StalePage(path);
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch (_) { parsed = { raw: text }; }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

function errorBox(error) {
  const details = error.body && error.body.error && error.body.error.details;
  return el("div", { class: "error", "data-testid": "error" }, error.message,
    details ? el("pre", {}, JSON.stringify(details, null, 2)) : null);
}

function display(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function rowsTable(rows, testid) {
  if (!rows.length) return el("p", { class: "muted", "data-testid": testid }, "No rows.");
  const names = Object.keys(rows[0]);
  return el("table", { "data-testid": testid },
    el("thead", {}, el("tr", {}, names.map((n) => el("th", {}, n)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, names.map((n) => el("td", {}, display(row[n])))))));
}

function copyBlock(text, testid) {
  const pre = el("pre", { "data-testid": testid }, text);
  const button = el("button", { class: "copy", on: { click: async () => {
    try { await navigator.clipboard.writeText(text); toast("Copied"); } catch (_) { toast("Select the text and copy it"); }
  } } }, "Copy");
  return el("div", {}, button, pre);
}

function jsonForm(label, placeholder, submitLabel, onSubmit, testid) {
  const area = el("textarea", { "data-testid": `${testid}-input`, placeholder, spellcheck: "false" });
  const out = el("div", {});
  const form = el("form", { class: "card", "data-testid": testid, on: { submit: async (event) => {
    event.preventDefault();
    out.replaceChildren();
    let body;
    try { body = JSON.parse(area.value); } catch (e) { out.append(el("div", { class: "error" }, `Not valid JSON: ${e.message}`)); return; }
    try { await onSubmit(body); } catch (e) { out.append(e instanceof ApiError ? errorBox(e) : el("div", { class: "error" }, String(e))); }
  } } }, el("h2", {}, label), area, el("div", { class: "row" }, el("button", { class: "primary", type: "submit" }, submitLabel)), out);
  return form;
}

// ---------------------------------------------------------------------------------------------
// Pages

async function home() {
  main.replaceChildren(el("h1", {}, "Pushbase"),
    el("p", {}, "Datasets take JSON pushed in; views select rows; pushes send a view's new rows out; tasks call other APIs."),
    key() ? el("p", { class: "ok" }, "A key is set.") : el("p", { class: "bad" }, "Enter your API key above to begin."));
}

async function datasetsPage() {
  const data = await api("GET", "/api/datasets");
  main.replaceChildren(el("h1", {}, "Datasets"),
    el("table", { "data-testid": "datasets" },
      el("thead", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "columns"), el("th", {}, "unique id"), el("th", {}, "rows"))),
      el("tbody", {}, data.datasets.map((d) => el("tr", {},
        el("td", {}, el("a", { href: `#/datasets/${encodeURIComponent(d.name)}` }, d.name)),
        el("td", {}, d.columns.map((c) => `${c.name} (${c.type})`).join(", ")),
        el("td", {}, d.unique_id.join(", ")), el("td", {}, d.row_count))))),
    jsonForm("Create a dataset", '{"name": "orders", "sample": {"order_id": 1, "total": 9.5}, "unique_id": ["order_id"]}', "Create",
      async (body) => { const made = await api("POST", "/api/datasets", body); location.hash = `#/datasets/${made.name}`; }, "create-dataset"));
}

function pushApiInstructions(dataset, base) {
  const url = `${base}/api/datasets/${dataset.name}`;
  const sample = {};
  for (const c of dataset.columns) {
    sample[c.name] = { string: "text", integer: 1, number: 1.5, boolean: true, date: "2024-01-31", datetime: "2024-01-31T12:00:00Z", json: [] }[c.type];
  }
  const blocks = [
    el("h2", {}, "Push API instructions"),
    el("p", { class: "muted" }, "Replace $KEY with a key that has the scope ingest:" + dataset.name + "."),
    el("h3", {}, "Post data"),
    copyBlock(`curl -s -X POST '${url}/data' -H "x-api-key: $KEY" -H 'content-type: application/json' \\\n  -d '${JSON.stringify([sample])}'`, "curl-post"),
    el("h3", {}, "Check a job's status"),
    copyBlock(`curl -s '${url}/data/JOB_ID/status' -H "x-api-key: $KEY"`, "curl-status"),
  ];
  if (dataset.unique_id.length) {
    const ids = {};
    for (const name of dataset.unique_id) ids[name] = sample[name];
    blocks.push(el("h3", {}, "Delete data"),
      copyBlock(`curl -s -X POST '${url}/data/delete' -H "x-api-key: $KEY" -H 'content-type: application/json' \\\n  -d '${JSON.stringify([ids])}'`, "curl-delete"));
  }
  if (dataset.row_count > 0) {
    blocks.push(el("h3", {}, "Delete all data"), copyBlock(`curl -s -X POST '${url}/data/delete-all' -H "x-api-key: $KEY"`, "curl-delete-all"));
  }
  return el("section", { class: "card", "data-testid": "push-api-instructions" }, blocks);
}

async function pagedRows(path, testid) {
  const holder = el("div", {});
  let after = null;
  const more = el("button", { "data-testid": `${testid}-more`, on: { click: () => load() } }, "More rows");
  async function load() {
    const query = new URLSearchParams({ limit: "100" });
    if (after) query.set("after", after);
    const page = await api("GET", `${path}?${query}`);
    holder.append(rowsTable(page.rows, testid));
    after = page.next;
    more.style.display = after ? "" : "none";
  }
  await load();
  return el("div", {}, holder, more);
}

async function datasetPage(name) {
  const dataset = await api("GET", `/api/datasets/${encodeURIComponent(name)}`);
  main.replaceChildren(el("h1", {}, `Dataset ${dataset.name}`),
    el("p", { "data-testid": "row-count" }, `${dataset.row_count} rows`),
    el("table", { "data-testid": "columns" }, el("tr", {}, el("th", {}, "column"), el("th", {}, "type"), el("th", {}, "unique id")),
      dataset.columns.map((c) => el("tr", {}, el("td", {}, c.name), el("td", {}, c.type), el("td", {}, dataset.unique_id.includes(c.name) ? "yes" : "")))),
    pushApiInstructions(dataset, location.origin),
    el("h2", {}, "Rows"), await pagedRows(`/api/datasets/${encodeURIComponent(name)}/rows`, "dataset-rows"));
}

async function viewsPage() {
  const data = await api("GET", "/api/views");
  main.replaceChildren(el("h1", {}, "Views"),
    el("table", { "data-testid": "views" }, el("tr", {}, el("th", {}, "name"), el("th", {}, "dataset"), el("th", {}, "filters")),
      data.views.map((v) => el("tr", {}, el("td", {}, el("a", { href: `#/views/${encodeURIComponent(v.name)}` }, v.name)),
        el("td", {}, v.dataset), el("td", {}, (v.filters || []).map((f) => `${f.field} ${f.op} ${f.value === undefined ? "" : JSON.stringify(f.value)}`).join("; "))))),
    jsonForm("Create a view", '{"name": "orders_to_push", "dataset": "orders", "filters": [{"field": "last pushed", "op": "is_empty"}]}', "Create",
      async (body) => { const made = await api("POST", "/api/views", body); location.hash = `#/views/${made.name}`; }, "create-view"));
}

async function viewPage(name) {
  const view = await api("GET", `/api/views/${encodeURIComponent(name)}`);
  let actions = { actions: [] };
  try { actions = await api("GET", `/api/views/${encodeURIComponent(name)}/actions`); } catch (_) { /* actions not available */ }
  const result = el("div", { "data-testid": "action-result" });
  main.replaceChildren(el("h1", {}, `View ${view.name}`),
    el("pre", { "data-testid": "view-definition" }, JSON.stringify(view, null, 2)),
    el("h2", {}, "Actions"),
    el("div", { class: "row" }, actions.actions.map((a) => el("button", { "data-testid": `action-${a.name}`, on: { click: async () => {
      result.replaceChildren(el("p", { class: "muted" }, "Running…"));
      try {
        const answer = await api("POST", `/api/views/${encodeURIComponent(name)}/actions/${encodeURIComponent(a.name)}/run`);
        result.replaceChildren(el("p", {}, `${a.label || a.name}: endpoint answered ${answer.status_code} for ${answer.rows} rows`), el("pre", {}, display(answer.response)));
      } catch (e) { result.replaceChildren(errorBox(e)); }
    } } }, a.label || a.name))),
    result,
    el("h2", {}, "Rows"), await pagedRows(`/api/views/${encodeURIComponent(name)}/rows`, "view-rows"));
}

async function pushesPage() {
  const data = await api("GET", "/api/pushes");
  main.replaceChildren(el("h1", {}, "Pushes"),
    el("table", { "data-testid": "pushes" }, el("tr", {}, el("th", {}, "name"), el("th", {}, "view"), el("th", {}, "url"), el("th", {}, "status"), el("th", {}, "last success")),
      data.pushes.map((p) => el("tr", {}, el("td", {}, el("a", { href: `#/pushes/${encodeURIComponent(p.name)}` }, p.name)), el("td", {}, p.view), el("td", {}, p.url),
        el("td", {}, p.state ? p.state.status : ""), el("td", {}, p.state ? display(p.state.last_success_at) : "")))),
    jsonForm("Create a push", '{"name": "to_erp", "view": "orders_to_push", "url": "https://erp.example/hook", "log_time_field": "last pushed", "format": "form", "min_interval": "5m"}', "Create",
      async (body) => { const made = await api("POST", "/api/pushes", body); location.hash = `#/pushes/${made.name}`; }, "create-push"));
}

async function pushPage(name) {
  const path = `/api/pushes/${encodeURIComponent(name)}`;
  const push = await api("GET", path);
  const deliveries = await api("GET", `${path}/deliveries`);
  const out = el("div", {});
  main.replaceChildren(el("h1", {}, `Push ${push.name}`),
    el("p", { "data-testid": "push-status" }, `Status: ${push.state.status} · last success: ${display(push.state.last_success_at) || "never"} · next due: ${display(push.state.next_due_at) || "—"} · consecutive failures: ${push.state.consecutive_failures}`),
    el("div", { class: "row" },
      el("button", { class: "primary", "data-testid": "push-run", on: { click: async () => {
        try { await api("POST", `${path}/run`); toast("Pushed"); route(); } catch (e) { out.replaceChildren(errorBox(e)); }
      } } }, "Push now"),
      el("button", { "data-testid": "push-toggle", on: { click: async () => {
        try { await api("PATCH", path, { enabled: !push.enabled }); route(); } catch (e) { out.replaceChildren(errorBox(e)); }
      } } }, push.enabled ? "Disable" : "Enable")),
    out,
    el("pre", {}, JSON.stringify(push, null, 2)),
    el("h2", {}, "Deliveries"),
    el("table", { "data-testid": "deliveries" }, el("tr", {}, el("th", {}, "id"), el("th", {}, "webhook-id"), el("th", {}, "rows"), el("th", {}, "status"), el("th", {}, "attempts")),
      deliveries.deliveries.map((d) => el("tr", {}, el("td", {}, d.id), el("td", {}, d.webhook_id), el("td", {}, d.rows), el("td", { class: d.status === "failed" ? "bad" : d.status === "succeeded" ? "ok" : "" }, d.status),
        el("td", {}, d.attempts.map((a) => `${a.at} → ${a.status_code || a.error} (${Math.round(a.duration_ms)} ms)`).join("\n"))))));
}

async function tasksPage() {
  const data = await api("GET", "/api/tasks");
  main.replaceChildren(el("h1", {}, "Tasks"),
    el("table", { "data-testid": "tasks" }, el("tr", {}, el("th", {}, "name"), el("th", {}, "steps"), el("th", {}, "schedule")),
      data.tasks.map((t) => el("tr", {}, el("td", {}, el("a", { href: `#/tasks/${encodeURIComponent(t.name)}` }, t.name)), el("td", {}, t.steps.map((s) => s.name).join(" → ")), el("td", {}, t.schedule || "")))),
    jsonForm("Create a task", '{"name": "sync_rates", "steps": [{"name": "fetch", "method": "GET", "url": "https://api.example/rates"}]}', "Create",
      async (body) => { const made = await api("POST", "/api/tasks", body); location.hash = `#/tasks/${made.name}`; }, "create-task"));
}

async function taskPage(name) {
  const path = `/api/tasks/${encodeURIComponent(name)}`;
  const task = await api("GET", path);
  const runs = await api("GET", `${path}/runs`);
  const result = el("div", { "data-testid": "task-result" });
  const params = el("textarea", { "data-testid": "task-params", spellcheck: "false" }, "{}");
  main.replaceChildren(el("h1", {}, `Task ${task.name}`),
    el("pre", {}, JSON.stringify(task, null, 2)),
    el("h2", {}, "Run now"), params,
    el("button", { class: "primary", "data-testid": "task-run", on: { click: async () => {
      result.replaceChildren(el("p", { class: "muted" }, "Running…"));
      try {
        const run = await api("POST", `${path}/run`, { params: JSON.parse(params.value || "{}") });
        result.replaceChildren(el("p", { class: run.status === "succeeded" ? "ok" : "bad" }, `Run ${run.status}`),
          el("table", {}, run.steps.map((s) => el("tr", {}, el("td", {}, s.name), el("td", {}, display(s.status)), el("td", {}, display(s.error || ""))))));
      } catch (e) { result.replaceChildren(e instanceof ApiError ? errorBox(e) : el("div", { class: "error" }, String(e))); }
    } } }, "Run"),
    result,
    el("h2", {}, "Runs"),
    el("table", { "data-testid": "task-runs" }, el("tr", {}, el("th", {}, "run"), el("th", {}, "status"), el("th", {}, "started"), el("th", {}, "steps")),
      runs.runs.map((r) => el("tr", {}, el("td", {}, r.run_id), el("td", {}, r.status), el("td", {}, display(r.started_at)), el("td", {}, (r.steps || []).map((s) => `${s.name}: ${display(s.status)}`).join(", "))))));
}

// ---------------------------------------------------------------------------------------------
// Routing

const routes = [
  [/^#\/datasets\/(.+)$/, datasetPage], [/^#\/datasets$/, datasetsPage],
  [/^#\/views\/(.+)$/, viewPage], [/^#\/views$/, viewsPage],
  [/^#\/pushes\/(.+)$/, pushPage], [/^#\/pushes$/, pushesPage],
  [/^#\/tasks\/(.+)$/, taskPage], [/^#\/tasks$/, tasksPage],
];

async function route() {
  pageGeneration += 1;
  const hash = location.hash || "#/";
  for (const [pattern, page] of routes) {
    const match = hash.match(pattern);
    if (match) {
      if (!key()) { main.replaceChildren(el("p", { class: "bad" }, "Enter your API key above to begin.")); return; }
      try { await page(...match.slice(1).map(decodeURIComponent)); }
      catch (e) {
        if (e instanceof StalePage) return;
        main.replaceChildren(e instanceof ApiError ? errorBox(e) : el("div", { class: "error" }, String(e)));
      }
      return;
    }
  }
  await home();
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key-input");
  if (input.value.trim()) localStorage.setItem(KEY_STORE, input.value.trim());
  input.value = "";
  toast("Key saved in this browser");
  route();
});
document.getElementById("key-forget").addEventListener("click", () => { localStorage.removeItem(KEY_STORE); route(); });
window.addEventListener("hashchange", route);
route();

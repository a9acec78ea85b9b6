// jobstream console. Every value from the server is put in the page as
// text (textContent, attributes set one by one), never parsed as HTML.
"use strict";

const csrf = document.querySelector('meta[name="csrf"]').content;
const main = document.getElementById("main");
const statuses = ["pending", "running", "done", "failed", "cancelled"];
let stopPage = () => {};
let readOnly = false;

function el(tag, props, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") n.className = v;
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) n.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

function svgEl(tag, attrs) {
  const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
  return n;
}

function toast(msg, bad) {
  const t = el("div", { class: bad ? "bad" : "" }, msg);
  document.getElementById("toast").append(t);
  setTimeout(() => t.remove(), bad ? 8000 : 4000);
}

async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// act posts an action with the CSRF value and the token; the server
// refuses it without them.
async function act(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "X-CSRF-Token": csrf,
      "X-Jobstream-Token": sessionStorage.getItem("jobstream-token") || "",
    },
    body: JSON.stringify(body),
  });
  const res = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(res.error || r.statusText);
  return res;
}

const fmt = {
  n: (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en-US")),
  ms: (x) => (x === null || x === undefined ? "–" : x < 10 ? x.toFixed(2) + " ms" : Math.round(x) + " ms"),
  rate: (x) => (x < 10 ? x.toFixed(1) : Math.round(x).toLocaleString("en-US")) + "/s",
  bytes: (b) => {
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i ? b.toFixed(1) : b) + " " + u[i];
  },
  time: (t) => (t ? new Date(t).toLocaleString() : "–"),
};

function pill(status) {
  return el("span", { class: "status-pill s-" + status }, status);
}

function jobLink(id) {
  return el("a", { href: "#/job/" + encodeURIComponent(id), class: "mono" }, id);
}

// ---- overview ----

function overview() {
  const pipe = el("div", { class: "pipeline", id: "pipeline" });
  const charts = el("div", { class: "grid", id: "charts" });
  const side = el("div", { class: "grid", id: "side" });
  const live = el("span", { class: "live off", id: "live" });
  main.replaceChildren(
    el("h1", {}, live, "Pipeline"),
    pipe,
    el("h2", {}, "Last hour"),
    charts,
    el("h2", {}, "Reader and dead letters"),
    side,
  );
  let history = [];
  let prev = null;
  api("/api/history").then((h) => { history = h || []; drawCharts(charts, history); }).catch(() => {});
  const es = new EventSource("/api/events");
  es.addEventListener("status", (ev) => {
    const s = JSON.parse(ev.data);
    live.className = "live" + (s.error ? " off" : "");
    setMode(s.read_only);
    if (s.error) { toast("status: " + s.error, true); return; }
    drawPipeline(pipe, s.report, prev);
    drawSide(side, s.report);
    history.push(s.point);
    if (history.length > 1800) history.shift();
    drawCharts(charts, history);
    prev = s.report;
  });
  es.onerror = () => { live.className = "live off"; };
  return () => es.close();
}

function drawPipeline(pipe, rep, prev) {
  const steps = [];
  const byStep = {};
  for (const j of rep.jobs || []) {
    if (!byStep[j.current_step]) { byStep[j.current_step] = {}; steps.includes(j.current_step) || steps.push(j.current_step); }
    byStep[j.current_step][j.status] = j.count;
  }
  const stepStats = {};
  for (const s of rep.steps || []) stepStats[s.step] = s;
  // The pipeline's order: each step's trigger comes before it.
  const order = [];
  for (const s of rep.steps || []) {
    const trig = s.topic.slice(s.topic.lastIndexOf(".") + 1);
    if (!order.includes(trig)) order.push(trig);
    order.push(s.step);
  }
  const prevDone = {};
  for (const s of (prev && prev.steps) || []) prevDone[s.step] = s.runs_done;
  const dt = prev ? (new Date(rep.at) - new Date(prev.at)) / 1000 : 0;
  const boxes = [];
  order.forEach((name, i) => {
    if (i > 0) boxes.push(el("div", { class: "arrow" }, "→"));
    const counts = byStep[name] || {};
    const st = stepStats[name];
    const kv = [];
    if (st) {
      const rate = dt > 0 && prevDone[name] !== undefined ? Math.max(0, st.runs_done - prevDone[name]) / dt : 0;
      kv.push(
        ["members", fmt.n((st.members || []).length)],
        ["lag", fmt.n(st.lag)],
        ["running", fmt.n(st.runs_running)],
        ["rate", fmt.rate(rate)],
        ["commit→claim", fmt.ms(st.commit_to_claim_p50_ms) + " / " + fmt.ms(st.commit_to_claim_p99_ms)],
      );
    } else {
      kv.push(["", "jobs enter here"]);
    }
    boxes.push(el("div", { class: "panel step", "data-step": name },
      el("h3", {}, name),
      el("div", { class: "counts" }, statuses.filter((s) => counts[s]).map((s) =>
        el("a", { class: "count s-" + s, href: "#/jobs?step=" + encodeURIComponent(name) + "&status=" + s, "data-status": s },
          s + " ", el("b", {}, fmt.n(counts[s]))))),
      el("dl", { class: "kv" }, kv.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    ));
  });
  pipe.replaceChildren(...boxes);
}

function drawSide(side, rep) {
  const s = rep.slot;
  const slotKV = s.exists ? [
    ["slot", s.name], ["state", s.active ? "streaming" : "inactive (no reader)"], ["confirmed", s.confirmed_flush_lsn],
    ["retained WAL", fmt.bytes(s.retained_wal_bytes)], ["wal_status", s.wal_status],
  ] : [["slot", s.name], ["state", "does not exist yet (the reader creates it)"]];
  if (s.gap) slotKV.push(["gap", s.gap.from_lsn + " → " + s.gap.to_lsn + " (" + fmt.time(s.gap.recorded_at) + ")"]);
  side.replaceChildren(
    el("div", { class: "panel" }, el("h3", {}, "Reader"), el("dl", { class: "kv" }, slotKV.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))),
    el("div", { class: "panel" }, el("h3", {}, "Dead letters"), el("dl", { class: "kv" },
      el("dt", {}, "written"), el("dd", { id: "dead-letters" }, el("a", { href: "#/letters" }, fmt.n(rep.dead_letters))),
      el("dt", {}, "owed"), el("dd", {}, fmt.n(rep.dead_letters_owed)),
      el("dt", {}, "expired leases"), el("dd", {}, fmt.n(rep.expired_leases)))),
  );
}

function drawCharts(box, history) {
  const series = [
    ["Throughput (runs done/s)", (p) => p.throughput, fmt.rate],
    ["Commit → claim p50 (slowest step)", (p) => p.latency_ms, fmt.ms],
    ["Lag (events not yet taken)", (p) => p.lag, fmt.n],
  ];
  box.replaceChildren(...series.map(([title, get, f]) => chart(title, history, get, f)));
}

function chart(title, pts, get, f) {
  const W = 400, H = 120, pad = 4;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none" });
  svg.append(svgEl("line", { x1: 0, y1: H - 1, x2: W, y2: H - 1, class: "axis" }));
  const last = pts.length ? get(pts[pts.length - 1]) : null;
  if (pts.length > 1) {
    const t0 = new Date(pts[0].at).getTime(), t1 = new Date(pts[pts.length - 1].at).getTime();
    const max = Math.max(...pts.map(get), 1e-9);
    const xy = pts.map((p) => [
      ((new Date(p.at).getTime() - t0) / Math.max(t1 - t0, 1)) * W,
      H - pad - (get(p) / max) * (H - 2 * pad),
    ]);
    const line = xy.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" ");
    svg.append(svgEl("polygon", { points: `0,${H} ${line} ${W},${H}`, class: "area" }));
    svg.append(svgEl("polyline", { points: line, class: "line" }));
    const label = svgEl("text", { x: 4, y: 12, class: "label" });
    label.textContent = "max " + f(max);
    svg.append(label);
  }
  return el("div", { class: "panel chart" },
    el("div", { class: "muted" }, title),
    el("div", { class: "now" }, last === null ? "–" : f(last)),
    svg);
}

// ---- jobs ----

function jobsPage(params) {
  const step = params.get("step") || "", status = params.get("status") || "", q = params.get("q") || "";
  const stepSel = el("select", { id: "f-step" }, el("option", { value: "" }, "any step"));
  const statusSel = el("select", { id: "f-status" }, el("option", { value: "" }, "any status"),
    statuses.map((s) => el("option", { value: s }, s)));
  statusSel.value = status;
  const search = el("input", { id: "f-q", type: "search", placeholder: "job id or its start", value: q });
  const body = el("tbody");
  const more = el("button", { id: "more", disabled: true }, "Next page");
  const apply = () => { location.hash = "#/jobs?" + new URLSearchParams({ step: stepSel.value, status: statusSel.value, q: search.value }); };
  stepSel.addEventListener("change", apply);
  statusSel.addEventListener("change", apply);
  search.addEventListener("keydown", (e) => { if (e.key === "Enter") apply(); });
  main.replaceChildren(
    el("h1", {}, "Jobs"),
    el("div", { class: "filters" }, stepSel, statusSel, search, el("button", { onclick: apply }, "Apply")),
    el("table", { id: "jobs" }, el("thead", {}, el("tr", {}, ["job id", "step", "status", "updated", "error"].map((h) => el("th", {}, h)))), body),
    el("div", { class: "actions" }, more),
    replayRangeForm(),
  );
  stepNames().then((steps) => {
    steps.forEach((s) => stepSel.append(el("option", { value: s }, s)));
    stepSel.value = step;
  });
  let after = "";
  const load = async () => {
    more.disabled = true;
    try {
      const page = await api("/api/jobs?" + new URLSearchParams({ step, status, q, after }));
      for (const j of page.jobs) {
        body.append(el("tr", {}, el("td", {}, jobLink(j.job_id)), el("td", {}, j.current_step), el("td", {}, pill(j.status)),
          el("td", {}, fmt.time(j.updated_at)), el("td", { class: "err" }, j.error || "")));
      }
      if (!body.children.length) body.append(el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no job matches")));
      after = page.next || "";
      more.disabled = !after;
    } catch (e) { toast(e.message, true); }
  };
  more.addEventListener("click", load);
  load();
}

let infoCache = null;
async function stepNames() {
  if (!infoCache) infoCache = await api("/api/info").catch(() => ({ steps: [] }));
  return infoCache.steps;
}

// replayRangeForm replays a step for the jobs of a time range: the dry
// run's list first, then the operator confirms.
function replayRangeForm() {
  const step = el("select", { id: "r-step" });
  stepNames().then((steps) => steps.slice(1).forEach((s) => step.append(el("option", { value: s }, s))));
  const from = el("input", { id: "r-from", type: "datetime-local" });
  const to = el("input", { id: "r-to", type: "datetime-local" });
  const out = el("div", { class: "dryrun" });
  const body = () => ({ step: step.value, from: from.value ? new Date(from.value).toISOString() : "", to: to.value ? new Date(to.value).toISOString() : "" });
  const dry = async () => {
    try {
      const res = await act("/api/replay", { ...body(), dry_run: true });
      const jobs = (res.replayed || []).map((j) => j.job_id);
      const confirm = el("button", { class: "danger", id: "r-confirm", onclick: async () => {
        try { const r = await act("/api/replay", body()); toast("replayed " + step.value + " for " + (r.replayed || []).length + " jobs"); out.replaceChildren(); }
        catch (e) { toast(e.message, true); }
      } }, "Replay these " + jobs.length + " jobs");
      out.replaceChildren(el("p", {}, "Dry run: " + jobs.length + " jobs would run " + step.value + " again."),
        el("div", { class: "mono" }, jobs.slice(0, 200).join(", ") + (jobs.length > 200 ? ", …" : "")), jobs.length ? confirm : "");
    } catch (e) { toast(e.message, true); }
  };
  return el("div", { class: "panel" }, el("h3", {}, "Replay a step for a time range"),
    el("div", { class: "filters" }, step, "from", from, "to", to, el("button", { onclick: dry, id: "r-dry" }, "Dry run")), out);
}

// ---- one job ----

async function jobPage(id) {
  main.replaceChildren(el("h1", {}, "Job ", el("span", { class: "mono" }, id)), el("p", { class: "muted" }, "loading…"));
  let v;
  try { v = await api("/api/job?id=" + encodeURIComponent(id)); } catch (e) {
    main.replaceChildren(el("h1", {}, "Job ", el("span", { class: "mono" }, id)), el("p", { class: "err" }, e.message));
    return;
  }
  const j = v.job;
  const actions = el("div", { class: "actions" });
  const run = (label, path, body, cls) => el("button", { class: cls || "", id: "a-" + path.split("/").pop(), onclick: async () => {
    try { await act(path, body); toast(label + " " + j.job_id + ": done"); setTimeout(() => jobPage(id), 600); }
    catch (e) { toast(e.message, true); }
  } }, label);
  if (j.status === "failed") actions.append(run("Retry", "/api/retry", { job_id: j.job_id }, "primary"));
  if (j.status !== "cancelled" && !(j.status === "done" && j.current_step === v.steps[v.steps.length - 1])) {
    actions.append(run("Cancel", "/api/cancel", { job_id: j.job_id }, "danger"));
  }
  const replayStep = el("select", { id: "a-replay-step" }, v.steps.slice(1).map((s) => el("option", { value: s }, s)));
  actions.append(replayStep, el("button", { id: "a-replay", onclick: async () => {
    try {
      const dry = await act("/api/replay", { step: replayStep.value, job_id: j.job_id, dry_run: true });
      const n = (dry.replayed || []).length;
      if (!n) {
        const why = (dry.skipped || []).map((x) => x.reason).filter(Boolean).join("; ");
        toast("nothing to replay" + (why ? ": " + why : ": the job has not passed " + replayStep.value), true);
        return;
      }
      if (!window.confirm("Run " + replayStep.value + " again for " + j.job_id + "?")) return;
      await act("/api/replay", { step: replayStep.value, job_id: j.job_id });
      toast("replayed " + replayStep.value + " for " + j.job_id);
      setTimeout(() => jobPage(id), 600);
    } catch (e) { toast(e.message, true); }
  } }, "Replay step"));
  const timeline = el("tbody", {}, v.timeline.map((e) => el("tr", { "data-kind": e.kind },
    el("td", {}, fmt.time(e.time)), el("td", {}, e.kind), el("td", { class: "mono" }, e.topic + "/" + e.partition + "@" + e.offset),
    el("td", {}, e.op || ""), el("td", {}, e.step || ""), el("td", {}, e.status ? pill(e.status) : ""),
    el("td", {}, e.chain ? e.chain + "." + e.attempt : ""), el("td", { class: "mono" }, e.worker || ""),
    el("td", {}, e.duration || ""), el("td", {}, e.outcome || ""), el("td", { class: "err" }, e.error || ""),
  )));
  main.replaceChildren(
    el("h1", {}, "Job ", el("span", { class: "mono", id: "job-id" }, j.job_id), " ", pill(j.status)),
    el("dl", { class: "kv" }, el("dt", {}, "step"), el("dd", { id: "job-step" }, j.current_step), el("dt", {}, "updated"), el("dd", {}, fmt.time(j.updated_at)),
      j.error ? [el("dt", {}, "error"), el("dd", { class: "err", id: "job-error" }, j.error)] : []),
    actions,
    v.images.length ? el("div", { class: "images" }, v.images.map((p) => el("img", { src: "/api/image?path=" + encodeURIComponent(p), alt: p }))) : "",
    el("div", { class: "grid" },
      el("div", {}, el("h2", {}, "Payload"), el("pre", { id: "payload" }, JSON.stringify(j.payload, null, 2))),
      el("div", {}, el("h2", {}, "Results"), el("pre", { id: "results" }, JSON.stringify(j.results, null, 2)))),
    el("h2", {}, "Timeline (topics and runs)"),
    v.timeline_error ? el("p", { class: "err", id: "timeline-error" }, "The timeline cannot be read now: " + v.timeline_error) : "",
    el("table", { id: "timeline" }, el("thead", {}, el("tr", {}, ["time", "kind", "where", "op", "step", "status", "attempt", "worker", "took", "outcome", "error"].map((h) => el("th", {}, h)))), timeline),
  );
}

// ---- dead letters ----

async function lettersPage() {
  main.replaceChildren(el("h1", {}, "Dead letters"), el("p", { class: "muted" }, "loading…"));
  try {
    const ls = await api("/api/letters");
    main.replaceChildren(el("h1", {}, "Dead letters"), ls.length ? el("table", { id: "letters" },
      el("thead", {}, el("tr", {}, ["time", "job", "reason", "step", "attempts", "error"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ls.map((l) => el("tr", {}, el("td", {}, fmt.time(l.time)), el("td", {}, l.key ? jobLink(l.key) : "–"),
        el("td", {}, l.letter.reason), el("td", {}, l.letter.step || ""), el("td", {}, l.letter.attempts || ""),
        el("td", { class: "err" }, l.letter.error || ""))))) : el("p", { class: "muted" }, "No dead letters."));
  } catch (e) { toast(e.message, true); }
}

// ---- shell ----

function setMode(ro) {
  readOnly = ro;
  const m = document.getElementById("mode");
  m.textContent = ro ? "read-only" : "actions need the token";
}

function route() {
  stopPage();
  stopPage = () => {};
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", path.startsWith("/" + a.dataset.nav) || (path === "/" && a.dataset.nav === "overview"));
  if (path.startsWith("/job/")) jobPage(decodeURIComponent(path.slice(5)));
  else if (path === "/jobs") jobsPage(params);
  else if (path === "/letters") lettersPage();
  else stopPage = overview();
}

document.getElementById("search").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = document.getElementById("search-q").value.trim();
  if (q) location.hash = "#/job/" + encodeURIComponent(q);
});
const tokenInput = document.getElementById("token");
tokenInput.value = sessionStorage.getItem("jobstream-token") || "";
tokenInput.addEventListener("change", () => sessionStorage.setItem("jobstream-token", tokenInput.value));
window.addEventListener("hashchange", route);
stepNames().then(() => setMode(infoCache.read_only));
route();

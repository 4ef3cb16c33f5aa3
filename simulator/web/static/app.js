// trainsim's live page: the fleet, the learning curves of the runs picked, the picked run on
// its landscape, and the control API's "break it" actions. Everything comes from the daemon's
// JSON API (/api/v1/...), polled; the charts are drawn by uPlot (vendored).
"use strict";

const POLL_MS = 1000;
const PAGE_SIZE = 50;
const MAX_PLOTTED = 8;
const PATH_STEPS = 120;
// Observable's categorical palette: readable on light and dark backgrounds.
const PALETTE = ["#4269d0", "#3ca951", "#efb118", "#ff725c", "#6cc5b0", "#ff8ab7",
  "#a463f2", "#97bbf5"];

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c.nodeType ? c : String(c));
  }
  return node;
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function fmt(x) {
  if (x === null || x === undefined) return "–";
  if (x === 0) return "0";
  const a = Math.abs(x);
  return a >= 1e5 || a < 1e-3 ? x.toExponential(3) : Number(x.toPrecision(5)).toString();
}

// ------------------------------------------------------------------------------- the API

const page = {
  token: null,
  fleet: null,
  query: {sort: "severity", order: "desc", q: "", state: "", offset: 0},
  plotted: [],          // run names whose curves are drawn, in colour order
  focus: null,          // the run drawn on its landscape and broken by the panel
  replayFocus: false,   // whether it replays a recording (some fault kinds do not apply)
  histories: new Map(), // run -> {meta, cols}
  kinds: [],
  charts: {},
  landscape: null,      // {run, lo, hi, data, fetched}
  ready: false,
  lastUpdate: 0,
};

async function api(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (page.token) headers["Authorization"] = `Bearer ${page.token}`;
  const resp = await fetch(path, {method, headers,
    body: body === undefined ? undefined : JSON.stringify(body)});
  const payload = await resp.json().catch(() => null);
  if (!resp.ok) {
    const err = new Error(payload && payload.error ? payload.error : `${resp.status}`);
    err.status = resp.status;
    err.field = payload && payload.field;
    throw err;
  }
  return payload;
}

const runPath = (run) => `/api/v1/runs/${encodeURIComponent(run)}`;

// ------------------------------------------------------------------------------- fleet

async function refreshFleet() {
  const q = page.query;
  const params = new URLSearchParams({sort: q.sort, order: q.order, offset: q.offset,
    limit: PAGE_SIZE});
  if (q.q) params.set("q", q.q);
  if (q.state) params.set("state", q.state);
  page.fleet = await api("GET", `/api/v1/fleet?${params}`);
  if (!page.ready) firstPick(page.fleet);
  renderFleet();
}

function firstPick(fleet) {
  // A small fleet (the seed's four runs) is plotted whole, like the notebook's curves.
  const rows = [...fleet.runs].sort((a, b) => a.run.localeCompare(b.run));
  page.plotted = rows.slice(0, fleet.total <= MAX_PLOTTED ? MAX_PLOTTED : 1).map((r) => r.run);
  page.focus = page.plotted.find((r) => rows.find((x) => x.run === r).state === "running")
    || page.plotted[0] || null;
}

function renderFleet() {
  const f = page.fleet;
  $("counts").replaceChildren(...Object.entries(f.states).filter(([, n]) => n > 0).map(
    ([state, n]) => el("li", {}, el("span", {class: `badge ${state}`}, `${n} ${state}`))));
  const body = $("fleet").tBodies[0];
  body.replaceChildren(...f.runs.map(renderRow));
  const first = f.matched ? page.query.offset + 1 : 0;
  const last = Math.min(page.query.offset + PAGE_SIZE, f.matched);
  $("page-info").textContent = `${first}–${last} of ${f.matched}` +
    (f.matched !== f.total ? ` (${f.total} runs)` : "");
  $("prev").disabled = page.query.offset === 0;
  $("next").disabled = last >= f.matched;
  for (const th of $("fleet").tHead.querySelectorAll("th[data-sort]")) {
    if (th.dataset.sort === page.query.sort) {
      th.setAttribute("aria-sort", page.query.order === "asc" ? "ascending" : "descending");
    } else th.removeAttribute("aria-sort");
  }
}

function renderRow(r) {
  const colour = page.plotted.indexOf(r.run);
  const box = el("input", {type: "checkbox", "aria-label": `plot ${r.run}`,
    checked: colour >= 0, onchange: (e) => { e.stopPropagation(); togglePlot(r.run); }});
  const tags = [
    ...r.alerts.map((a) => el("span", {class: "tag alert"}, a)),
    ...r.faults.map((k) => el("span", {class: "tag fault"}, k)),
    r.paused ? el("span", {class: "tag paused"}, "paused") : null,
    r.present ? null : el("span", {class: "tag paused"}, "absent"),
  ];
  const row = el("tr", {class: r.run === page.focus ? "focused" : "",
      onclick: () => setFocus(r.run)},
    el("td", {}, box),
    el("td", {}, colour >= 0 ? el("span", {class: "swatch",
      style: `background:${PALETTE[colour]}`}) : null,
      el("button", {type: "button", class: "run-name",
        onclick: (e) => { e.stopPropagation(); setFocus(r.run); }}, r.run)),
    el("td", {}, el("span", {class: `badge ${r.state}`}, r.state)),
    el("td", {class: "num"}, r.step),
    el("td", {class: "num"}, fmt(r.loss)),
    el("td", {class: "num"}, fmt(r.learning_rate)),
    el("td", {}, tags));
  row.dataset.run = r.run;
  row.dataset.state = r.state;
  return row;
}

function togglePlot(run) {
  const i = page.plotted.indexOf(run);
  if (i >= 0) page.plotted.splice(i, 1);
  else if (page.plotted.length < MAX_PLOTTED) page.plotted.push(run);
  else message(`At most ${MAX_PLOTTED} runs are plotted at once.`, true);
  renderFleet();
  rebuildCurves();
}

function setFocus(run) {
  page.focus = run;
  if (!page.plotted.includes(run)) {
    if (page.plotted.length >= MAX_PLOTTED) page.plotted.shift();
    page.plotted.push(run);
    rebuildCurves();
  }
  page.landscape = null;
  renderFleet();
  refreshHistories().then(renderFocus);
}

// ------------------------------------------------------------------------------- history

async function refreshHistories() {
  const wanted = new Set(page.plotted);
  if (page.focus) wanted.add(page.focus);
  for (const run of page.histories.keys()) if (!wanted.has(run)) page.histories.delete(run);
  await Promise.all([...wanted].map(async (run) => {
    const known = page.histories.get(run);
    const since = known ? known.last : 0;
    const h = await api("GET", `${runPath(run)}/history?since=${since}`);
    if (!known || h.last < since) {
      page.histories.set(run, {meta: h, cols: h.columns, last: h.last});
      return;
    }
    for (const [name, values] of Object.entries(h.columns)) {
      const all = known.cols[name].concat(values);
      known.cols[name] = all.slice(Math.max(0, all.length - h.capacity));
    }
    known.last = h.last;
    known.meta = h;
  }));
}

// The entries of a run's latest attempt, while its series were exported.
function currentAttempt(run) {
  const h = page.histories.get(run);
  if (!h || !h.cols.seq.length) return [];
  const c = h.cols;
  const attempt = c.attempt[c.attempt.length - 1];
  const out = [];
  for (let i = 0; i < c.seq.length; i++) {
    if (c.attempt[i] !== attempt || !c.present[i]) continue;
    out.push({step: c.step[i], loss: c.loss[i], excess: c.excess_loss[i],
      val: c.validation_loss[i], grad: c.gradient_norm[i], lr: c.learning_rate[i],
      state: c.state[i], faults: c.faults[i],
      absmax: c.parameter_absmax[i], w: c.parameters ? c.parameters[i] : null});
  }
  return out;
}

// What the loss chart plots for an entry: the excess loss J - J* where the landscape knows its
// minimum (exact down to the last step: a converging run falls in a straight line on the log
// scale), else the loss.
function lossValue(run, e) {
  const h = page.histories.get(run);
  const y = h && h.meta.optimum !== null ? e.excess : e.loss;
  return y === null || !(y > 0) ? null : y;
}

// ------------------------------------------------------------------------------- charts

// A power of ten 10^e as a tick label: 0.01, 1, 1000, 1e-8, 1e12.
function decade(e) {
  return e >= -2 && e <= 4 ? String(10 ** e) : `1e${e}`;
}

function axis(label, log, vertical = false) {
  const a = {label, stroke: css("--muted"), grid: {stroke: css("--line"), width: 1},
    ticks: {stroke: css("--line")}, labelSize: 18, size: vertical ? 62 : 44};
  if (log) {
    // Whole decades only, every k-th one so that labels keep ~22 px apart: a log scale's
    // minor lines would grey the whole plot. The labels come from the exponents (uPlot
    // rounds the split values it hands back, which loses 1e-15).
    let exponents = [];
    a.splits = (u, i, min, max) => {
      const lo = Math.ceil(Math.log10(min)), hi = Math.floor(Math.log10(max));
      const room = Math.max(1, u.bbox.height / devicePixelRatio / 22);
      const k = Math.max(1, Math.ceil((hi - lo + 1) / room));
      exponents = [];
      for (let e = lo; e <= hi; e++) if (e % k === 0) exponents.push(e);
      return exponents.map((e) => 10 ** e);
    };
    a.values = (u, splits) => splits.map((v, i) => decade(exponents[i]));
  }
  return a;
}

function curveOpts(el_, label, log, hooks = {}) {
  const width = el_.clientWidth || 600;
  return {
    width, height: el_.classList.contains("small") ? 170 : 260,
    legend: {show: false},
    cursor: {points: {size: 6}},
    scales: {x: {time: false}, y: log ? {distr: 3} : {}},
    axes: [axis("step", false), axis(label, log, true)],
    series: [{label: "step"}, ...page.plotted.map((run, i) => ({
      label: run, stroke: PALETTE[i], width: 2, spanGaps: false, points: {show: false}}))],
    hooks,
  };
}

function curveData(value) {
  const steps = new Set();
  const entries = page.plotted.map((run) => currentAttempt(run));
  for (const list of entries) for (const e of list) steps.add(e.step);
  const x = [...steps].sort((a, b) => a - b);
  const index = new Map(x.map((s, i) => [s, i]));
  const ys = page.plotted.map((run, k) => {
    const y = new Array(x.length).fill(null);
    for (const e of entries[k]) y[index.get(e.step)] = value(run, e);
    return y;
  });
  return [x, ...ys];
}

const positive = (v) => (v !== null && v > 0 ? v : null);
const CURVES = [
  {id: "chart-loss", key: "loss", label: "loss", log: true, value: lossValue},
  {id: "chart-grad", key: "grad", label: "gradient norm", log: true,
    value: (run, e) => positive(e.grad)},
  {id: "chart-lr", key: "lr", label: "learning rate", log: true,
    value: (run, e) => positive(e.lr)},
];

function rebuildCurves() {
  for (const c of CURVES) {
    if (page.charts[c.key]) page.charts[c.key].destroy();
    const node = $(c.id);
    node.replaceChildren();
    const hooks = c.key === "loss" ? {drawClear: [drawWindows]} : {};
    page.charts[c.key] = new uPlot(curveOpts(node, c.label, c.log, hooks), curveData(c.value),
      node);
  }
  renderLegend();
}

function updateCurves() {
  for (const c of CURVES) page.charts[c.key].setData(curveData(c.value));
  const known = page.plotted.map((r) => page.histories.get(r)).filter(Boolean);
  const gap = known.some((h) => h.meta.optimum !== null);
  $("charts-hint").textContent = gap ? "(loss above the optimum, log scale)" : "(log scale)";
  page.charts.loss.axes[1].label = gap ? "loss − J*" : "loss";
}

function renderLegend() {
  $("legend").replaceChildren(...page.plotted.map((run, i) => el("li", {},
    el("span", {class: "swatch", style: `background:${PALETTE[i]}`}), run)));
}

// Fault windows and divergence of the focused run, shaded behind its curve.
function drawWindows(u) {
  const entries = page.focus ? currentAttempt(page.focus) : [];
  const spans = [];
  let open = null;
  for (const e of entries) {
    const label = e.state === "diverged" ? "diverged" : e.faults.join(", ");
    if (open && open.label === label) { open.end = e.step; continue; }
    if (open) spans.push(open);
    open = label ? {label, start: e.step, end: e.step} : null;
  }
  if (open) spans.push(open);
  const {ctx, bbox} = u;
  ctx.save();
  ctx.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
  for (const s of spans) {
    const x0 = u.valToPos(s.start, "x", true);
    const x1 = Math.max(u.valToPos(s.end, "x", true), x0 + 2 * devicePixelRatio);
    ctx.fillStyle = s.label === "diverged" ? "rgba(197,48,48,0.18)" : css("--fault");
    ctx.fillRect(x0, bbox.top, x1 - x0, bbox.height);
    ctx.fillStyle = css("--diverged");
    ctx.fillText(s.label, x0 + 3 * devicePixelRatio, bbox.top + 12 * devicePixelRatio);
  }
  ctx.restore();
}

// ------------------------------------------------------------------------------- the focused run

async function renderFocus() {
  const run = page.focus;
  $("focus-name").textContent = run || "—";
  const h = run && page.histories.get(run);
  if (!h) return;
  const entries = currentAttempt(run);
  const last = entries[entries.length - 1];
  const badge = $("focus-state");
  badge.className = `badge ${last ? last.state : ""}`;
  badge.textContent = last ? last.state : "";
  const dims = h.meta.dims;
  offerKinds(h.meta.landscape === "replay");
  if (h.meta.landscape === "replay") drawRecording(run, h, entries);
  else if (h.cols.parameters && (dims === 1 || dims === 2)) await drawLandscape(run, h, entries);
  else drawNorm(run, h, entries);
  await refreshRunPanel(run);
}

function span(values) {
  let lo = Math.min(...values), hi = Math.max(...values);
  const pad = Math.max((hi - lo) * 0.25, Math.abs(hi + lo) * 0.05, 0.5);
  return [lo - pad, hi + pad];
}

async function drawLandscape(run, h, entries) {
  const dims = h.meta.dims;
  const path = entries.slice(-PATH_STEPS).filter((e) => e.w && e.w.every(Number.isFinite));
  if (!path.length) return;
  const ranges = [...Array(dims).keys()].map((d) => span(path.map((e) => e.w[d])));
  const l = page.landscape;
  const stale = !l || l.run !== run || Date.now() - l.fetched > 2000 ||
    ranges.some((r, d) => r[0] < l.lo[d] || r[1] > l.hi[d] ||
      (r[1] - r[0]) < 0.3 * (l.hi[d] - l.lo[d]));
  if (stale) {
    const lo = ranges.map((r) => r[0]), hi = ranges.map((r) => r[1]);
    const points = dims === 1 ? 240 : 100;
    const data = await api("GET", `${runPath(run)}/landscape?lo=${lo}&hi=${hi}&points=${points}`);
    page.landscape = {run, lo, hi, data, fetched: Date.now()};
  }
  const {data} = page.landscape;
  $("picture-caption").textContent = dims === 1
    ? `J(w) of ${h.meta.landscape} with the tangent at the current w and the last ` +
      `${path.length} steps`
    : `contours of J over (w0, w1), ${h.meta.landscape}, with the last ${path.length} steps`;
  if (dims === 1) drawCurve1d(data, path);
  else drawContour2d(data, path);
}

function pictureChart(opts, data) {
  const node = $("chart-picture");
  if (page.charts.picture) page.charts.picture.destroy();
  node.replaceChildren();
  page.charts.picture = new uPlot({width: node.clientWidth || 600, height: 300,
    legend: {show: false}, ...opts}, data, node);
}

function drawCurve1d(data, path) {
  const x = data.axes[0];
  const at = data.at;
  const w = at.parameters[0], g = at.gradient[0];
  const reach = (x[x.length - 1] - x[0]) * 0.18;
  const tangent = x.map((xi) => (Math.abs(xi - w) <= reach ? at.loss + g * (xi - w) : null));
  pictureChart({
    scales: {x: {time: false}, y: {}},
    axes: [axis("w", false), axis("J(w)", false, true)],
    series: [{label: "w"},
      {label: "J(w)", stroke: css("--muted"), width: 2, points: {show: false}},
      {label: "tangent", stroke: css("--diverged"), width: 1.5, points: {show: false}}],
    hooks: {draw: [(u) => drawPath(u, path.map((e) => [e.w[0], e.loss]))]},
  }, [x, data.loss, tangent]);
}

// Twelve bands of log(J - min J), light (low) to dark (high): ColorBrewer's YlGnBu.
const BANDS = ["#ffffd9", "#edf8b1", "#c7e9b4", "#a5dbb7", "#7fcdbb", "#5bbdc1", "#41b6c4",
  "#2ea0c0", "#1d91c0", "#2074b4", "#225ea8", "#253494"];

// The grid as an image, one pixel per point, banded; drawn scaled (and smoothed) under the path.
function contourImage(data) {
  const [xs, ys] = data.axes;
  const flat = data.loss.flat().filter((v) => v !== null);
  const lo = Math.min(...flat), hi = Math.max(...flat);
  const top = Math.log1p(Math.max(hi - lo, 1e-300));
  const image = new ImageData(xs.length, ys.length);
  const rgb = BANDS.map((c) => [1, 3, 5].map((k) => parseInt(c.slice(k, k + 2), 16)));
  for (let i = 0; i < xs.length; i++) {
    for (let j = 0; j < ys.length; j++) {
      const v = data.loss[i][j];
      const band = v === null ? 11 : Math.min(11, Math.floor(Math.log1p(v - lo) / top * 12));
      const at = ((ys.length - 1 - j) * xs.length + i) * 4;
      image.data.set([...rgb[band], 255], at);
    }
  }
  const canvas = document.createElement("canvas");
  canvas.width = xs.length;
  canvas.height = ys.length;
  canvas.getContext("2d").putImageData(image, 0, 0);
  return canvas;
}

function drawContour2d(data, path) {
  const [xs, ys] = data.axes;
  const image = contourImage(data);
  pictureChart({
    scales: {x: {time: false, range: [xs[0], xs[xs.length - 1]]},
      y: {range: [ys[0], ys[ys.length - 1]]}},
    axes: [axis("w0", false), axis("w1", false, true)],
    series: [{label: "w0"}, {label: "", show: false}],
    hooks: {
      drawClear: [(u) => {
        u.ctx.imageSmoothingEnabled = true;
        u.ctx.drawImage(image, u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
      }],
      draw: [(u) => drawPath(u, path.map((e) => [e.w[0], e.w[1]]))],
    },
  }, [[xs[0], xs[xs.length - 1]], [null, null]]);
}

// The last steps, in order: older ones fainter, the current one largest.
function drawPath(u, points) {
  const {ctx} = u;
  const dpr = devicePixelRatio;
  ctx.save();
  ctx.strokeStyle = css("--ink");
  ctx.lineWidth = 1.2 * dpr;
  ctx.beginPath();
  points.forEach(([px, py], i) => {
    const X = u.valToPos(px, "x", true), Y = u.valToPos(py, "y", true);
    if (i === 0) ctx.moveTo(X, Y); else ctx.lineTo(X, Y);
  });
  ctx.globalAlpha = 0.55;
  ctx.stroke();
  points.forEach(([px, py], i) => {
    const last = i === points.length - 1;
    ctx.globalAlpha = last ? 1 : 0.3 + 0.6 * (i / points.length);
    ctx.fillStyle = last ? css("--diverged") : css("--accent");
    ctx.beginPath();
    ctx.arc(u.valToPos(px, "x", true), u.valToPos(py, "y", true), (last ? 7 : 4) * dpr, 0,
      2 * Math.PI);
    ctx.fill();
  });
  ctx.restore();
}

// A replay has no landscape: its recorded training loss, and its validation loss when the
// recording holds one (the last evaluation, held until the next).
function drawRecording(run, h, entries) {
  const validated = entries.some((e) => e.val !== null);
  $("picture-caption").textContent = "replayed from its recording: the training loss" +
    (validated ? " (solid) and the last validation loss (dashed)" : "") + " at each step";
  // The run's own colour, as in the learning curves; the validation loss in the same, dashed.
  const colour = PALETTE[Math.max(0, page.plotted.indexOf(run)) % PALETTE.length];
  const series = [{label: "step"}, {label: "training loss", stroke: colour, width: 2,
    points: {show: false}}];
  const data = [entries.map((e) => e.step), entries.map((e) => positive(e.loss))];
  if (validated) {
    series.push({label: "validation loss", stroke: colour, width: 1.5, dash: [6, 4],
      points: {show: false}});
    data.push(entries.map((e) => positive(e.val)));
  }
  pictureChart({
    scales: {x: {time: false}, y: {distr: 3}},
    axes: [axis("step", false), axis("loss", true, true)],
    legend: {show: validated},
    series,
  }, data);
}

function drawNorm(run, h, entries) {
  $("picture-caption").textContent =
    `${h.meta.dims} parameters (${h.meta.landscape}): the largest |w_i| over the steps`;
  pictureChart({
    scales: {x: {time: false}, y: {distr: 3}},
    axes: [axis("step", false), axis("max |w_i|", true, true)],
    series: [{label: "step"}, {label: "max |w_i|", stroke: PALETTE[0], width: 2,
      points: {show: false}}],
  }, [entries.map((e) => e.step), entries.map((e) => positive(e.absmax))]);
}

// ------------------------------------------------------------------------------- break it

function message(text, error = false) {
  const m = $("message");
  m.textContent = text;
  m.className = error ? "message error" : "message";
}

async function act(method, path, body, done) {
  try {
    const out = await api(method, path, body);
    message(done(out));
    await tick();
  } catch (err) {
    if (err.status === 401) {
      $("token-box").hidden = false;
      $("token").focus();
      message("The daemon needs its control token for changes: enter it below.", true);
    } else {
      message(err.field ? `${err.field}: ${err.message}` : err.message, true);
    }
  }
}

// The kinds the focused run can take: a replay refuses those a recording cannot show.
function offerKinds(replay) {
  const changed = page.replayFocus !== replay;
  page.replayFocus = replay;
  const select = $("fault-kind");
  for (const option of select.options) {
    const kind = page.kinds.find((k) => k.kind === option.value);
    option.disabled = replay && !kind.replays;
    option.title = replay ? kind.on_recording.replace(/`/g, "") : "";
  }
  if (select.selectedOptions[0] && select.selectedOptions[0].disabled) {
    select.value = page.kinds.find((k) => k.replays).kind;
  }
  if (changed) renderKind();
}

function renderKind() {
  const kind = page.kinds.find((k) => k.kind === $("fault-kind").value);
  if (!kind) return;
  const onRecording = page.replayFocus && kind.on_recording !== "as on any run"
    ? `. On a recording: ${kind.on_recording}` : "";
  $("fault-summary").textContent = (kind.summary + onRecording).replace(/`/g, "");
  $("fault-params").replaceChildren(...kind.params.map((p) => el("label", {title: p.help},
    p.name, el("input", {type: "number", step: "any", name: p.name, value: p.default}))));
}

async function refreshRunPanel(run) {
  const view = await api("GET", runPath(run));
  $("active-faults").replaceChildren(...view.faults.map((f) => el("li", {},
    el("span", {class: "tag fault"}, f.kind),
    f.remaining_seconds === null ? "until cleared" : `${f.remaining_seconds.toFixed(0)} s left`,
    el("button", {type: "button", onclick: () => act("DELETE",
      `${runPath(run)}/faults/${encodeURIComponent(f.id)}`, undefined,
      (out) => `Cleared ${out.kind} on ${run}.`)}, "clear"))));
  for (const b of document.querySelectorAll("[data-action]")) {
    if (b.dataset.action === "pause") b.disabled = view.paused;
    if (b.dataset.action === "resume") b.disabled = !view.paused;
  }
}

function wireControls() {
  $("break").addEventListener("submit", (e) => {
    e.preventDefault();
    if (!page.focus) return;
    const body = {kind: $("fault-kind").value, params: {}};
    for (const input of $("fault-params").querySelectorAll("input")) {
      if (input.value !== "") body.params[input.name] = Number(input.value);
    }
    const duration = $("fault-duration").value.trim();
    if (duration) body.duration = duration;
    const run = page.focus;
    act("POST", `${runPath(run)}/faults`, body,
      (out) => `Injected ${out.kind} into ${run} (fault ${out.id}).`);
  });
  for (const b of document.querySelectorAll("[data-action]")) {
    b.addEventListener("click", () => {
      const run = page.focus;
      if (run) {
        act("POST", `${runPath(run)}/${b.dataset.action}`, undefined,
          (out) => `${b.dataset.action}: ${run} is ${out.state}${out.paused ? " (paused)" : ""}.`);
      }
    });
  }
  $("token-use").addEventListener("click", () => {
    page.token = $("token").value.trim() || null;
    message(page.token ? "Token set for this tab; try again." : "Token cleared.");
  });
  $("fault-kind").addEventListener("change", renderKind);
  $("filter-text").addEventListener("input", (e) => {
    page.query.q = e.target.value.trim();
    page.query.offset = 0;
    refreshFleet();
  });
  $("filter-state").addEventListener("change", (e) => {
    page.query.state = e.target.value;
    page.query.offset = 0;
    refreshFleet();
  });
  for (const th of $("fleet").tHead.querySelectorAll("th[data-sort]")) {
    th.querySelector("button").addEventListener("click", () => {
      const q = page.query;
      q.order = q.sort === th.dataset.sort && q.order === "desc" ? "asc" : "desc";
      q.sort = th.dataset.sort;
      refreshFleet();
    });
  }
  $("prev").addEventListener("click", () => {
    page.query.offset = Math.max(0, page.query.offset - PAGE_SIZE);
    refreshFleet();
  });
  $("next").addEventListener("click", () => { page.query.offset += PAGE_SIZE; refreshFleet(); });
  let resize = null;
  window.addEventListener("resize", () => {
    clearTimeout(resize);
    resize = setTimeout(() => { rebuildCurves(); page.landscape = null; }, 200);
  });
}

// ------------------------------------------------------------------------------- the loop

let ticking = false;

async function tick() {
  if (ticking) return;  // a slow daemon (a large fleet): never stack refreshes
  ticking = true;
  try {
    await refreshFleet();
    await refreshHistories();
    if (!page.charts.loss) rebuildCurves();
    updateCurves();
    await renderFocus();
    page.lastUpdate = Date.now();
    page.ready = true;
    $("live").textContent = `live · ${new Date().toLocaleTimeString()}`;
    $("live").className = "live";
  } catch (err) {
    $("live").textContent = `connection lost (${err.message}); retrying`;
    $("live").className = "live stale";
  } finally {
    ticking = false;
  }
}

async function main() {
  wireControls();
  page.kinds = await api("GET", "/api/v1/fault-kinds");
  $("fault-kind").replaceChildren(...page.kinds.map((k) => el("option", {value: k.kind},
    k.kind)));
  renderKind();
  await tick();
  setInterval(tick, POLL_MS);
}

// For tests and the curious: the page's state and the values each chart plots.
window.trainsimPage = {
  state: page,
  lossPoints(run) {
    const u = page.charts.loss;
    const k = page.plotted.indexOf(run) + 1;
    if (!u || k === 0) return [];
    return u.data[0].map((s, i) => [s, u.data[k][i]]).filter(([, v]) => v !== null);
  },
};

main();

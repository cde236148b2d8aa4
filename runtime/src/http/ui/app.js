// thaw's dashboard. Everything comes from the admin API, with the session cookie; changes
// carry the x-thaw-ui header (see runtime/src/http/auth.rs). Text from functions (names,
// log lines) only ever goes into textContent, never into markup.
'use strict';

const COLORS = ['#2f6fde', '#e8590c', '#2b8a3e', '#ae3ec9', '#c92a2a', '#1098ad', '#f08c00', '#5c7cfa'];
const KINDS = ['pool-hit', 'fresh', 'disk', 'compile'];
const KIND_COLORS = { 'pool-hit': '#2b8a3e', fresh: '#2f6fde', disk: '#f08c00', compile: '#c92a2a' };
const SVG = 'http://www.w3.org/2000/svg';
const rows = new Map();

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith('svg:')
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) {
    node.append(typeof child === 'string' || typeof child === 'number' ? String(child) : child);
  }
  return node;
}

class LoggedOut extends Error {}

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: 'same-origin',
    ...options,
    headers: { 'x-thaw-ui': '1', ...(options.headers || {}) },
  });
  if (response.status === 401) throw new LoggedOut();
  if (!response.ok) {
    let message = `${response.status}`;
    try { message = (await response.json()).error?.message || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  const type = response.headers.get('content-type') || '';
  return type.startsWith('application/json') ? response.json() : response.text();
}

function showLogin() {
  document.getElementById('app').hidden = true;
  document.getElementById('logout').hidden = true;
  document.getElementById('login').hidden = false;
  document.getElementById('denied').hidden = location.hash !== '#denied';
}

function showApp() {
  document.getElementById('login').hidden = true;
  document.getElementById('app').hidden = false;
  document.getElementById('logout').hidden = false;
  if (location.hash) history.replaceState(null, '', '/ui');
}

function say(text, error = false) {
  const out = document.getElementById('action-result');
  out.textContent = text;
  out.className = error ? 'error' : '';
}

async function change(name, path, body) {
  try {
    const info = await api(`/v1/functions/${encodeURIComponent(name)}/${path}`, {
      method: path === 'traffic' ? 'PUT' : 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    say(`${name}: now ${splitText(info.traffic)}`);
    await refresh();
  } catch (e) {
    if (e instanceof LoggedOut) showLogin(); else say(`${name}: ${e.message}`, true);
  }
}

function splitText(traffic) {
  return traffic.map((s) => `v${s.version}=${s.percent}`).join(' ');
}

// "v4=80 v5=20" -> [{version: 4, percent: 80}, ...]; the server checks the rest.
function parseSplit(text) {
  return text.trim().split(/\s+/).filter(Boolean).map((pair) => {
    const [version, percent] = pair.split('=');
    return { version: Number(version.replace(/^v/, '')), percent: Number(percent) };
  });
}

function functionRow(name) {
  if (rows.has(name)) return rows.get(name);
  const cells = {
    name: el('td', {}, name), route: el('td'), versions: el('td'), requests: el('td'),
    failures: el('td'), cpu: el('td'), memory: el('td'),
  };
  const input = el('input', { name: 'split', placeholder: 'v1=80 v2=20', 'aria-label': `split for ${name}` });
  const apply = el('button', { type: 'button', 'data-action': 'split' }, 'Apply');
  const promote = el('button', { type: 'button', 'data-action': 'promote' }, 'Promote newest');
  const rollback = el('button', { type: 'button', 'data-action': 'rollback' }, 'Roll back');
  apply.addEventListener('click', () => change(name, 'traffic', parseSplit(input.value)));
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter') apply.click(); });
  promote.addEventListener('click', () => change(name, 'promote', {}));
  rollback.addEventListener('click', () => change(name, 'rollback', {}));
  const tr = el('tr', { 'data-function': name }, cells.name, cells.route, cells.versions,
    cells.requests, cells.failures, cells.cpu, cells.memory,
    el('td', {}, input, apply, ' ', promote, ' ', rollback));
  document.querySelector('#functions tbody').append(tr);
  const row = { tr, cells };
  rows.set(name, row);
  return row;
}

function renderFunctions(functions, versions) {
  const names = new Set(functions.map((f) => f.name));
  for (const [name, row] of rows) if (!names.has(name)) { row.tr.remove(); rows.delete(name); }
  for (const f of functions) {
    const { tr, cells } = functionRow(f.name);
    tr.setAttribute('data-traffic', splitText(f.traffic));
    cells.route.textContent = f.route;
    cells.versions.replaceChildren(...(versions[f.name] || []).map((v) => {
      const share = v.percent === null ? '–' : `${v.percent}%`;
      const tag = el('span', { class: v.percent ? 'version serving' : 'version', 'data-version': v.version },
        `v${v.version} ${share}`);
      const all = el('button', { type: 'button', title: `serve all traffic from v${v.version}` }, '100%');
      all.addEventListener('click', () => change(f.name, 'rollback', { version: v.version }));
      tag.append(all);
      return tag;
    }));
    // Every kept version's, not only the primary's (which `f` describes).
    cells.requests.textContent = (versions[f.name] || []).reduce((sum, v) => sum + v.requests, 0);
    cells.failures.textContent = (versions[f.name] || []).reduce((sum, v) => sum + v.failures, 0);
    // What the serving (primary) version's requests cost: guest CPU in all and per request,
    // and its instances' peak linear memory (p99).
    // WASIp3 functions are not metered: no per-request figure, a dash rather than 0 ms.
    const metered = f.cpu_us && f.cpu_us.p50 !== null;
    cells.cpu.textContent = metered
      ? `${((f.cpu_us_total || 0) / 1e3).toFixed(1)} ms, ${f.cpu_us.p50} µs p50`
      : '–';
    const peak = f.peak_memory_kib && f.peak_memory_kib.p99;
    cells.memory.textContent = peak ? `${(peak / 1024).toFixed(1)} MiB` : '–';
  }
  const select = document.getElementById('log-function');
  const chosen = select.value;
  select.replaceChildren(...functions.map((f) => el('option', { value: f.name }, f.name)));
  if (names.has(chosen)) select.value = chosen;
}

// Per-interval increases of counters that only go up, except when a version is unloaded or
// the host restarts: then the new total is the increase.
function deltas(samples, pick) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const now = pick(samples[i]); const before = pick(samples[i - 1]);
    out.push(now >= before ? now - before : now);
  }
  return out;
}

function axes(svg, maxY, label, span) {
  svg.replaceChildren(
    el('svg:line', { x1: 40, y1: 180, x2: 590, y2: 180, stroke: '#d9dee7' }),
    el('svg:text', { x: 2, y: 14 }, `${label(maxY)}`),
    el('svg:text', { x: 2, y: 180 }, '0'),
  );
  if (span) {
    svg.append(el('svg:text', { x: 40, y: 195 }, `${Math.round(span / 1000)} s ago`),
      el('svg:text', { x: 565, y: 195 }, 'now'));
  }
}

function span(history) {
  const s = history.samples;
  return s.length > 1 ? s[s.length - 1].time_ms - s[0].time_ms : 0;
}

function renderRate(history) {
  const svg = document.getElementById('rate');
  const samples = history.samples;
  const seconds = [];
  for (let i = 1; i < samples.length; i++) seconds.push(Math.max(0.001, (samples[i].time_ms - samples[i - 1].time_ms) / 1000));
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.requests)))].sort();
  const series = names.map((name) => deltas(samples, (s) => s.requests[name] || 0).map((d, i) => d / seconds[i]));
  const peak = Math.max(0, ...series.flat());
  axes(svg, peak, (v) => `${v.toFixed(v < 10 ? 1 : 0)}/s`, span(history));
  svg.setAttribute('data-peak', peak.toFixed(3));
  const n = Math.max(1, seconds.length - 1);
  series.forEach((values, i) => {
    const points = values.map((v, j) => `${40 + (550 * j) / n},${180 - (peak ? (165 * v) / peak : 0)}`).join(' ');
    svg.append(el('svg:polyline', { points, fill: 'none', stroke: COLORS[i % COLORS.length], 'stroke-width': 2, 'data-function': names[i] }));
  });
  document.getElementById('rate-legend').replaceChildren(...names.map((name, i) =>
    el('span', {}, el('i'), name)));
  document.querySelectorAll('#rate-legend i').forEach((swatch, i) => { swatch.style.background = COLORS[i % COLORS.length]; });
}

function renderMix(history) {
  const svg = document.getElementById('mix');
  const samples = history.samples;
  const perKind = KINDS.map((kind) => deltas(samples, (s) => s.starts[kind] || 0));
  const totals = perKind[0] ? perKind[0].map((_, i) => perKind.reduce((sum, k) => sum + k[i], 0)) : [];
  const peak = Math.max(0, ...totals);
  axes(svg, peak, (v) => `${v} per ${history.interval_ms / 1000}s`, span(history));
  const width = 550 / Math.max(1, totals.length);
  totals.forEach((_, i) => {
    let y = 180;
    KINDS.forEach((kind, k) => {
      const h = peak ? (165 * perKind[k][i]) / peak : 0;
      if (h > 0) {
        y -= h;
        svg.append(el('svg:rect', { x: 40 + i * width, y, width: Math.max(1, width - 1), height: h, fill: KIND_COLORS[kind] }));
      }
    });
  });
  legend('mix-legend', KINDS);
}

function legend(id, kinds) {
  document.getElementById(id).replaceChildren(...kinds.map((kind) => el('span', {}, el('i'), kind)));
  document.querySelectorAll(`#${id} i`).forEach((swatch, i) => { swatch.style.background = KIND_COLORS[kinds[i]]; });
}

// thaw_start_duration_seconds_bucket{...,kind="fresh",le="0.000065"} 12, summed over
// functions and versions, made per-bucket (the exposition's buckets are cumulative).
function startBuckets(text) {
  const cumulative = {};
  for (const line of text.split('\n')) {
    if (!line.startsWith('thaw_start_duration_seconds_bucket{')) continue;
    const kind = /kind="([^"]+)"/.exec(line); const le = /le="([^"]+)"/.exec(line);
    if (!kind || !le) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    const byLe = (cumulative[kind[1]] ||= new Map());
    byLe.set(le[1], (byLe.get(le[1]) || 0) + value);
  }
  const out = {};
  for (const [kind, byLe] of Object.entries(cumulative)) {
    const bounds = [...byLe.keys()].sort((a, b) => Number(a === '+Inf' ? Infinity : a) - Number(b === '+Inf' ? Infinity : b));
    let before = 0;
    out[kind] = bounds.map((le) => { const c = byLe.get(le); const n = c - before; before = c; return [le, n]; });
  }
  return out;
}

function micros(le) {
  if (le === '+Inf') return '∞';
  const us = Number(le) * 1e6;
  return us >= 1000 ? `${(us / 1000).toFixed(us >= 10000 ? 0 : 1)}ms` : `${Math.round(us)}µs`;
}

function renderLatency(text) {
  const svg = document.getElementById('latency');
  const buckets = startBuckets(text);
  const kinds = KINDS.filter((k) => buckets[k] && buckets[k].some(([, n]) => n > 0));
  const bounds = buckets[kinds[0]] ? buckets[kinds[0]].map(([le]) => le) : [];
  // Only the span of buckets that hold something, so the bars are readable.
  let first = bounds.length; let last = -1;
  for (const kind of kinds) buckets[kind].forEach(([, n], i) => { if (n > 0) { first = Math.min(first, i); last = Math.max(last, i); } });
  const shown = last >= first ? bounds.slice(first, last + 1) : [];
  const peak = Math.max(0, ...kinds.flatMap((k) => buckets[k].slice(first, last + 1).map(([, n]) => n)));
  axes(svg, peak, (v) => `${v} starts`);
  const group = 550 / Math.max(1, shown.length);
  const bar = group / Math.max(1, kinds.length + 1);
  shown.forEach((le, i) => {
    kinds.forEach((kind, k) => {
      const n = buckets[kind][first + i][1];
      const h = peak ? (165 * n) / peak : 0;
      if (h > 0) svg.append(el('svg:rect', { x: 40 + i * group + k * bar, y: 180 - h, width: Math.max(1, bar - 1), height: h, fill: KIND_COLORS[kind] }));
    });
    svg.append(el('svg:text', { x: 40 + i * group, y: 195 }, `≤${micros(le)}`));
  });
  legend('latency-legend', kinds);
}

function renderLimits(functions) {
  const body = document.querySelector('#limits tbody');
  const hits = functions.flatMap((f) => Object.entries(f.limit_hits).filter(([, n]) => n > 0).map(([limit, n]) => [f.name, limit, n]));
  body.replaceChildren(...(hits.length ? hits.map(([name, limit, n]) => el('tr', {}, el('td', {}, name), el('td', {}, limit), el('td', {}, n)))
    : [el('tr', {}, el('td', { colspan: 3 }, 'none'))]));
}

function tableRows(id, items, cells, columns) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...(items.length ? items.map((item) => el('tr', {}, ...cells(item).map((c) => el('td', {}, c))))
    : [el('tr', {}, el('td', { colspan: columns }, 'none'))]));
}

function renderEvents(events) {
  const when = (ms) => (ms ? new Date(ms).toISOString().replace('.000Z', 'Z') : '-');
  tableRows('schedules', events.schedules, (s) => [s.function, `${s.cron} ${s.tz}`, when(s.next_ms), when(s.last_ms),
    s.last_status ?? '-', s.runs, s.skipped], 7);
  tableRows('queues', events.queues, (q) => [q.function, q.depth, `${(q.oldest_age_ms / 1000).toFixed(1)} s`,
    q.attempts, q.dead_letters], 5);
  tableRows('triggers', events.triggers, (t) => [t.function, `${t.broker} ${t.stream}`, t.delivered, t.acked,
    t.retried, t.dead_letters, t.reconnects], 7);
}

async function renderLogs() {
  const name = document.getElementById('log-function').value;
  const out = document.getElementById('logs');
  if (!name) { out.textContent = ''; return; }
  const text = await api(`/v1/functions/${encodeURIComponent(name)}/logs?tail=50`);
  const lines = text.split('\n').filter(Boolean).map((line) => JSON.parse(line));
  out.textContent = lines.map((l) => `${new Date(l.time_ms).toISOString()} v${l.version} #${l.request} ${l.stream}: ${l.text}`).join('\n');
}

async function refresh() {
  const [status, functions, history, metrics, events] = await Promise.all([
    api('/v1/status'), api('/v1/functions'), api('/v1/history'), api('/metrics'), api('/v1/events'),
  ]);
  showApp();
  const versions = {};
  await Promise.all(functions.map(async (f) => {
    versions[f.name] = (await api(`/v1/functions/${encodeURIComponent(f.name)}/versions`)).versions;
  }));
  document.getElementById('host').textContent =
    `thaw ${status.version} · ${status.functions} functions · ${status.slots_in_use}/${status.instance_slots} instance slots in use · ${status.allocator}`;
  renderFunctions(functions, versions);
  renderRate(history);
  renderMix(history);
  renderLatency(metrics);
  renderLimits(functions);
  renderEvents(events);
  await renderLogs();
}

async function tick() {
  try {
    await refresh();
  } catch (e) {
    if (e instanceof LoggedOut) { showLogin(); return; }
    say(`refresh failed: ${e.message}`, true);
  }
  setTimeout(tick, 2000);
}

document.getElementById('log-function').addEventListener('change', () => renderLogs().catch(() => {}));
// Logging out changes something: like every change it carries x-thaw-ui, which a plain
// form post (or another site's page) cannot add.
document.getElementById('logout').addEventListener('submit', async (event) => {
  event.preventDefault();
  await fetch('/ui/logout', { method: 'POST', credentials: 'same-origin', headers: { 'x-thaw-ui': '1' } });
  location.replace('/ui');
});
tick();

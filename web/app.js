// clusterway status page: vanilla JS, no build step, no external resources.
// Data: /api/v1/* (JSON); live updates: /api/v1/stream (server-sent events: hello, tick,
// table, event). The services table is paged, filtered and sorted by the server.
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  q: '', filter: '', sort: 'name', order: 'asc', offset: 0, limit: 50,
  history: [], selected: null, status: null, live: false, ticks: 0,
  loading: { services: false, flows: false, detail: false },
};

// ---------- formatting ----------
function esc(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}
function bytes(n) {
  if (!n) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + u[i];
}
function bps(n) { return bits(n * 8); }
function bits(v) {
  if (!v) return '0 bit/s';
  const u = ['bit/s', 'kbit/s', 'Mbit/s', 'Gbit/s'];
  let i = 0;
  while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
  return (v >= 100 ? v.toFixed(0) : v.toFixed(1)) + ' ' + u[i];
}
function num(n) { return Number(n || 0).toLocaleString('en-US'); }
function rate(n) {
  n = Number(n || 0);
  if (n === 0) return '0';
  return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n >= 1 ? n.toFixed(2).replace(/\.?0+$/, '') : n.toFixed(2);
}
function dur(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
}
function ago(ms) { return dur((Date.now() - ms) / 1000) + ' ago'; }
function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour12: false }); }
function hostport(a) { return esc(a); }

// ---------- API ----------
async function api(path) {
  const r = await fetch(path, { credentials: 'same-origin', cache: 'no-store' });
  if (r.status === 401) { location.href = '/'; throw new Error('unauthorized'); }
  if (!r.ok) throw new Error(path + ': ' + r.status);
  return r.json();
}

// ---------- header ----------
function pill(id, cls, text, title) {
  const el = $(id);
  el.className = 'pill ' + cls;
  el.textContent = text;
  el.title = title || text;
  el.hidden = false;
}
// The dataplane in use (flow offload or the proxy), and why when it is not the one asked for.
function renderDataplane(d) {
  if (!d) { $('h-dataplane').hidden = true; return; }
  const fallback = d.name !== d.requested;
  const ceiling = d.flow_ceiling ? ' · up to ' + num(d.flow_ceiling) + ' flows' : '';
  pill('h-dataplane', fallback ? 'warn' : 'ok', 'dataplane ' + d.name + (fallback ? ' (fallback)' : ''),
    fallback ? d.requested + ' unavailable: ' + d.reason : 'dataplane ' + d.name + ceiling);
}
function renderStatus(s) {
  state.status = s;
  $('version').textContent = 'v' + s.version;
  const ready = s.ready.ready;
  const failing = s.ready.checks.filter((c) => !c.ok).map((c) => c.name + ': ' + c.detail);
  pill('h-ready', ready ? 'ok' : 'bad', ready ? 'Ready' : 'Not ready', ready ? 'table, TUN and routes are ready' : failing.join('\n'));
  pill('h-source', 'muted', (s.source.kind === 'file' ? 'file ' : 'cluster ') + s.source.detail, 'source: ' + s.source.detail);
  const sy = s.sync;
  if (sy.state === 'synced') pill('h-sync', 'ok', 'synced ' + ago(sy.at));
  else if (sy.state === 'stale') pill('h-sync', 'bad', 'stale since ' + clock(sy.since) + ' — ' + sy.error, sy.error);
  else pill('h-sync', 'warn', 'syncing…');
  if (s.api) pill('h-api', s.api.up ? 'ok' : 'bad', 'API server ' + (s.api.up ? 'up' : 'down') + (s.api.reconnects ? ' · ' + s.api.reconnects + ' reconnects' : ''));
  else $('h-api').hidden = true;
  pill('h-tun', s.tun.up ? 'ok' : 'bad', s.tun.name + (s.tun.up ? ' up' : ' down'));
  pill('h-routes', s.routes.ok ? 'ok' : 'bad', s.routes.ok ? s.routes.installed + ' routes installed' : 'routes: ' + (s.routes.error || 'not installed'));
  // ClusterIPs that no route carries: the routes pill turns to a warning and names them.
  const nr = s.routes.not_routed || [];
  if (s.routes.ok && nr.length) pill('h-routes', 'warn', s.routes.installed + ' routes installed · ' + nr.length + ' ClusterIP' + (nr.length === 1 ? '' : 's') + ' not routed', nr.map((n) => n.detail).join('\n'));
  pill('h-uptime', 'muted', 'up ' + dur(s.uptime_s));
  renderDataplane(s.dataplane);

  $('k-services').textContent = num(s.table.services);
  const t = s.totals;
  $('k-flows').textContent = num(t.active_tcp + t.active_udp);
  $('k-flows-sub').textContent = num(t.active_tcp) + ' TCP · ' + num(t.active_udp) + ' UDP';
  $('k-gen').textContent = '#' + s.table.generation;
  $('k-gen-sub').textContent = num(s.table.ports) + ' ports · ' + num(s.table.exposed) + ' exposed';
  if (s.history) { state.history = s.history.slice(); drawCharts(); }
  if (s.latest) renderLatest(s.latest);
  renderAnnounce(s.announce);
}
// The announcement: each prefix the gateway's routing daemon announces (or stopped
// announcing), and since when.
function renderAnnounce(a) {
  const box = $('announce');
  if (!a || !a.prefixes.length) { box.hidden = true; return; }
  box.hidden = false;
  const cls = { announced: 'ok', draining: 'warn', withdrawn: 'bad' };
  $('announce-sub').textContent = (a.draining ? 'draining · ' : '') + num(a.changes) + ' changes';
  $('announce-list').innerHTML = a.prefixes.map((p) =>
    '<li><code>' + esc(p.prefix) + '</code> <span class="pill ' + cls[p.state] + '">' + esc(p.state) +
    '</span> <span class="sub">since ' + esc(clock(p.since)) + ' (' + esc(ago(p.since)) + ') · ' +
    esc(p.reason.replace(/_/g, ' ')) + '</span></li>').join('');
}
function renderLatest(p) {
  $('k-rate').textContent = rate(p.new_per_s);
  $('k-rate-sub').innerHTML = p.failed_per_s > 0 ? '<span class="bad">' + rate(p.failed_per_s) + ' failed/s</span>' : 'per second';
  $('k-bps').textContent = bps(p.to_endpoint_bps + p.to_client_bps);
  $('k-bps-sub').textContent = '↑ ' + bps(p.to_endpoint_bps) + ' · ↓ ' + bps(p.to_client_bps);
}

// ---------- charts (canvas, drawn by hand) ----------
// The axis top: four equal steps of 1, 2 or 5 × 10^k.
function niceMax(v) {
  if (v <= 0) return 4;
  const raw = v / 4;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * p) return 4 * m * p;
  return 40 * p;
}
function drawChart(canvas, series, fmt) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const n = 300; // the last five minutes
  const pts = state.history.slice(-n);
  let max = 0;
  for (const s of series) for (const p of pts) max = Math.max(max, s.get(p));
  max = niceMax(max);
  ctx.font = '11px system-ui, sans-serif';
  const labels = [0, 1, 2, 3, 4].map((i) => fmt((max * i) / 4));
  const left = Math.ceil(Math.max(...labels.map((l) => ctx.measureText(l).width))) + 14;
  const right = 8, top = 8, bottom = 20;
  const pw = w - left - right, ph = h - top - bottom;
  ctx.fillStyle = css.getPropertyValue('--muted');
  ctx.strokeStyle = css.getPropertyValue('--line');
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, Math.round(y) + 0.5); ctx.lineTo(w - right, Math.round(y) + 0.5); ctx.stroke();
    ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    ctx.fillText(labels[i], left - 8, y);
  }
  ctx.textAlign = 'left'; ctx.textBaseline = 'alphabetic';
  ctx.fillText('-5 min', left, h - 4);
  ctx.textAlign = 'right';
  ctx.fillText('now', w - right, h - 4);
  const x = (i) => left + pw - ((pts.length - 1 - i) * pw) / (n - 1);
  for (const s of series) {
    if (pts.length < 2) break;
    const color = css.getPropertyValue(s.color).trim();
    ctx.beginPath();
    pts.forEach((p, i) => {
      const y = top + ph - (s.get(p) / max) * ph;
      if (i === 0) ctx.moveTo(x(i), y); else ctx.lineTo(x(i), y);
    });
    ctx.strokeStyle = color; ctx.lineWidth = 1.8; ctx.lineJoin = 'round'; ctx.stroke();
    ctx.lineTo(x(pts.length - 1), top + ph); ctx.lineTo(x(0), top + ph); ctx.closePath();
    const g = ctx.createLinearGradient(0, top, 0, top + ph);
    g.addColorStop(0, color + '55'); g.addColorStop(1, color + '00');
    ctx.fillStyle = g; ctx.fill();
  }
}
function drawCharts() {
  drawChart($('chart-bytes'), [
    { color: '--c1', get: (p) => p.to_endpoint_bps * 8 },
    { color: '--c2', get: (p) => p.to_client_bps * 8 },
  ], (v) => bits(v).replace(' ', '\u2009'));
  drawChart($('chart-conns'), [
    { color: '--c3', get: (p) => p.new_per_s },
    { color: '--c4', get: (p) => p.failed_per_s },
  ], (v) => rate(v));
}
window.addEventListener('resize', drawCharts);

// ---------- services ----------
function stateBadge(r) {
  return notRoutedBadge(r) + stateOnlyBadge(r);
}
function notRoutedBadge(r) {
  if (!r.not_routed || !r.not_routed.length) return '';
  return '<span class="badge warn" title="' + esc(r.not_routed.map((n) => n.detail).join('\n')) + '">not routed</span>';
}
function stateOnlyBadge(r) {
  if (r.state === 'no_endpoints') return '<span class="badge bad" title="' + esc(r.reason) + '">no endpoints</span>';
  if (r.state === 'not_exposed') return '<span class="badge" title="' + esc(r.reason) + '">not exposed</span>';
  if (r.state === 'headless') return '<span class="badge" title="' + esc(r.reason) + '">headless</span>';
  return '';
}
function serviceRow(r) {
  const cls = r.state === 'no_endpoints' ? 'unservable' : r.state === 'not_exposed' ? 'notexposed' : '';
  const e = r.endpoints;
  const fail = r.last_failure
    ? '<span class="fail" title="' + esc(new Date(r.last_failure.at).toLocaleString()) + '">' + esc(r.last_failure.result.replace('_', ' ')) + ' · ' + ago(r.last_failure.at) + '</span>'
    : '<span class="sub">—</span>';
  return '<tr class="' + cls + '" data-ns="' + esc(r.namespace) + '" data-name="' + esc(r.name) + '">' +
    '<td><span class="ns">' + esc(r.namespace) + '/</span><span class="svc">' + esc(r.name) + '</span>' + stateBadge(r) + '</td>' +
    '<td class="mono">' + r.cluster_ips.map(esc).join('<br>') + '</td>' +
    '<td class="mono">' + r.ports.map(esc).join(', ') + '</td>' +
    '<td class="num eps"><b class="' + (e.ready ? '' : 'zero') + '">' + e.ready + '</b> / ' + e.serving + ' / ' + e.total + '</td>' +
    '<td class="num">' + num(r.active_flows) + '</td>' +
    '<td class="num">' + rate(r.conn_rate) + '</td>' +
    '<td class="num" title="to endpoints ' + bytes(r.bytes_to_endpoint) + ', to clients ' + bytes(r.bytes_to_client) + '">' + bytes(r.bytes_to_endpoint + r.bytes_to_client) + '</td>' +
    '<td>' + fail + '</td></tr>';
}
async function loadServices() {
  if (state.loading.services) { state.loading.servicesAgain = true; return; }
  state.loading.services = true;
  try {
    const p = new URLSearchParams({ q: state.q, sort: state.sort, order: state.order, limit: state.limit, offset: state.offset });
    if (state.filter) p.set('state', state.filter);
    const d = await api('/api/v1/services?' + p);
    const body = $('services').tBodies[0];
    body.innerHTML = d.items.length ? d.items.map(serviceRow).join('')
      : '<tr><td colspan="8" class="empty">' + (d.total ? 'No Service matches.' : 'The table has no Services.') + '</td></tr>';
    const from = d.matched ? d.offset + 1 : 0, to = d.offset + d.items.length;
    $('page-info').textContent = num(from) + '–' + num(to) + ' of ' + num(d.matched) + (d.matched !== d.total ? ' (filtered from ' + num(d.total) + ')' : '');
    $('prev').disabled = d.offset === 0;
    $('next').disabled = to >= d.matched;
    $('k-services-sub').innerHTML = d.unservable ? '<span class="bad">' + num(d.unservable) + ' unservable</span>' : 'all serving';
    document.querySelectorAll('#services th.sortable').forEach((th) => {
      th.classList.toggle('sorted', th.dataset.sort === state.sort);
      th.classList.toggle('desc', th.dataset.sort === state.sort && state.order === 'desc');
    });
  } catch (e) { console.warn(e); } finally {
    state.loading.services = false;
    if (state.loading.servicesAgain) { state.loading.servicesAgain = false; loadServices(); }
  }
}
let searchTimer;
$('search').addEventListener('input', (e) => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => { state.q = e.target.value.trim(); state.offset = 0; loadServices(); }, 180);
});
$('state-filter').addEventListener('click', (e) => {
  const b = e.target.closest('button'); if (!b) return;
  document.querySelectorAll('#state-filter button').forEach((x) => x.classList.toggle('on', x === b));
  state.filter = b.dataset.state; state.offset = 0; loadServices();
});
document.querySelectorAll('#services th.sortable').forEach((th) => th.addEventListener('click', () => {
  const k = th.dataset.sort;
  if (state.sort === k) state.order = state.order === 'asc' ? 'desc' : 'asc';
  else { state.sort = k; state.order = k === 'name' ? 'asc' : 'desc'; }
  state.offset = 0; loadServices();
}));
$('prev').addEventListener('click', () => { state.offset = Math.max(0, state.offset - state.limit); loadServices(); });
$('next').addEventListener('click', () => { state.offset += state.limit; loadServices(); });
$('services').tBodies[0].addEventListener('click', (e) => {
  const tr = e.target.closest('tr[data-name]'); if (tr) openDetail(tr.dataset.ns, tr.dataset.name);
});

// ---------- flows ----------
function flowRows(items, withService) {
  return items.map((f) => '<tr><td class="mono">' + hostport(f.client) + '</td>' +
    (withService ? '<td><span class="mono">' + esc(f.service) + '</span> <span class="badge">' + esc(f.protocol) + '</span></td>' : '<td class="mono">' + hostport(f.frontend) + ' <span class="badge">' + esc(f.protocol) + '</span></td>') +
    '<td class="mono">' + hostport(f.endpoint) + '</td><td class="num">' + dur(f.age_s) + '</td>' +
    '<td class="num">' + bytes(f.to_endpoint) + '</td><td class="num">' + bytes(f.to_client) + '</td></tr>').join('');
}
async function loadFlows() {
  if (state.loading.flows) return;
  state.loading.flows = true;
  try {
    const d = await api('/api/v1/flows?limit=200');
    $('flows').tBodies[0].innerHTML = d.items.length ? flowRows(d.items, true) : '<tr><td colspan="6" class="empty">No open flows.</td></tr>';
    $('flows-count').textContent = d.total > d.items.length ? 'newest ' + d.items.length + ' of ' + num(d.total) : num(d.total) + ' open';
  } catch (e) { console.warn(e); } finally { state.loading.flows = false; }
}

// ---------- events ----------
function eventItem(ev) {
  const svc = ev.service ? '<span class="svcname" data-svc="' + esc(ev.service) + '">' + esc(ev.service) + '</span> ' : '';
  return '<li class="lvl-' + ev.level + '"><time title="' + esc(new Date(ev.at).toLocaleString()) + '">' + clock(ev.at) + '</time>' +
    '<div><span class="kind">' + esc(ev.kind.replace(/_/g, ' ')) + '</span>' + svc + esc(ev.message) + '</div></li>';
}
let lastEventSeq = 0;
async function loadEvents() {
  try {
    const d = await api('/api/v1/events?limit=200');
    $('events').innerHTML = d.items.length ? d.items.map(eventItem).join('') : '<li class="empty">No events yet.</li>';
    lastEventSeq = d.items.length ? d.items[0].seq : 0;
  } catch (e) { console.warn(e); }
}
function addEvent(ev) {
  if (ev.seq <= lastEventSeq) return;
  lastEventSeq = ev.seq;
  const list = $('events');
  if (list.querySelector('.empty')) list.innerHTML = '';
  list.insertAdjacentHTML('afterbegin', eventItem(ev));
  while (list.children.length > 200) list.lastElementChild.remove();
}
$('events').addEventListener('click', (e) => {
  const s = e.target.closest('.svcname'); if (!s) return;
  const [ns, ...rest] = s.dataset.svc.split('/'); openDetail(ns, rest.join('/'));
});

// ---------- service detail ----------
function cond(e) {
  const b = [];
  b.push(e.ready ? '<span class="badge ok">ready</span>' : '<span class="badge bad">not ready</span>');
  if (e.serving && !e.ready) b.push('<span class="badge warn">serving</span>');
  if (e.terminating) b.push('<span class="badge warn">terminating</span>');
  if (e.usable) b.push('<span class="badge ok">in use</span>');
  return b.join('');
}
function renderDetail(d) {
  const s = d.service;
  $('d-title').innerHTML = '<span class="ns">' + esc(s.namespace) + '/</span>' + esc(s.name) + stateBadge(s);
  $('d-sub').textContent = s.type + ' · ' + s.cluster_ips.join(', ') + ' · ' + s.ports.join(', ');
  let h = '';
  if (s.reason) h += '<div class="reason">' + esc(s.reason) + '</div>';
  for (const n of s.not_routed || []) h += '<div class="reason">Not routed: ' + esc(n.detail) + '. No client reaches this address through the gateway; add its range with --service-cidr.</div>';
  h += '<section><div class="stats">' +
    '<span><b>' + s.endpoints.ready + '</b>ready</span><span><b>' + s.endpoints.serving + '</b>serving</span><span><b>' + s.endpoints.total + '</b>endpoints</span>' +
    '<span><b>' + num(s.active_flows) + '</b>active flows</span><span><b>' + rate(s.conn_rate) + '</b>conn/s</span><span><b>' + num(s.connections) + '</b>connections</span>' +
    '<span><b>' + bytes(s.bytes_to_endpoint) + '</b>to endpoints</span><span><b>' + bytes(s.bytes_to_client) + '</b>to clients</span></div></section>';
  for (const p of d.ports) {
    h += '<section><h3>' + esc(p.frontend) + ' / ' + esc(p.protocol) + (p.name ? ' · ' + esc(p.name) : '') +
      (p.affinity_timeout_s != null ? ' · ClientIP affinity ' + dur(p.affinity_timeout_s) : '') + '</h3>';
    h += p.endpoints.length ? '<table><thead><tr><th>Endpoint</th><th>Pod</th><th>Node</th><th>Conditions</th></tr></thead><tbody>' +
      p.endpoints.map((e) => '<tr><td class="mono">' + esc(e.address) + '</td><td>' + esc(e.pod || '—') + '</td><td>' + esc(e.node || '—') + '</td><td>' + cond(e) + '</td></tr>').join('') +
      '</tbody></table>' : '<div class="empty">No endpoints: connections are refused.</div>';
    h += '</section>';
  }
  if (d.pods && d.pods.length) {
    const zone = s.namespace + '.svc';
    h += '<section><h3>Pods (headless: reached by name and address)</h3><table><thead><tr><th>Name</th><th>Address</th><th>Pod</th><th>Ports</th></tr></thead><tbody>' +
      d.pods.map((p) => '<tr><td class="mono">' + esc(p.name + '.' + s.name + '.' + zone) + '</td><td class="mono">' + esc(p.address) + '</td><td>' + esc(p.pod || '—') + '</td><td class="mono">' + p.ports.map(esc).join(', ') + '</td></tr>').join('') +
      '</tbody></table></section>';
  }
  if (d.counters.length) {
    h += '<section><h3>Connections by result</h3><table><thead><tr><th>Port</th><th class="num">ok</th><th class="num">no endpoints</th><th class="num">dial failed</th><th class="num">policy</th><th class="num">table full</th></tr></thead><tbody>' +
      d.counters.map((c) => '<tr><td class="mono">' + c.port + '/' + c.protocol + '</td>' +
        ['ok', 'no_endpoints', 'dial_failed', 'rejected_policy', 'table_full'].map((k) => '<td class="num">' + num(c.connections[k]) + '</td>').join('') + '</tr>').join('') +
      '</tbody></table></section>';
  }
  h += '<section><h3>Flows (' + num(d.flows.total) + ')</h3>' + (d.flows.items.length
    ? '<table><thead><tr><th>Client</th><th>Frontend</th><th>Endpoint</th><th class="num">Age</th><th class="num">↑</th><th class="num">↓</th></tr></thead><tbody>' + flowRows(d.flows.items, false) + '</tbody></table>'
    : '<div class="empty">No open flows.</div>') + '</section>';
  h += '<section><h3>Dial failures and refusals</h3>' + (d.failures.length
    ? '<ol class="events">' + d.failures.map(eventItem).join('') + '</ol>' : '<div class="empty">None recently.</div>') + '</section>';
  h += '<section><h3>Events</h3>' + (d.events.length
    ? '<ol class="events">' + d.events.map(eventItem).join('') + '</ol>' : '<div class="empty">None recently.</div>') + '</section>';
  $('d-body').innerHTML = h;
}
async function loadDetail() {
  const sel = state.selected; if (!sel || state.loading.detail) return;
  state.loading.detail = true;
  try {
    const r = await fetch('/api/v1/services/' + encodeURIComponent(sel.ns) + '/' + encodeURIComponent(sel.name), { credentials: 'same-origin', cache: 'no-store' });
    if (r.status === 404) { $('d-body').innerHTML = '<div class="reason">This Service is no longer in the table.</div>'; return; }
    if (r.ok && state.selected === sel) renderDetail(await r.json());
  } catch (e) { console.warn(e); } finally { state.loading.detail = false; }
}
function openDetail(ns, name) {
  state.selected = { ns, name };
  $('drawer').hidden = false; $('scrim').hidden = false;
  $('d-title').textContent = ns + '/' + name; $('d-sub').textContent = ''; $('d-body').innerHTML = '';
  history.replaceState(null, '', '#' + ns + '/' + name);
  loadDetail();
}
function closeDetail() {
  state.selected = null; $('drawer').hidden = true; $('scrim').hidden = true;
  history.replaceState(null, '', location.pathname);
}
$('d-close').addEventListener('click', closeDetail);
$('scrim').addEventListener('click', closeDetail);
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') closeDetail();
  if (e.key === '/' && document.activeElement !== $('search')) { e.preventDefault(); $('search').focus(); }
});

// ---------- live updates ----------
function setLive(on, text) {
  state.live = on;
  const el = $('live');
  el.className = 'live ' + (on ? 'on' : 'off');
  el.lastElementChild.textContent = text;
}
function onTick(t) {
  state.ticks++;
  state.history.push(t.point);
  if (state.history.length > 600) state.history.shift();
  renderLatest(t.point);
  drawCharts();
  loadServices();
  if (state.ticks % 2 === 0) loadFlows();
  if (state.ticks % 5 === 0) api('/api/v1/status?history=false').then(renderStatus).catch(() => {});
  loadDetail();
}
let pollTimer = null;
function connect() {
  const es = new EventSource('/api/v1/stream', { withCredentials: true });
  es.addEventListener('hello', () => {
    setLive(true, 'live');
    if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  });
  es.addEventListener('tick', (m) => onTick(JSON.parse(m.data)));
  es.addEventListener('table', () => {
    loadServices(); loadDetail();
    api('/api/v1/status?history=false').then(renderStatus).catch(() => {});
  });
  es.addEventListener('event', (m) => addEvent(JSON.parse(m.data)));
  es.onerror = () => {
    setLive(false, 'reconnecting');
    // EventSource retries by itself; poll meanwhile so the page stays current.
    if (!pollTimer) pollTimer = setInterval(() => { loadServices(); loadFlows(); loadEvents(); api('/api/v1/status').then(renderStatus).catch(() => {}); }, 3000);
  };
}

async function start() {
  try { renderStatus(await api('/api/v1/status')); } catch (e) { console.warn(e); }
  await Promise.all([loadServices(), loadFlows(), loadEvents()]);
  const m = location.hash.match(/^#([^/]+)\/(.+)$/);
  if (m) openDetail(decodeURIComponent(m[1]), decodeURIComponent(m[2]));
  connect();
}
start();

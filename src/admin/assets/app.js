// The broker's web console: a small single-page app over /api/v1 (docs/http-api.md).
// Every value from the broker is put into the page with textContent (via `h`), never as
// HTML, so record keys and values, topic names and error messages cannot inject markup.
'use strict';

const CSRF_TOKEN = document.querySelector('meta[name="csrf-token"]').content;
const main = document.getElementById('main');
const STATS_POLL_MS = 1000;
const VIEW_POLL_MS = 2000;
const HISTORY_POINTS = 120;

// ---- DOM and formatting helpers ------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)) + ' ' + units[i];
}
function fmtNum(n) { return n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'); }
function fmtRate(n) { return n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString('en-US'); }
function fmtDuration(ms) {
  if (ms === null || ms === undefined) return '—';
  let s = Math.floor(ms / 1000);
  const d = Math.floor(s / 86400); s %= 86400;
  const hr = Math.floor(s / 3600); s %= 3600;
  const m = Math.floor(s / 60); s %= 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}
function fmtMs(us) {
  if (us >= 1000) return (us / 1000).toFixed(us >= 100000 ? 0 : 1) + ' ms';
  return (us >= 10 || us === 0 ? Math.round(us) : us.toFixed(1)) + ' µs';
}
function pill(text, kind) { return h('span', { class: 'pill ' + (kind || '') }, text); }

function toast(message, bad) {
  const t = document.getElementById('toast');
  t.textContent = message;
  t.className = 'show' + (bad ? ' bad' : '');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ''; }, 3500);
}

// ---- API -----------------------------------------------------------------------------------

async function api(path) {
  const r = await fetch('/api/v1' + path, { headers: { Accept: 'application/json' } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// Mutations: POST with the page's CSRF token and a JSON body (see src/admin/http.rs).
async function post(path, payload) {
  const r = await fetch('/api/v1' + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': CSRF_TOKEN },
    body: JSON.stringify(payload || {}),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function setLive(ok) {
  const el = document.getElementById('live');
  el.className = 'live ' + (ok ? 'ok' : 'down');
  document.getElementById('live-text').textContent = ok ? 'live' : 'unreachable';
}

// ---- Dialog (every action goes through it) --------------------------------------------------

const dialog = document.getElementById('dialog');
let dialogHandler = null;

function openDialog({ title, body, okText, danger, onOk }) {
  document.getElementById('dialog-title').textContent = title;
  const bodyEl = document.getElementById('dialog-body');
  bodyEl.replaceChildren(...[].concat(body));
  document.getElementById('dialog-error').textContent = '';
  const ok = document.getElementById('dialog-ok');
  ok.textContent = okText || 'OK';
  ok.className = 'btn primary' + (danger ? ' danger' : '');
  ok.disabled = false;
  dialogHandler = onOk;
  if (!dialog.open) dialog.showModal();
  const first = bodyEl.querySelector('input');
  if (first) first.focus(); else ok.focus();
}

document.getElementById('dialog-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  if (!dialogHandler) { dialog.close(); return; }
  const ok = document.getElementById('dialog-ok');
  ok.disabled = true;
  try {
    const keepOpen = await dialogHandler();
    if (!keepOpen) dialog.close();
  } catch (err) {
    document.getElementById('dialog-error').textContent = err.message;
  } finally {
    ok.disabled = false;
  }
});
document.getElementById('dialog-cancel').addEventListener('click', () => dialog.close());

function field(label, input) { return h('div', { class: 'field' }, h('label', { for: input.id }, label), input); }

// ---- Live stats: polled always, so charts have history when a page opens --------------------

const history = [];
let lastStats = null;

function intervalQuantile(bounds, prev, cur, q) {
  const delta = cur.buckets.map((b, i) => b - (prev ? prev.buckets[i] : 0));
  const total = delta.reduce((a, b) => a + b, 0);
  if (total <= 0) return null;
  const target = q * total;
  let seen = 0;
  for (let i = 0; i < delta.length; i++) {
    if (seen + delta[i] >= target) {
      const lo = i === 0 ? 0 : bounds[i - 1];
      const hi = i < bounds.length ? bounds[i] : bounds[bounds.length - 1];
      const within = delta[i] ? (target - seen) / delta[i] : 1;
      return lo + (hi - lo) * within;
    }
    seen += delta[i];
  }
  return bounds[bounds.length - 1];
}

async function pollStats() {
  try {
    const s = await api('/stats');
    setLive(true);
    if (lastStats && s.time_ms > lastStats.time_ms) {
      const dt = (s.time_ms - lastStats.time_ms) / 1000;
      const b = s.latency_bucket_bounds_us;
      history.push({
        t: s.time_ms,
        bytesIn: (s.bytes_in - lastStats.bytes_in) / dt,
        bytesOut: (s.bytes_out - lastStats.bytes_out) / dt,
        msgsIn: (s.messages_in - lastStats.messages_in) / dt,
        produceP50: intervalQuantile(b, lastStats.produce_latency, s.produce_latency, 0.5),
        produceP99: intervalQuantile(b, lastStats.produce_latency, s.produce_latency, 0.99),
        fetchP99: intervalQuantile(b, lastStats.fetch_latency, s.fetch_latency, 0.99),
      });
      while (history.length > HISTORY_POINTS) history.shift();
    }
    lastStats = s;
    drawCharts();
  } catch (e) {
    setLive(false);
  }
}

// minScale: the y range when nothing happened (no zero-height axis).
function drawChart(canvas, series, format, minScale) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  if (!w || !hgt) return;
  canvas.width = w * dpr; canvas.height = hgt * dpr;
  const ctx = canvas.getContext('2d');
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, hgt);
  const left = 64, right = 8, top = 8, bottom = 20;
  let max = 0;
  for (const s of series) for (const p of history) { const v = p[s.key]; if (v !== null && v > max) max = v; }
  if (max <= 0) max = minScale;
  const mag = Math.pow(10, Math.floor(Math.log10(max)));
  const nice = [1, 2, 2.5, 5, 10].map(x => x * mag).find(x => x >= max) || max;
  const css = getComputedStyle(document.documentElement);
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#627084';
  ctx.strokeStyle = '#e3e8ef';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + (hgt - top - bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(left, y + 0.5); ctx.lineTo(w - right, y + 0.5); ctx.stroke();
    ctx.textAlign = 'right';
    ctx.fillText(format(nice * i / 4), left - 6, y + 4);
  }
  ctx.textAlign = 'left';
  ctx.fillText(`last ${Math.round(HISTORY_POINTS * STATS_POLL_MS / 60000)} min`, left, hgt - 4);
  const x = (i) => left + (w - left - right) * (i + HISTORY_POINTS - history.length) / (HISTORY_POINTS - 1);
  for (const s of series) {
    ctx.strokeStyle = css.getPropertyValue(s.color).trim() || s.color;
    ctx.lineWidth = 1.8;
    ctx.beginPath();
    let started = false;
    history.forEach((p, i) => {
      const v = p[s.key];
      if (v === null || v === undefined) { started = false; return; }
      const y = top + (hgt - top - bottom) * (1 - v / nice);
      if (!started) { ctx.moveTo(x(i), y); started = true; } else ctx.lineTo(x(i), y);
    });
    ctx.stroke();
  }
}

const THROUGHPUT = [
  { key: 'bytesIn', label: 'in', color: '--chart-in' },
  { key: 'bytesOut', label: 'out', color: '--chart-out' },
];
const LATENCY = [
  { key: 'produceP50', label: 'produce p50', color: '--chart-p50' },
  { key: 'produceP99', label: 'produce p99', color: '--chart-p99' },
  { key: 'fetchP99', label: 'fetch p99 (incl. long-poll wait)', color: '--chart-out' },
];

function drawCharts() {
  const t = document.getElementById('chart-throughput');
  if (t) drawChart(t, THROUGHPUT, (v) => fmtBytes(v) + '/s', 1024);
  const l = document.getElementById('chart-latency');
  if (l) drawChart(l, LATENCY, fmtMs, 1000);
  const last = history[history.length - 1];
  const m = document.getElementById('msgs-rate');
  if (m && last) m.textContent = fmtRate(last.msgsIn) + ' msg/s in';
}

function legend(series) {
  return h('div', { class: 'legend' }, series.map(s =>
    h('span', {}, h('i', { class: 'swatch ' + s.color.slice(2) }), s.label)));
}

function chartsCard() {
  return h('div', { class: 'grid two' },
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'Throughput'), legend(THROUGHPUT),
        h('span', { class: 'muted', id: 'msgs-rate' })),
      h('canvas', { class: 'chart', id: 'chart-throughput', role: 'img', 'aria-label': 'bytes in and out per second' })),
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'Latency'), legend(LATENCY)),
      h('canvas', { class: 'chart', id: 'chart-latency', role: 'img', 'aria-label': 'produce and fetch latency' })));
}

// ---- Views ---------------------------------------------------------------------------------

function kpi(label, value, bad) {
  return h('div', { class: 'card kpi' }, h('div', { class: 'label' }, label),
    h('div', { class: 'value' + (bad ? ' bad' : '') }, value));
}

async function viewOverview(el) {
  const [o, t] = await Promise.all([api('/overview'), api('/topics')]);
  document.getElementById('cluster-id').textContent = o.cluster_id ? 'cluster ' + o.cluster_id : '';
  const quorumKnown = o.quorum !== null;
  const showOrder = o.brokers.some(b => b.registration_order !== null);
  const brokers = h('table', {},
    h('thead', {}, h('tr', {},
      h('th', {}, 'ID'), h('th', {}, 'Address'), h('th', {}, 'State'),
      showOrder ? h('th', { class: 'num' }, 'Registration') : null,
      h('th', {}, 'Role'), h('th', {}, 'Uptime'), h('th', {}, 'Version'))),
    h('tbody', {}, o.brokers.map(b => h('tr', { 'data-broker': b.node_id },
      h('td', {}, String(b.node_id), b.is_this_node ? h('span', { class: 'muted' }, ' (this node)') : null),
      h('td', { class: 'mono' }, b.address),
      h('td', {}, pill(b.state, b.state === 'online' ? 'ok' : 'bad')),
      showOrder ? h('td', { class: 'num' }, b.registration_order === null ? '—' : '#' + b.registration_order) : null,
      h('td', {},
        quorumKnown ? (b.is_quorum_leader ? pill('quorum leader', 'accent') : pill('voter')) :
          (b.is_controller ? pill('controller', 'accent') : null)),
      h('td', {}, b.uptime_ms === null ? '—' : fmtDuration(b.uptime_ms)),
      h('td', {}, b.version || '—')))));
  const totalSize = t.topics.reduce((a, x) => a + x.size_bytes, 0);
  el.replaceChildren(
    h('h1', {}, 'Overview', h('span', { class: 'sub' },
      `node ${o.this_node_id} · ${o.shards} shard${o.shards === 1 ? '' : 's'} · metadata v${o.metadata_version}`)),
    h('div', { class: 'grid kpis' },
      kpi('Brokers', fmtNum(o.brokers.length)),
      kpi('Topics', fmtNum(o.topics)),
      kpi('Partitions', fmtNum(o.partitions)),
      kpi('Under-replicated', fmtNum(o.under_replicated_partitions), o.under_replicated_partitions > 0),
      kpi('Size on disk', fmtBytes(totalSize)),
      kpi('Connections', lastStats ? fmtNum(lastStats.connections) : '—')),
    chartsCard(),
    h('section', { class: 'card' }, h('div', { class: 'card-head' }, h('h2', {}, 'Brokers'),
      quorumKnown ? null : h('span', { class: 'muted' }, 'single coordinator (no replicated quorum in this build)')), brokers));
  drawCharts();
}

function topicsTable(topics) {
  if (!topics.length) return h('div', { class: 'empty' }, 'No topics yet. Create one, or produce with auto-create on.');
  return h('table', { id: 'topics-table' },
    h('thead', {}, h('tr', {},
      h('th', {}, 'Topic'), h('th', { class: 'num' }, 'Partitions'), h('th', { class: 'num' }, 'Replication'),
      h('th', { class: 'num' }, 'Under-replicated'), h('th', { class: 'num' }, 'Messages'),
      h('th', { class: 'num' }, 'Msgs in/s'), h('th', { class: 'num' }, 'Size on disk'))),
    h('tbody', {}, topics.map(t => h('tr', { 'data-topic': t.name },
      h('td', {}, h('a', { href: '#/topics/' + encodeURIComponent(t.name) }, t.name)),
      h('td', { class: 'num partitions' }, fmtNum(t.partitions)),
      h('td', { class: 'num' }, fmtNum(t.replication_factor)),
      h('td', { class: 'num' }, t.under_replicated_partitions ? pill(String(t.under_replicated_partitions), 'bad') : '0'),
      h('td', { class: 'num messages' }, fmtNum(t.messages)),
      h('td', { class: 'num' }, fmtRate(t.messages_in_per_sec)),
      h('td', { class: 'num' }, fmtBytes(t.size_bytes))))));
}

function createTopicDialog() {
  const name = h('input', { id: 'f-name', required: true, maxlength: 249, pattern: '[a-zA-Z0-9._\\-]+', autocomplete: 'off', placeholder: 'orders' });
  const parts = h('input', { id: 'f-partitions', type: 'number', min: 1, max: 100000, value: 3, required: true });
  const rf = h('input', { id: 'f-rf', type: 'number', min: 1, max: 32, value: 1, required: true });
  openDialog({
    title: 'Create topic',
    body: [field('Name', name), field('Partitions', parts), field('Replication factor', rf)],
    okText: 'Next',
    onOk: async () => {
      const topic = { name: name.value.trim(), partitions: Number(parts.value), replication_factor: Number(rf.value) };
      if (!/^[a-zA-Z0-9._-]{1,249}$/.test(topic.name)) throw new Error('Names use letters, digits, ".", "_" and "-".');
      openDialog({
        title: 'Confirm',
        body: h('p', {}, 'Create topic ', h('b', { class: 'mono' }, topic.name), ` with ${topic.partitions} partition(s) and replication factor ${topic.replication_factor}?`),
        okText: 'Create topic',
        onOk: async () => {
          await post('/topics', topic);
          toast(`Created topic ${topic.name}`);
          refresh();
        },
      });
      return true;
    },
  });
}

async function viewTopics(el) {
  const t = await api('/topics');
  el.replaceChildren(
    h('h1', {}, 'Topics', h('span', { class: 'sub' }, `${t.topics.length} topic(s)`)),
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'All topics'),
        h('button', { class: 'btn primary', id: 'create-topic', onclick: createTopicDialog }, 'Create topic')),
      topicsTable(t.topics)));
}

let messagesPartition = 0;

async function loadMessages(name, partition, container) {
  const m = await api(`/topics/${encodeURIComponent(name)}/partitions/${partition}/messages?limit=20`);
  const rows = m.messages.slice().reverse().map(msg => h('tr', { 'data-offset': msg.offset },
    h('td', { class: 'num mono' }, String(msg.offset)),
    h('td', { class: 'mono' }, new Date(msg.timestamp_ms).toISOString().replace('T', ' ').replace('Z', '')),
    h('td', { class: 'msg key' }, msg.key === null ? h('span', { class: 'muted' }, 'null') : msg.key),
    h('td', { class: 'msg value' }, msg.value === null ? h('span', { class: 'muted' }, 'null') : msg.value,
      msg.truncated ? h('span', { class: 'cut' }, `(cut to ${m.display_chars} chars of ${fmtBytes(msg.value_bytes)})`) : null)));
  container.replaceChildren(
    m.messages.length ? h('table', { id: 'messages-table' },
      h('thead', {}, h('tr', {}, h('th', { class: 'num' }, 'Offset'), h('th', {}, 'Timestamp (UTC)'), h('th', {}, 'Key'), h('th', {}, 'Value'))),
      h('tbody', {}, rows)) : h('div', { class: 'empty' }, `No messages in partition ${partition} yet.`),
    ...(m.problem ? [h('p', { class: 'error' }, m.problem)] : []));
}

async function viewTopic(el, name) {
  const t = await api('/topics/' + encodeURIComponent(name));
  if (messagesPartition >= t.partitions.length) messagesPartition = 0;
  const select = h('select', { id: 'messages-partition', onchange: (e) => { messagesPartition = Number(e.target.value); refresh(); } },
    t.partitions.map(p => h('option', { value: p.partition, selected: p.partition === messagesPartition }, 'partition ' + p.partition)));
  const messages = h('div', { id: 'messages' });
  const addPartitions = () => {
    const count = h('input', { id: 'f-count', type: 'number', min: t.partitions.length + 1, value: t.partitions.length + 1, required: true });
    openDialog({
      title: 'Add partitions to ' + name,
      body: [h('p', { class: 'muted' }, `The topic has ${t.partitions.length}. Partitions cannot be removed later, and keyed records may map to other partitions.`),
        field('New total partition count', count)],
      okText: 'Add partitions',
      onOk: async () => { await post(`/topics/${encodeURIComponent(name)}/partitions`, { count: Number(count.value) }); toast('Partitions added'); refresh(); },
    });
  };
  const deleteTopic = () => {
    const confirmName = h('input', { id: 'f-confirm', autocomplete: 'off', placeholder: name });
    openDialog({
      title: 'Delete topic',
      body: [h('p', {}, 'This deletes ', h('b', { class: 'mono' }, name), ' and all its data. Type its name to confirm.'), field('Topic name', confirmName)],
      okText: 'Delete topic', danger: true,
      onOk: async () => {
        if (confirmName.value !== name) throw new Error('The name does not match.');
        await post(`/topics/${encodeURIComponent(name)}/delete`, {});
        toast('Deleted ' + name);
        location.hash = '#/topics';
      },
    });
  };
  el.replaceChildren(
    h('div', { class: 'crumbs' }, h('a', { href: '#/topics' }, 'Topics'), ' / '),
    h('h1', {}, h('span', { class: 'mono', id: 'topic-name' }, t.name), h('span', { class: 'sub' }, 'id ' + t.id)),
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, `Partitions (${t.partitions.length})`),
        h('div', { class: 'actions' },
          h('button', { class: 'btn', id: 'add-partitions', onclick: addPartitions }, 'Add partitions'),
          h('button', { class: 'btn danger', id: 'delete-topic', onclick: deleteTopic }, 'Delete topic'))),
      h('table', { id: 'partitions-table' },
        h('thead', {}, h('tr', {}, h('th', { class: 'num' }, 'Partition'), h('th', {}, 'Leader'), h('th', {}, 'Replicas'),
          h('th', {}, 'ISR'), h('th', { class: 'num' }, 'Log start'), h('th', { class: 'num' }, 'Log end'),
          h('th', { class: 'num' }, 'High watermark'), h('th', { class: 'num' }, 'Size'), h('th', { class: 'num' }, 'Shard'))),
        h('tbody', {}, t.partitions.map(p => h('tr', { 'data-partition': p.partition },
          h('td', { class: 'num' }, String(p.partition)),
          h('td', {}, String(p.leader), ' ', h('span', { class: 'muted' }, 'epoch ' + p.leader_epoch)),
          h('td', {}, p.replicas.join(', ')),
          h('td', {}, p.isr.join(', '), p.under_replicated ? ' ' : null, p.under_replicated ? pill('under-replicated', 'bad') : null),
          h('td', { class: 'num log-start' }, fmtNum(p.log_start_offset)),
          h('td', { class: 'num log-end' }, fmtNum(p.log_end_offset)),
          h('td', { class: 'num' }, fmtNum(p.high_watermark)),
          h('td', { class: 'num' }, fmtBytes(p.size_bytes)),
          h('td', { class: 'num' }, p.shard === null ? '—' : String(p.shard))))))),
    h('section', { class: 'card' },
      h('div', { class: 'card-head' }, h('h2', {}, 'Newest messages'),
        h('div', { class: 'toolbar' }, select, h('span', { class: 'muted' }, 'keys and values shown as text, cut at 256 characters'))),
      messages));
  await loadMessages(name, messagesPartition, messages);
}

async function viewGroups(el) {
  const g = await api('/groups');
  let body;
  if (!g.available) {
    body = h('div', { class: 'empty', id: 'groups-unavailable' },
      h('p', {}, 'Consumer groups are not available in this build yet.'),
      h('p', { class: 'muted' }, 'When the group coordinator is enabled, groups appear here with their state, members, assignments and lag per partition.'));
  } else if (!g.groups.length) {
    body = h('div', { class: 'empty' }, 'No consumer groups yet.');
  } else {
    body = h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Group'), h('th', {}, 'State'), h('th', { class: 'num' }, 'Members'), h('th', { class: 'num' }, 'Total lag'), h('th', {}, ''))),
      h('tbody', {}, g.groups.map(x => h('tr', { 'data-group': x.group_id },
        h('td', { class: 'mono' }, x.group_id),
        h('td', {}, pill(x.state, x.state === 'Stable' ? 'ok' : x.state === 'Empty' ? '' : 'warn')),
        h('td', { class: 'num' }, fmtNum(x.members.length)),
        h('td', { class: 'num' }, fmtNum(x.offsets.reduce((a, o) => a + o.lag, 0))),
        h('td', {}, x.state === 'Empty' ? h('button', { class: 'btn danger', onclick: () => openDialog({
          title: 'Delete group', body: h('p', {}, 'Delete the empty group ', h('b', { class: 'mono' }, x.group_id), ' and its committed offsets?'),
          okText: 'Delete group', danger: true,
          onOk: async () => { await post(`/groups/${encodeURIComponent(x.group_id)}/delete`, {}); toast('Deleted group'); refresh(); },
        }) }, 'Delete') : null)))));
  }
  el.replaceChildren(h('h1', {}, 'Consumer groups'), h('section', { class: 'card' }, body));
}

// ---- Router --------------------------------------------------------------------------------

let viewTimer = null;
let rendering = false;

function route() {
  const hash = location.hash.replace(/^#/, '') || '/';
  const m = hash.match(/^\/topics\/(.+)$/);
  if (m) return { nav: 'topics', render: (el) => viewTopic(el, decodeURIComponent(m[1])) };
  if (hash === '/topics') return { nav: 'topics', render: viewTopics };
  if (hash === '/groups') return { nav: 'groups', render: viewGroups };
  return { nav: 'overview', render: viewOverview };
}

async function refresh() {
  // Do not repaint under an open dialog: it would throw away what the user is typing.
  if (rendering || dialog.open) return;
  rendering = true;
  const r = route();
  for (const a of document.querySelectorAll('#nav a[data-nav]')) a.classList.toggle('active', a.dataset.nav === r.nav);
  try {
    await r.render(main);
  } catch (e) {
    main.replaceChildren(h('div', { class: 'card empty' }, 'Could not load this page: ', e.message));
  } finally {
    rendering = false;
  }
}

window.addEventListener('hashchange', () => { main.replaceChildren(); refresh(); });
window.addEventListener('resize', drawCharts);
refresh();
api('/overview').then((o) => {
  document.getElementById('cluster-id').textContent = o.cluster_id ? 'cluster ' + o.cluster_id : '';
}).catch(() => {});
pollStats();
setInterval(pollStats, STATS_POLL_MS);
viewTimer = setInterval(refresh, VIEW_POLL_MS);

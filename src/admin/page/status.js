// georouter's status page: polls ./status every 2 s and renders it; drains and
// undrains through the admin API with the operator's token. No dependencies.
'use strict';

const POLL_MS = 2000;
const TOKEN_KEY = 'georouter-admin-token';
let token = sessionStorage.getItem(TOKEN_KEY) || '';
let previous = null; // the last status, for per-interval shares
let latest = null;
let pending = null;

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('data-') || k === 'title' || k === 'datetime' || k === 'type') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function authHeaders(t) {
  return t ? { Authorization: 'Bearer ' + t } : {};
}

function setConn(state, text) {
  const c = $('#conn');
  c.dataset.state = state;
  c.textContent = text;
}

async function refresh() {
  clearTimeout(pending);
  try {
    const r = await fetch('status', { headers: authHeaders(token), cache: 'no-store' });
    if (r.status === 401) {
      $('#login').hidden = false;
      setConn('locked', 'token needed');
      return;
    }
    if (!r.ok) throw new Error(r.status + ': ' + (await r.text()).trim());
    $('#login').hidden = true;
    const s = await r.json();
    previous = latest;
    latest = s;
    setConn('live', 'live · ' + utc(new Date()));
    render(s, previous);
  } catch (e) {
    setConn('offline', 'cannot reach the router (' + e.message + '); retrying');
  } finally {
    pending = setTimeout(refresh, POLL_MS);
  }
}

// Times as the logs have them: UTC, said so.
function utc(d) {
  return d.toISOString().slice(11, 19) + ' UTC';
}

function render(s, prev) {
  $('#build').textContent = 'v' + s.version + ' · ' + s.commit + ' · policy generation ' + s.generation +
    (s.fleet ? ' · fleet member ' + s.fleet.instance + (s.fleet.connected ? ' (etcd connected, revision ' +
      s.fleet.applied_revision + ')' : '') : '') +
    ' · since start: ' + s.failovers.toLocaleString() + ' failovers, ' + s.router_5xx.toLocaleString() +
    ' answered 5xx by the router, ' + s.shed.toLocaleString() + ' shed at capacity (503), ' +
    s.spilled_over.toLocaleString() + ' spilled over';
  const alerts = $('#alerts');
  alerts.hidden = s.alerts.length === 0;
  alerts.replaceChildren(...s.alerts.map((a) => el('p', {}, a)));
  if (s.fleet) setConn(s.fleet.connected ? 'live' : 'degraded', s.fleet.connected
    ? 'live · ' + utc(new Date()) : 'live · etcd unreachable · ' + utc(new Date()));
  renderJurisdictions(s, prev);
  renderRegions(s, prev);
  renderFleet(s.fleet);
  renderEvents(s.events);
}

// A counter's growth since the previous poll (0 on the first).
function grew(now, before) {
  return before === undefined ? 0 : Math.max(0, now - before);
}

function renderJurisdictions(s, prev) {
  const box = $('#jurisdictions');
  if (s.jurisdictions.length === 0) return;
  const before = new Map((prev ? prev.jurisdictions : []).map((j) => [j.name, j]));
  box.replaceChildren(...s.jurisdictions.map((j) => {
    const total = j.regions.length;
    const cls = j.serving === 0 ? 'card none' : j.serving < total ? 'card partial' : 'card';
    const note = j.serving === 0
      ? (j.strict ? 'residents get 503 (fail closed)' : 'residents go elsewhere')
      : j.regions.join(', ');
    const b = before.get(j.name);
    const served = grew(j.served, b && b.served);
    const refused = grew(j.refused, b && b.refused);
    return el('div', { class: cls, 'data-jurisdiction': j.name, 'data-refused': String(refused) },
      el('div', { class: 'name' }, j.name, ' ', j.strict ? el('span', { class: 'badge strict' }, 'strict') : null),
      el('div', { class: 'count' }, j.serving + ' of ' + total + ' serving'),
      el('div', { class: 'traffic' }, served.toLocaleString() + ' served, ',
        el('span', { class: refused > 0 ? 'refused' : '' }, refused.toLocaleString() + ' refused'),
        ' in the last interval'),
      el('div', { class: 'note' }, note));
  }));
}

function renderFleet(f) {
  const section = $('#fleet-section');
  section.hidden = !f;
  if (!f) return;
  $('#fleet-error').textContent = f.error ? 'The members cannot be read: ' + f.error : '';
  $('#fleet tbody').replaceChildren(...(f.members || []).map((m) => el('tr',
    { 'data-instance': m.instance, 'data-in-step': String(m.in_step) },
    el('td', { 'data-label': 'Instance' }, m.instance + (m.instance === f.instance ? ' (this one)' : '')),
    el('td', { 'data-label': 'In step' }, m.history_changed ? 'history changed'
      : m.in_step ? 'yes' : el('span', { class: 'error' }, 'no: lagging')),
    el('td', { class: 'num', 'data-label': 'Applied' }, String(m.applied_revision)),
    el('td', { class: 'num', 'data-label': 'Last report' }, m.seconds_since_report.toFixed(1) + ' s ago'))));
}

function renderRegions(s, prev) {
  const before = new Map((prev ? prev.regions : []).map((r) => [r.name, r]));
  const delta = (r, k) => (before.has(r.name) ? Math.max(0, r[k] - before.get(r.name)[k]) : 0);
  const interval = s.regions.reduce((n, r) => n + delta(r, 'requests'), 0);
  const body = $('#regions tbody');
  body.replaceChildren(...s.regions.map((r) => {
    const served = delta(r, 'requests');
    const failed = delta(r, 'upstream_errors');
    const movedIn = delta(r, 'failovers_in');
    const movedOut = delta(r, 'failovers_out');
    const share = interval > 0 ? served / interval : null;
    const phase = el('span', { class: 'badge ' + r.phase }, r.phase.replace('_', ' '));
    const state = el('td', { class: 'state', 'data-label': 'State' }, phase,
      r.drained ? ' ' : null,
      r.drained ? el('span', { class: 'badge drained' }, 'drained') : null,
      r.last_transition ? el('span', { class: 'sub', title: r.last_transition.cause },
        r.last_transition.from + ' → ' + r.last_transition.to + ', ' + ago(r.last_transition.seconds_ago)) : null);
    const drain = el('td', { class: 'drain', 'data-label': 'Drain' },
      r.drained ? (r.drain_reason || '(no reason given)') : '—',
      r.drained ? el('span', { class: 'sub' }, 'by ' + r.drained_by + (r.drain_scope ? ' · ' + r.drain_scope : '')) : null);
    const action = r.drained ? 'undrain' : 'drain';
    const button = el('button', {
      type: 'button', 'data-action': action, 'data-region': r.name,
      class: action === 'drain' ? 'danger' : '',
      disabled: !s.writes_enabled,
      title: s.writes_enabled ? '' : 'mutating calls are disabled: set admin.token_file or admin.token_env',
    }, action === 'drain' ? 'Drain' : 'Undrain');
    button.addEventListener('click', () => openAction(action, r));
    return el('tr', { 'data-region': r.name, 'data-phase': r.phase, 'data-drained': String(r.drained) },
      el('td', { class: 'name', 'data-label': 'Region', title: r.endpoints.join(' ') }, r.name),
      el('td', { 'data-label': 'Jurisdiction' }, r.jurisdiction || '—'),
      state,
      drain,
      el('td', { class: 'num rtt', 'data-label': 'RTT' }, r.rtt_ms !== null ? r.rtt_ms.toFixed(1) + ' ms'
        : !r.healthy ? '—' : r.health_checks ? '…' : 'no checks'),
      el('td', { class: 'num weight', 'data-label': 'Weight' }, Math.round(r.weight * 100) + ' %',
        r.serving && r.weight < 1 ? el('span', { class: 'sub' }, 'slow start') : null),
      el('td', { class: 'num share', 'data-label': 'Share' }, share === null ? '—' : (share * 100).toFixed(1) + ' %',
        share === null ? null : bar(share)),
      el('td', { class: 'num load', 'data-label': 'Load' },
        r.load.in_flight + ' / ' + r.load.max_in_flight,
        el('span', { class: 'sub' },
          r.load.endpoints.filter((e) => e.healthy).length + ' of ' + r.load.endpoints.length + ' endpoints in rotation' +
          (r.load.queued > 0 ? ' · ' + r.load.queued + ' queued' : ''))),
      el('td', { class: 'num failovers', 'data-label': 'Failovers' },
        'in ' + movedIn.toLocaleString() + ' · out ' + movedOut.toLocaleString(),
        el('span', { class: 'sub' }, 'since start: in ' + r.failovers_in.toLocaleString() +
          ' · out ' + r.failovers_out.toLocaleString())),
      el('td', { class: 'num', 'data-label': 'Requests' }, r.requests.toLocaleString()),
      el('td', { class: 'num', 'data-label': 'Errors' }, r.upstream_errors.toLocaleString(),
        served + failed > 0 ? el('span', { class: 'sub' }, (100 * failed / (served + failed)).toFixed(1) + ' % now') : null,
        el('span', { class: 'sub' }, r.responses_5xx.toLocaleString() + ' answered 5xx')),
      el('td', { class: 'action' }, button));
  }));
}

// Through the CSSOM: the page's policy forbids inline style attributes.
function bar(share) {
  const b = el('span', { class: 'bar' });
  b.style.width = Math.round(share * 100) + '%';
  return b;
}

function ago(seconds) {
  if (seconds < 60) return seconds + ' s ago';
  if (seconds < 3600) return Math.floor(seconds / 60) + ' min ago';
  if (seconds < 86400) return Math.floor(seconds / 3600) + ' h ago';
  return Math.floor(seconds / 86400) + ' d ago';
}

function renderEvents(events) {
  const list = $('#events');
  if (events.length === 0) return;
  list.replaceChildren(...events.map((e) => {
    const at = new Date(e.at_ms);
    return el('li', { class: e.kind },
      el('time', { datetime: at.toISOString(), title: at.toISOString() }, utc(at)),
      e.region ? el('strong', {}, e.region + ' ') : null,
      el('span', { class: 'what' }, e.what),
      e.cause ? el('span', { class: 'sub' }, e.cause) : null);
  }));
}

// Drain and undrain: a dialog asks for the reason and the mutating token.
let action = null;

function openAction(kind, region) {
  action = { kind, region: region.name };
  $('#act-title').textContent = (kind === 'drain' ? 'Drain ' : 'Undrain ') + region.name;
  $('#act-reason-label').hidden = kind !== 'drain';
  $('#act-force-label').hidden = kind !== 'drain';
  $('#act-force').checked = false;
  $('#act-reason').value = '';
  $('#act-token').value = token;
  $('#act-error').textContent = '';
  $('#act-confirm').textContent = kind === 'drain' ? 'Drain' : 'Undrain';
  $('#act').showModal();
}

async function confirmAction(ev) {
  ev.preventDefault();
  if (!action) return;
  const t = $('#act-token').value.trim();
  const q = new URLSearchParams();
  if (action.kind === 'drain') {
    q.set('reason', $('#act-reason').value.trim() || 'status page');
    if ($('#act-force').checked) q.set('force', 'true');
  }
  const url = 'regions/' + encodeURIComponent(action.region) + '/' + action.kind + (q.toString() ? '?' + q : '');
  $('#act-confirm').disabled = true;
  try {
    const r = await fetch(url, { method: 'POST', headers: authHeaders(t) });
    if (!r.ok) {
      $('#act-error').textContent = r.status === 401 ? 'The token was refused.' : (await r.text()).trim();
      return;
    }
    token = t;
    sessionStorage.setItem(TOKEN_KEY, t);
    // Done, but perhaps not kept: a state file that could not be written.
    const done = await r.json().catch(() => ({}));
    const notice = $('#notice');
    notice.hidden = !done.persist_warning;
    notice.textContent = done.persist_warning
      ? 'The ' + action.kind + ' of ' + action.region + ' holds, but was not kept and would be lost at a restart: ' +
        done.persist_warning
      : '';
    $('#act').close();
    action = null;
    refresh();
  } catch (e) {
    $('#act-error').textContent = 'Cannot reach the router: ' + e.message;
  } finally {
    $('#act-confirm').disabled = false;
  }
}

async function explain(ev) {
  ev.preventDefault();
  const q = new URLSearchParams();
  for (const [k, v] of new FormData($('#explain'))) if (String(v).trim()) q.set(k, String(v).trim());
  const out = $('#explain-out');
  const summary = $('#explain-summary');
  try {
    const r = await fetch('explain?' + q, { headers: authHeaders(token), cache: 'no-store' });
    const text = await r.text();
    $('#explain-details').hidden = false;
    if (!r.ok) {
      summary.textContent = text.trim();
      out.textContent = '';
      return;
    }
    const x = JSON.parse(text);
    const where = [x.geo.country, x.geo.subdivision, x.geo.continent].filter(Boolean).join(' / ') || 'unknown place';
    summary.textContent = x.client_ip + ' (' + where + ') → ' +
      (x.chosen ? x.chosen : 'no region') + ': ' + x.outcome +
      (x.route ? ' [route ' + x.route + ']' : '') +
      (x.pin ? ' [resident of ' + x.pin.jurisdiction + ' by ' + x.pin.source + ']' : '');
    out.textContent = JSON.stringify(x, null, 2);
    $('#explain-details').open = false;
  } catch (e) {
    summary.textContent = 'Cannot reach the router: ' + e.message;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('#act-form').addEventListener('submit', confirmAction);
  $('#act-cancel').addEventListener('click', () => { $('#act').close(); action = null; });
  $('#explain').addEventListener('submit', explain);
  $('#login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = $('#login-token').value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    refresh();
  });
  refresh();
});

// Fleetstream dashboard: plain JavaScript, no build step, nothing loaded from elsewhere.
//
// It signs in with an API key (kept in sessionStorage, or taken from a `#key=...` link and
// then removed from the address bar; a link never replaces the key of a signed-in tab
// without a confirmation), and reads the query API with
// `Authorization: Bearer <key>` on every request. Views (by URL fragment):
//   #/                                  overview counters and the agent table
//   #/agents/{agent_id}                 one agent: latest values, history charts,
//                                       services, open alerts, commands
//   #/agents/{agent_id}/commands/{id}   the same, with one command's result opened
//   #/alerts                            alerts, with Acknowledge
// The open view refreshes itself every few seconds ("Updated ..." in the top bar). A
// value the server does not send is shown as "—"; an error the server answers is shown
// where it happened (its message and field), never swallowed.
'use strict';

(() => {
  const POLL_MS = 5000;
  const REQUEST_TIMEOUT_MS = 30000;
  const KEY_STORE = 'fleetstream.apiKey';
  const TENANT_STORE = 'fleetstream.tenant';
  const DASH = '\u2014';
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const RANGES = [
    { value: '15m', label: 'Last 15 minutes', interval: '15s', ms: 15 * 60e3 },
    { value: '1h', label: 'Last hour', interval: '1m', ms: 60 * 60e3 },
    { value: '6h', label: 'Last 6 hours', interval: '5m', ms: 6 * 60 * 60e3 },
    { value: '24h', label: 'Last 24 hours', interval: '15m', ms: 24 * 60 * 60e3 },
    { value: '7d', label: 'Last 7 days', interval: '1h', ms: 7 * 24 * 60 * 60e3 },
  ];

  const state = {
    key: null,
    me: null, // {user_id, name, role, tenant_id}
    tenants: [], // [{tenant_id, name}]
    tenant: '', // selected tenant id; '' = all tenants (admins only)
    gen: 0, // bumped on every navigation: answers for an old view are dropped
    timer: null,
    view: null, // {update(): Promise<boolean>}
    pendingAcks: new Set(),
    range: '1h',
    agentFilter: { status: '', q: '' },
    agentPages: [null], // `after` cursors of the pages visited; last is the current one
    alertStatus: '',
    agentNames: new Map(), // agent id -> host name, for the alert list
  };

  // ---------------------------------------------------------------- DOM helpers

  const $ = (testid, root = document) => root.querySelector(`[data-testid="${testid}"]`);

  /** Element: h('td', {testid: 'x', class: 'y', text: 'z', on: {click: f}}, ...children). */
  function h(tag, attrs = {}, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  function svg(tag, attrs = {}, ...children) {
    return build(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  function build(el, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'testid') el.setAttribute('data-testid', v);
      else if (k === 'text') el.textContent = String(v);
      else if (k === 'on') for (const [ev, f] of Object.entries(v)) el.addEventListener(ev, f);
      else if (k === 'class') el.setAttribute('class', v);
      else if (k === 'data') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  /** Replaces the children of `el` unless `key` equals what was rendered last time. */
  function renderInto(el, key, make) {
    if (key !== undefined && el.dataset.renderKey === key) return;
    el.replaceChildren(...[make()].flat().filter(Boolean));
    if (key !== undefined) el.dataset.renderKey = key;
  }

  // ---------------------------------------------------------------- formatting

  const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

  function num(v, digits = 1) {
    return isNum(v) ? v.toFixed(digits) : DASH;
  }

  function pct(v) {
    return isNum(v) ? `${v.toFixed(1)} %` : DASH;
  }

  function text(v) {
    if (v === undefined || v === null || v === '') return DASH;
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  /** Milliseconds since the epoch of a time: µs, ms or s since the epoch, or RFC 3339. */
  function toMillis(t) {
    if (isNum(t)) {
      const a = Math.abs(t);
      if (a >= 1e14) return t / 1000; // microseconds
      if (a >= 1e11) return t; // milliseconds
      return t * 1000; // seconds
    }
    if (typeof t === 'string' && t !== '') {
      const ms = Date.parse(t);
      return Number.isNaN(ms) ? null : ms;
    }
    return null;
  }

  const pad = (n) => String(n).padStart(2, '0');

  function clock(ms) {
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function dateTime(t) {
    const ms = toMillis(t);
    if (ms === null) return DASH;
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(ms)}`;
  }

  function ago(t) {
    const ms = toMillis(t);
    if (ms === null) return DASH;
    const s = Math.round((Date.now() - ms) / 1000);
    if (s < 0) return 'just now';
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  /** A time cell: relative, the full time as tooltip. */
  function timeCell(t, testid) {
    return h('td', { testid, title: dateTime(t), text: ago(t) });
  }

  function duration(secs) {
    if (!isNum(secs)) return DASH;
    const d = Math.floor(secs / 86400);
    const hh = Math.floor((secs % 86400) / 3600);
    const mm = Math.floor((secs % 3600) / 60);
    return d > 0 ? `${d} d ${hh} h` : hh > 0 ? `${hh} h ${mm} min` : `${mm} min`;
  }

  function badge(value, testid) {
    const v = value === undefined || value === null || value === '' ? null : String(value);
    return h('span', { class: `badge ${v ? `b-${v.replace(/[^a-z_]/gi, '')}` : 'b-none'}`, testid, text: v ?? DASH });
  }

  /** A percentage with a small bar. */
  function meter(v, testid) {
    const bar = h('span', { class: 'bar' });
    if (isNum(v)) {
      bar.style.width = `${Math.max(0, Math.min(100, v))}%`;
      if (v >= 90) bar.classList.add('hot');
      else if (v >= 75) bar.classList.add('warm');
    }
    return h('td', { testid, class: 'num' }, h('span', { class: 'meter' }, bar), h('span', { text: pct(v) }));
  }

  const hostOf = (a) => a.hostname || a.device_name || a.agent_id || DASH;

  /** The open alert count of an agent: `open_alert_count` (the detail's `open_alerts` is
   * the list itself), or `open_alerts` as a number or a list. */
  function openAlertCount(a) {
    if (isNum(a.open_alert_count)) return a.open_alert_count;
    if (isNum(a.open_alerts)) return a.open_alerts;
    if (Array.isArray(a.open_alerts)) return a.open_alerts.filter((x) => x.status !== 'resolved').length;
    return null;
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, field, message) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
    }
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) {
      if (v !== undefined && v !== null && v !== '') q.set(k, v);
    }
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  /** The error object of a failed answer: `{"error": {...}}` or `{"error", "message", "field"}`. */
  function errorParts(json, raw, status) {
    let code;
    let message;
    let field;
    const e = json && typeof json === 'object' ? json.error : undefined;
    if (e && typeof e === 'object') {
      ({ code, message, field } = e);
    } else if (json && typeof json === 'object') {
      code = typeof e === 'string' ? e : json.code;
      message = json.message;
      field = json.field;
    }
    if (!message) {
      message = raw ? raw.slice(0, 300) : status === 404 ? 'not found (this server may not have this route)' : 'request failed';
    }
    return { code, message, field };
  }

  async function api(method, path, params, body) {
    const url = path + query(params);
    const headers = { Authorization: `Bearer ${state.key}`, Accept: 'application/json' };
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    const init = { method, headers, cache: 'no-store', signal: abort.signal };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    let raw;
    try {
      resp = await fetch(url, init);
      raw = await resp.text();
    } catch (e) {
      const why = abort.signal.aborted ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s` : e.message;
      throw new ApiError(0, 'network', null, `${method} ${path}: the server did not answer (${why})`);
    } finally {
      clearTimeout(timer);
    }
    let json = null;
    if (raw) {
      try {
        json = JSON.parse(raw);
      } catch (_) {
        json = null;
      }
    }
    if (!resp.ok) {
      const { code, message, field } = errorParts(json, raw, resp.status);
      const where = field ? ` (field: ${field})` : '';
      const err = new ApiError(resp.status, code, field, `${method} ${path}: ${resp.status}${code ? ` ${code}` : ''}: ${message}${where}`);
      if (resp.status === 401 && state.key) signOut(`Your API key was refused: ${message}`);
      throw err;
    }
    if (raw && json === null) throw new ApiError(resp.status, 'not_json', null, `${method} ${path}: the answer is not JSON`);
    return json ?? {};
  }

  /** `tenant` for a request: the selected one, if any. */
  const tenantParam = () => (state.tenant ? { tenant: state.tenant } : {});

  // ---------------------------------------------------------------- banner, sections

  function showError(message) {
    $('error-text').textContent = message;
    $('error-banner').hidden = false;
  }

  function clearError() {
    $('error-banner').hidden = true;
    $('error-text').textContent = '';
  }

  /** A titled section with an error line and a body. */
  function section(name, title, ...tools) {
    const body = h('div', { class: 'section-body', testid: `${name}-body` });
    const error = h('p', { class: 'error', testid: `${name}-error`, role: 'alert', hidden: true });
    const el = h('section', { class: 'panel', testid: `${name}-section` },
      h('div', { class: 'panel-head' }, h('h2', { text: title }), h('div', { class: 'tools' }, ...tools)),
      error, body);
    return { el, body, error };
  }

  /** Runs a section's fetch-and-render; shows its error. Resolves to success. */
  async function load(sec, gen, work) {
    try {
      await work();
      if (gen !== state.gen) return true;
      sec.error.hidden = true;
      sec.error.textContent = '';
      return true;
    } catch (e) {
      if (gen !== state.gen) return true;
      sec.error.textContent = e instanceof ApiError ? e.message : `Error: ${e.message}`;
      sec.error.hidden = false;
      if (!(e instanceof ApiError)) console.error(e);
      return false;
    }
  }

  // ---------------------------------------------------------------- sign-in

  function showSignIn(message) {
    stopPolling();
    $('signin').hidden = false;
    $('nav').hidden = true;
    $('session').hidden = true;
    $('view').replaceChildren();
    const err = $('signin-error');
    err.hidden = !message;
    err.textContent = message || '';
    $('signin-key').focus();
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_STORE);
    state.key = null;
    state.me = null;
    showSignIn(message);
  }

  async function signIn(key) {
    state.key = key;
    const submit = $('signin-submit');
    submit.disabled = true;
    try {
      const me = await api('GET', '/api/v1/me');
      if (!me || typeof me !== 'object') throw new Error('GET /api/v1/me: empty answer');
      state.me = me;
      sessionStorage.setItem(KEY_STORE, key);
      await loadTenants();
      $('signin').hidden = true;
      $('nav').hidden = false;
      $('session').hidden = false;
      $('signin-key').value = '';
      const role = me.role || DASH;
      $('whoami').textContent = `${me.name || me.user_id || DASH} (${role})`;
      route();
    } catch (e) {
      state.key = null;
      sessionStorage.removeItem(KEY_STORE);
      showSignIn(e instanceof ApiError ? e.message : `Sign-in failed: ${e.message}`);
    } finally {
      submit.disabled = false;
    }
  }

  const isAdmin = () => state.me?.role === 'admin';
  const mayOperate = () => ['admin', 'operator'].includes(state.me?.role);

  async function loadTenants() {
    const select = $('tenant-select');
    if (isAdmin()) {
      const t = await api('GET', '/api/v1/tenants');
      state.tenants = Array.isArray(t.tenants) ? t.tenants : [];
      const saved = sessionStorage.getItem(TENANT_STORE) || '';
      state.tenant = state.tenants.some((x) => x.tenant_id === saved) ? saved : '';
      select.replaceChildren(h('option', { value: '', text: 'All tenants' }),
        ...state.tenants.map((x) => h('option', { value: x.tenant_id, text: x.name || x.tenant_id })));
      select.disabled = false;
    } else {
      const id = state.me.tenant_id || '';
      state.tenants = id ? [{ tenant_id: id, name: state.me.tenant_name || id }] : [];
      state.tenant = id;
      select.replaceChildren(h('option', { value: id, text: state.me.tenant_name || id || DASH }));
      select.disabled = true;
    }
    select.value = state.tenant;
  }

  const tenantName = (id) => state.tenants.find((t) => t.tenant_id === id)?.name || id || DASH;

  // ---------------------------------------------------------------- routing, polling

  function stopPolling() {
    state.gen += 1;
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
    state.view = null;
  }

  function route() {
    if (!state.me) return;
    stopPolling();
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
    let view;
    if (parts[0] === 'agents' && parts[1]) view = agentView(parts[1], parts[2] === 'commands' ? parts[3] : null);
    else if (parts[0] === 'alerts') view = alertsView();
    else view = overviewView();
    for (const a of document.querySelectorAll('.nav a')) {
      a.classList.toggle('active', a.dataset.view === (parts[0] === 'alerts' ? 'alerts' : 'overview'));
    }
    state.view = view;
    $('view').replaceChildren(view.el);
    refresh();
  }

  /** Refreshes the open view now, then every POLL_MS. Answers still on their way for an
   * earlier refresh are dropped (a filter change must not be overwritten by them). */
  async function refresh() {
    state.gen += 1;
    const gen = state.gen;
    if (state.timer) clearTimeout(state.timer);
    state.timer = null;
    const view = state.view;
    if (!view) return;
    const ok = await view.update(gen);
    if (gen !== state.gen) return;
    const now = Date.now();
    const el = $('last-updated');
    el.textContent = ok ? `Updated ${clock(now)}` : `Updated ${clock(now)} (with errors)`;
    el.dataset.updatedAt = String(now);
    el.classList.toggle('stale', !ok);
    // A hidden tab is not polled; showing it again refreshes at once.
    state.timer = setTimeout(() => {
      if (!document.hidden) refresh();
    }, POLL_MS);
  }

  // ---------------------------------------------------------------- overview

  const COUNTERS = [
    ['agents', 'total', 'Agents'],
    ['agents', 'online', 'Online'],
    ['agents', 'offline', 'Offline'],
    ['agents', 'deactivated', 'Deactivated'],
    ['open_alerts', 'critical', 'Critical alerts'],
    ['open_alerts', 'warning', 'Warnings'],
    ['open_alerts', 'info', 'Info alerts'],
    ['open_alerts', 'total', 'Open alerts'],
    [null, 'pending_commands', 'Pending commands'],
  ];

  function overviewView() {
    const counters = section('overview', 'Overview');
    const statusSel = h('select', { testid: 'agent-status-filter', 'aria-label': 'Status' },
      ...['', 'online', 'offline', 'deactivated'].map((s) => h('option', { value: s, text: s || 'Any status' })));
    statusSel.value = state.agentFilter.status;
    const search = h('input', { type: 'search', testid: 'agent-search', placeholder: 'Search host, name, id', 'aria-label': 'Search agents', value: state.agentFilter.q });
    let debounce = null;
    const refilter = () => {
      state.agentFilter = { status: statusSel.value, q: search.value.trim() };
      state.agentPages = [null];
      refresh();
    };
    statusSel.addEventListener('change', refilter);
    search.addEventListener('input', () => {
      clearTimeout(debounce);
      debounce = setTimeout(refilter, 400);
    });
    const agents = section('agents', 'Agents', statusSel, search);
    const table = h('table', { class: 'grid', testid: 'agent-table' });
    const pager = h('div', { class: 'pager' });
    agents.body.append(table, pager);
    const el = h('div', { class: 'view', testid: 'overview-view' }, counters.el, agents.el);

    async function updateCounters(gen) {
      const o = await api('GET', '/api/v1/overview', tenantParam());
      if (gen !== state.gen) return;
      renderInto(counters.body, JSON.stringify(o), () => [
        h('div', { class: 'counters' }, ...COUNTERS.map(([group, k, label]) => {
          const v = group ? o?.[group]?.[k] : o?.[k];
          const cls = group === 'open_alerts' && isNum(v) && v > 0 ? `counter sev-${k}` : 'counter';
          return h('div', { class: cls, testid: `count-${group ? `${group}-` : ''}${k}` },
            h('span', { class: 'value', text: isNum(v) ? String(v) : DASH }),
            h('span', { class: 'label', text: label }));
        })),
      ]);
    }

    async function updateAgents(gen) {
      const after = state.agentPages[state.agentPages.length - 1];
      const r = await api('GET', '/api/v1/agents', {
        ...tenantParam(), status: state.agentFilter.status, q: state.agentFilter.q, limit: 50, after,
      });
      if (gen !== state.gen) return;
      const list = Array.isArray(r.agents) ? r.agents : [];
      for (const a of list) state.agentNames.set(a.agent_id, hostOf(a));
      const allTenants = !state.tenant;
      // Times are shown relative to now, so the key includes the render second.
      renderInto(table, JSON.stringify([list, allTenants, Math.floor(Date.now() / 1000)]), () => [
        h('thead', {}, h('tr', {},
          ...['Status', 'Host', allTenants ? 'Tenant' : null, 'CPU', 'Memory', 'Disk (fullest)', 'Last seen', 'Open alerts', 'Tags']
            .filter(Boolean).map((c) => h('th', { text: c })))),
        h('tbody', {}, list.length === 0
          ? h('tr', {}, h('td', { colspan: 9, class: 'empty', testid: 'agents-empty', text: 'No agents yet. Enroll one with a registration token.' }))
          : list.map((a) => {
            const n = openAlertCount(a);
            return h('tr', { testid: 'agent-row', data: { agentId: a.agent_id } },
              h('td', {}, badge(a.status, 'agent-status')),
              h('td', {}, h('a', { href: `#/agents/${encodeURIComponent(a.agent_id)}`, testid: 'agent-link', text: hostOf(a) }),
                a.device_name && a.device_name !== a.hostname ? h('span', { class: 'sub', text: a.device_name }) : null),
              allTenants ? h('td', { text: tenantName(a.tenant_id) }) : null,
              meter(a.cpu_percent, 'agent-cpu'),
              meter(a.memory_percent, 'agent-mem'),
              meter(a.disk_percent_max, 'agent-disk'),
              timeCell(a.last_seen_at, 'agent-last-seen'),
              h('td', { class: `num ${n > 0 ? 'has-alerts' : ''}`, testid: 'agent-open-alerts', text: isNum(n) ? String(n) : DASH }),
              h('td', { testid: 'agent-tags' }, tags(a.tags)));
          })),
      ]);
      renderInto(pager, JSON.stringify([state.agentPages, r.next_after ?? null]), () => [
        state.agentPages.length > 1 ? h('button', { type: 'button', testid: 'agents-prev', text: '← Previous', on: { click: () => { state.agentPages.pop(); refresh(); } } }) : null,
        r.next_after ? h('button', { type: 'button', testid: 'agents-next', text: 'Next →', on: { click: () => { state.agentPages.push(r.next_after); refresh(); } } }) : null,
      ]);
    }

    return {
      el,
      async update(gen) {
        const ok = await Promise.all([
          load(counters, gen, () => updateCounters(gen)),
          load(agents, gen, () => updateAgents(gen)),
        ]);
        return ok.every(Boolean);
      },
    };
  }

  function tags(t) {
    if (!t || typeof t !== 'object') return DASH;
    const entries = Array.isArray(t) ? t.map((x) => [x, null]) : Object.entries(t);
    if (entries.length === 0) return DASH;
    return entries.map(([k, v]) => h('span', { class: 'tag', text: v === null || v === '' || v === true ? k : `${k}=${v}` }));
  }

  // ---------------------------------------------------------------- alerts

  function alertTable(alerts, { showAgent }) {
    const operate = mayOperate();
    return h('table', { class: 'grid', testid: 'alert-table' },
      h('thead', {}, h('tr', {}, ...['Severity', 'Status', showAgent ? 'Agent' : null, 'Rule', 'Metric', 'Value', 'Message', 'Raised', 'Acknowledged by', '']
        .filter((c) => c !== null).map((c) => h('th', { text: c })))),
      h('tbody', {}, alerts.length === 0
        ? h('tr', {}, h('td', { colspan: 10, class: 'empty', testid: 'alerts-empty', text: 'No alerts.' }))
        : alerts.map((a) => {
          const pending = state.pendingAcks.has(a.alert_id);
          let action = null;
          if (a.status === 'open' && operate) {
            action = pending
              ? h('span', { class: 'muted', testid: 'alert-ack-pending', text: 'Acknowledging…' })
              : h('button', { type: 'button', class: 'small', testid: 'alert-ack', text: 'Acknowledge', on: { click: (ev) => acknowledge(a, ev.currentTarget) } });
          }
          const metric = a.subject ? `${text(a.metric)} (${a.subject})` : text(a.metric);
          const value = `${num(a.value)} ${a.operator || ''} ${num(a.threshold)}`.replace(/\s+/g, ' ');
          return h('tr', { testid: 'alert-row', class: `sev-${a.severity || 'none'}`, data: { alertId: a.alert_id || '', agentId: a.agent_id || '' } },
            h('td', {}, badge(a.severity, 'alert-severity')),
            h('td', {}, badge(a.status, 'alert-status')),
            showAgent ? h('td', {}, a.agent_id ? h('a', { href: `#/agents/${encodeURIComponent(a.agent_id)}`, text: state.agentNames.get(a.agent_id) || a.agent_id }) : DASH) : null,
            h('td', { testid: 'alert-rule', text: text(a.rule_name) }),
            h('td', { text: metric }),
            h('td', { class: 'num', text: value }),
            h('td', { class: 'message', text: text(a.message) }),
            timeCell(a.raised_at, 'alert-raised'),
            h('td', { testid: 'alert-acked-by', text: text(a.acknowledged_by) }),
            h('td', {}, action));
        })));
  }

  async function acknowledge(alert, button) {
    button.disabled = true;
    button.textContent = 'Acknowledging…';
    try {
      await api('POST', `/api/v1/alerts/${encodeURIComponent(alert.alert_id)}/acknowledge`, undefined, {});
      state.pendingAcks.add(alert.alert_id);
      clearError();
    } catch (e) {
      showError(`Could not acknowledge "${alert.rule_name || alert.alert_id}": ${e.message}`);
      button.disabled = false;
      button.textContent = 'Acknowledge';
      return;
    }
    refresh();
  }

  /** Forgets pending acknowledgements the server now shows. */
  function settleAcks(alerts) {
    for (const a of alerts) if (a.status !== 'open') state.pendingAcks.delete(a.alert_id);
  }

  function alertsView() {
    const filter = h('select', { testid: 'alert-status-filter', 'aria-label': 'Status' },
      ...['', 'open', 'acknowledged', 'resolved'].map((s) => h('option', { value: s, text: s || 'Any status' })));
    filter.value = state.alertStatus;
    filter.addEventListener('change', () => {
      state.alertStatus = filter.value;
      refresh();
    });
    const sec = section('alerts', 'Alerts', filter);
    const el = h('div', { class: 'view', testid: 'alerts-view' }, sec.el);
    return {
      el,
      async update(gen) {
        return load(sec, gen, async () => {
          const [r, agents] = await Promise.all([
            api('GET', '/api/v1/alerts', { ...tenantParam(), status: state.alertStatus, limit: 200 }),
            // Host names for the agent column; the list still shows without them.
            api('GET', '/api/v1/agents', { ...tenantParam(), limit: 1000 }).catch(() => null),
          ]);
          if (gen !== state.gen) return;
          for (const a of (agents && Array.isArray(agents.agents) ? agents.agents : [])) state.agentNames.set(a.agent_id, hostOf(a));
          const alerts = Array.isArray(r.alerts) ? r.alerts : [];
          settleAcks(alerts);
          renderInto(sec.body, JSON.stringify([alerts, [...state.pendingAcks], Math.floor(Date.now() / 1000)]),
            () => alertTable(alerts, { showAgent: true }));
        });
      },
    };
  }

  // ---------------------------------------------------------------- agent page

  function agentView(agentId, commandId) {
    const back = h('a', { href: '#/', class: 'back', text: '← All agents' });
    const head = section('agent', 'Agent');
    const rangeSel = h('select', { testid: 'range-select', 'aria-label': 'Time range' },
      ...RANGES.map((r) => h('option', { value: r.value, text: r.label })));
    rangeSel.value = state.range;
    rangeSel.addEventListener('change', () => {
      state.range = rangeSel.value;
      refresh();
    });
    const charts = section('charts', 'History', rangeSel);
    const services = section('services', 'Services');
    const alerts = section('agent-alerts', 'Open alerts');
    const commands = section('commands', 'Commands');
    const detail = commandId ? section('command', 'Command result') : null;
    const el = h('div', { class: 'view', testid: 'agent-view', data: { agentId } },
      back, head.el, charts.el, h('div', { class: 'cols' }, services.el, alerts.el), commands.el, detail?.el);
    let agent = null;

    async function updateAgent(gen) {
      const a = await api('GET', `/api/v1/agents/${encodeURIComponent(agentId)}`, tenantParam());
      if (gen !== state.gen) return;
      agent = a;
      state.agentNames.set(a.agent_id, hostOf(a));
      const facts = a.facts && typeof a.facts === 'object' ? a.facts : {};
      const report = a.latest_report && typeof a.latest_report === 'object' ? a.latest_report : {};
      const load1 = isNum(a.load_1) ? a.load_1 : report.load_1;
      const uptime = isNum(a.uptime_seconds) ? a.uptime_seconds : report.uptime_seconds;
      renderInto(head.body, JSON.stringify([a, Math.floor(Date.now() / 1000)]), () => [
        h('div', { class: 'agent-title' },
          h('h1', { testid: 'agent-name', text: hostOf(a) }), badge(a.status, 'agent-detail-status')),
        h('dl', { class: 'facts' },
          field('Agent id', text(a.agent_id), 'agent-id'),
          field('Tenant', tenantName(a.tenant_id)),
          field('Device name', text(a.device_name)),
          field('Last seen', `${ago(a.last_seen_at)} (${dateTime(a.last_seen_at)})`, 'agent-detail-last-seen'),
          field('CPU', pct(a.cpu_percent), 'agent-detail-cpu'),
          field('Memory', pct(a.memory_percent), 'agent-detail-mem'),
          field('Disk (fullest)', pct(a.disk_percent_max), 'agent-detail-disk'),
          field('Load (1 min)', num(load1, 2)),
          field('Uptime', duration(uptime)),
          field('OS', text([facts.os_version || facts.os_type, facts.kernel_version].filter(Boolean).join(', ') || null)),
          field('Architecture', text(facts.architecture)),
          field('Addresses', text(Array.isArray(facts.ip_addresses) ? facts.ip_addresses.join(', ') || null : null)),
          field('Enrollment', text(a.enrollment)),
          field('Tags', tags(a.tags), 'agent-detail-tags')),
      ]);

      const svc = Array.isArray(a.services) ? a.services : Array.isArray(report.services) ? report.services : [];
      renderInto(services.body, JSON.stringify(svc), () => (svc.length === 0
        ? h('p', { class: 'empty', testid: 'services-empty', text: 'No watched services (the agent\u2019s `services` setting).' })
        : h('table', { class: 'grid', testid: 'service-table' },
          h('thead', {}, h('tr', {}, h('th', { text: 'Service' }), h('th', { text: 'State' }), h('th', { text: 'PID' }))),
          h('tbody', {}, svc.map((s) => h('tr', { testid: 'service-row', data: { service: s.name || '' } },
            h('td', { testid: 'service-name', text: text(s.name) }),
            h('td', {}, badge(s.state ?? s.status, 'service-state')),
            h('td', { class: 'num', text: text(s.pid) })))))));

      const open = (Array.isArray(a.open_alerts) ? a.open_alerts : []).filter((x) => x.status !== 'resolved');
      settleAcks(open);
      renderInto(alerts.body, JSON.stringify([open, [...state.pendingAcks], Math.floor(Date.now() / 1000)]),
        () => alertTable(open, { showAgent: false }));
    }

    /** The series to chart: CPU, memory and each disk's use. */
    function chartSeries() {
      const names = ['cpu.percent', 'memory.percent'];
      let disks = [];
      if (agent && Array.isArray(agent.series)) {
        disks = agent.series.filter((s) => typeof s === 'string' && s.startsWith('disk.percent'));
      }
      if (disks.length === 0 && agent?.latest_report && Array.isArray(agent.latest_report.disks)) {
        disks = agent.latest_report.disks.map((d) => `disk.percent:${d.mount}`);
      }
      return names.concat(disks.sort().slice(0, 6));
    }

    async function updateCharts(gen) {
      if (!agent) return; // the agent's own request failed; its error is shown
      const range = RANGES.find((r) => r.value === state.range) || RANGES[1];
      const metrics = chartSeries();
      const r = await api('GET', `/api/v1/agents/${encodeURIComponent(agentId)}/metrics`, {
        ...tenantParam(), metric: metrics.join(','), start: range.value, interval: range.interval,
      });
      if (gen !== state.gen) return;
      const end = toMillis(r.end) ?? Date.now();
      const start = toMillis(r.start) ?? end - range.ms;
      const series = Array.isArray(r.series) ? r.series : [];
      renderInto(charts.body, JSON.stringify([series, range.value]), () => h('div', { class: 'charts' },
        ...metrics.map((m) => {
          const s = series.find((x) => x.metric === m) || { metric: m, buckets: [] };
          return chart(s, start, end);
        })));
    }

    async function updateCommands(gen) {
      const r = await api('GET', `/api/v1/agents/${encodeURIComponent(agentId)}/commands`, { ...tenantParam(), limit: 20 });
      if (gen !== state.gen) return;
      const list = Array.isArray(r.commands) ? r.commands : [];
      renderInto(commands.body, JSON.stringify([list, commandId, Math.floor(Date.now() / 1000)]), () => (list.length === 0
        ? h('p', { class: 'empty', testid: 'commands-empty', text: 'No commands were sent to this agent.' })
        : h('table', { class: 'grid', testid: 'command-table' },
          h('thead', {}, h('tr', {}, ...['Requested', 'Type', 'Arguments', 'Status', 'Exit code', 'Requested by'].map((c) => h('th', { text: c })))),
          h('tbody', {}, list.map((c) => {
            const href = `#/agents/${encodeURIComponent(agentId)}/commands/${encodeURIComponent(c.command_id)}`;
            return h('tr', { testid: 'command-row', class: c.command_id === commandId ? 'selected' : '', data: { commandId: c.command_id || '' } },
              timeCell(c.requested_at ?? c.updated_at, 'command-requested'),
              h('td', {}, h('a', { href, testid: 'command-link', text: text(c.command_type) })),
              h('td', { class: 'mono', text: argsText(c.args) }),
              h('td', {}, badge(c.status, 'command-status')),
              h('td', { class: 'num', text: text(c.exit_code) }),
              h('td', { text: text(c.requested_by) }));
          })))));
    }

    async function updateDetail(gen) {
      const c = await api('GET', `/api/v1/commands/${encodeURIComponent(commandId)}`, tenantParam());
      if (gen !== state.gen) return;
      const audit = Array.isArray(c.audit) ? c.audit : [];
      renderInto(detail.body, JSON.stringify(c), () => h('div', { testid: 'command-detail', data: { commandId } },
        h('dl', { class: 'facts' },
          field('Command id', text(c.command_id)),
          field('Type', text(c.command_type), 'command-detail-type'),
          field('Arguments', argsText(c.args)),
          field('Status', text(c.status), 'command-detail-status'),
          field('Exit code', text(c.exit_code), 'command-detail-exit'),
          field('Requested', `${dateTime(c.requested_at)} by ${text(c.requested_by)}`),
          field('Approved', c.approved_at ? `${dateTime(c.approved_at)} by ${text(c.approved_by)}` : DASH),
          field('Started', dateTime(c.started_at)),
          field('Finished', dateTime(c.finished_at)),
          field('Message', text(c.message), 'command-detail-message')),
        h('h3', { text: c.output_truncated ? 'Output (cut at the agent\u2019s limit)' : 'Output' }),
        h('pre', { class: 'output', testid: 'command-stdout', text: c.stdout || '(no standard output)' }),
        c.stderr ? h('pre', { class: 'output err', testid: 'command-stderr', text: c.stderr }) : null,
        h('h3', { text: 'Audit trail' }),
        audit.length === 0 ? h('p', { class: 'empty', text: DASH })
          : h('ol', { class: 'audit', testid: 'command-audit' }, audit.map((e) => h('li', {},
            h('span', { class: 'mono', text: dateTime(e.at) }), ' ', h('strong', { text: text(e.kind) }),
            e.actor ? ` by ${e.actor}` : '', e.detail ? ` (${e.detail})` : '')))));
    }

    return {
      el,
      async update(gen) {
        const first = await Promise.all([
          load(head, gen, () => updateAgent(gen)),
          load(commands, gen, () => updateCommands(gen)),
          detail ? load(detail, gen, () => updateDetail(gen)) : true,
        ]);
        if (gen !== state.gen) return true;
        // The charts need the agent's series names.
        const second = await load(charts, gen, () => updateCharts(gen));
        return first.every(Boolean) && second;
      },
    };
  }

  /** A `<dt>`/`<dd>` pair; `value` is text or nodes. */
  function field(label, value, testid) {
    return [h('dt', { text: label }), h('dd', { testid }, value)];
  }

  function argsText(args) {
    if (!args || typeof args !== 'object') return DASH;
    const e = Object.entries(args);
    return e.length ? e.map(([k, v]) => `${k}=${v}`).join(' ') : DASH;
  }

  // ---------------------------------------------------------------- charts

  const CHART_TITLES = { 'cpu.percent': 'CPU', 'memory.percent': 'Memory' };

  function chartTitle(metric) {
    if (CHART_TITLES[metric]) return CHART_TITLES[metric];
    if (metric.startsWith('disk.percent:')) return `Disk ${metric.slice('disk.percent:'.length)}`;
    return metric;
  }

  /** A line chart of one series' buckets: the mean as a line, min to max as a band. */
  function chart(series, start, end) {
    const W = 600;
    const H = 170;
    const L = 38;
    const R = 10;
    const T = 10;
    const B = 22;
    const pts = (Array.isArray(series.buckets) ? series.buckets : [])
      .map((b) => ({ t: toMillis(b.start), avg: b.avg, min: b.min, max: b.max, last: b.last, count: b.count }))
      .filter((p) => p.t !== null && isNum(p.avg))
      .sort((a, b) => a.t - b.t);
    const last = pts.length ? pts[pts.length - 1] : null;
    const lastValue = last ? (isNum(last.last) ? last.last : last.avg) : null;
    const metric = String(series.metric || '');
    const isPercent = metric.includes('percent');
    const unit = isPercent ? ' %' : '';
    const head = h('div', { class: 'chart-head' },
      h('span', { class: 'chart-title', text: chartTitle(metric) }),
      h('span', { class: 'chart-last', testid: 'chart-last', text: lastValue === null ? DASH : `${num(lastValue)}${unit}` }));
    const wrap = h('figure', { class: 'chart', testid: 'chart', data: { metric, points: pts.length } }, head);
    if (pts.length === 0) {
      wrap.append(h('p', { class: 'empty chart-empty', testid: 'chart-empty', text: 'No samples in this range yet.' }));
      return wrap;
    }
    const hi = Math.max(...pts.map((p) => (isNum(p.max) ? p.max : p.avg)));
    const lo = Math.min(...pts.map((p) => (isNum(p.min) ? p.min : p.avg)));
    const yMin = isPercent ? 0 : Math.min(0, lo);
    let yMax = isPercent ? Math.max(100, hi) : hi;
    if (yMax <= yMin) yMax = yMin + 1;
    const t0 = Math.min(start, pts[0].t);
    const t1 = Math.max(end, last.t, t0 + 1);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - (Math.min(yMax, Math.max(yMin, v)) - yMin) / (yMax - yMin)) * (H - T - B);
    const gapMs = pts.length > 1
      ? 2.5 * Math.min(...pts.slice(1).map((p, i) => p.t - pts[i].t).filter((d) => d > 0), Infinity)
      : Infinity;

    const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img', 'aria-label': `${chartTitle(metric)} history` });
    root.append(svg('title', { text: `${chartTitle(metric)}: ${pts.length} buckets, last ${num(lastValue)}${unit}` }));
    for (let i = 0; i <= 4; i += 1) {
      const v = yMin + ((yMax - yMin) * i) / 4;
      const yy = y(v).toFixed(1);
      root.append(svg('line', { x1: L, x2: W - R, y1: yy, y2: yy, class: 'grid-line' }));
      root.append(svg('text', { x: L - 4, y: (Number(yy) + 3).toFixed(1), class: 'axis', 'text-anchor': 'end', text: axisNum(v) }));
    }
    root.append(svg('text', { x: L, y: H - 6, class: 'axis', text: clock(t0).slice(0, 5) }));
    root.append(svg('text', { x: W - R, y: H - 6, class: 'axis', 'text-anchor': 'end', text: clock(t1).slice(0, 5) }));

    // Runs of buckets without a gap: each gets its band and line.
    const runs = [];
    for (const p of pts) {
      const run = runs[runs.length - 1];
      if (run && p.t - run[run.length - 1].t <= gapMs) run.push(p);
      else runs.push([p]);
    }
    for (const run of runs) {
      if (run.length > 1) {
        const top = run.map((p) => `${x(p.t).toFixed(1)},${y(isNum(p.max) ? p.max : p.avg).toFixed(1)}`);
        const bottom = run.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(isNum(p.min) ? p.min : p.avg).toFixed(1)}`);
        root.append(svg('polygon', { points: top.concat(bottom).join(' '), class: 'band' }));
        root.append(svg('polyline', { points: run.map((p) => `${x(p.t).toFixed(1)},${y(p.avg).toFixed(1)}`).join(' '), class: 'line', testid: 'chart-line' }));
      }
    }
    for (const p of pts) {
      const c = svg('circle', { cx: x(p.t).toFixed(1), cy: y(p.avg).toFixed(1), r: pts.length <= 3 ? 3.5 : pts.length > 60 ? 1.2 : 2.4, class: 'dot' });
      c.append(svg('title', { text: `${dateTime(p.t)}: avg ${num(p.avg)}${unit}, min ${num(p.min)}, max ${num(p.max)}, ${text(p.count)} samples` }));
      root.append(c);
    }
    wrap.append(root);
    return wrap;
  }

  function axisNum(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return `${(v / 1e9).toFixed(1)}G`;
    if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  // ---------------------------------------------------------------- start

  /**
   * A `#key=...` link: take the key, and drop it from the address bar and history (always,
   * used or not). A link must not silently switch a signed-in tab to someone else's key
   * (their session, their view of the fleet, your actions in their name): with a key
   * already in this tab, a different one is used only if the person says so.
   */
  function keyFromFragment() {
    const m = /^#key=([^&]*)(?:&(.*))?$/.exec(location.hash);
    if (!m) return null;
    let key = '';
    try {
      key = decodeURIComponent(m[1]).trim();
    } catch {
      key = '';
    }
    const rest = m[2] && m[2].startsWith('/') ? `#${m[2]}` : '#/';
    history.replaceState(null, '', `${location.pathname}${location.search}${rest}`);
    if (!key) return null;
    const current = state.key || sessionStorage.getItem(KEY_STORE);
    if (current && current !== key) {
      const who = state.me ? `${state.me.name || state.me.user_id} (${state.me.role})` : 'your current key';
      const ok = window.confirm(
        `This link signs this tab in with a different API key, replacing ${who}. ` +
          'Only continue if you made the link yourself. Switch keys?',
      );
      if (!ok) return null;
    }
    return key;
  }

  function start() {
    $('signin-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const key = $('signin-key').value.trim();
      if (key) signIn(key);
    });
    $('sign-out').addEventListener('click', () => signOut());
    $('error-dismiss').addEventListener('click', clearError);
    $('tenant-select').addEventListener('change', (ev) => {
      state.tenant = ev.target.value;
      sessionStorage.setItem(TENANT_STORE, state.tenant);
      state.agentPages = [null];
      // An agent page belongs to one tenant: go back to the list.
      if (location.hash.startsWith('#/agents/')) location.hash = '#/';
      else route();
    });
    window.addEventListener('hashchange', () => {
      const key = keyFromFragment();
      if (key) signIn(key);
      else route();
    });
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && state.view) refresh();
    });
    const key = keyFromFragment() || sessionStorage.getItem(KEY_STORE);
    if (key) signIn(key);
    else showSignIn();
  }

  start();
})();

// The admin console: sign in, pick a room, turn its dials, watch it live
// (telemetry from /admin/ws every second), broadcast, see the nodes and
// search the device registry. Admin API: docs/protocol.md.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat();
  const HISTORY = 300; // samples kept per room: 5 minutes at one a second
  const SVGNS = 'http://www.w3.org/2000/svg';
  let session = null; // {token, expires_at, tenant, user}
  let feed = null, feedTimer = null, feedAttempt = 0;
  let rooms = new Map(); // id -> {config, stats}
  const history = new Map(); // id -> [{t, waiting, active, capacity, rate}]
  let selected = null;

  // ---- session --------------------------------------------------------------
  try { session = JSON.parse(sessionStorage.getItem('pace.admin') || 'null'); } catch { session = null; }
  function signedIn() { return session && session.expires_at > Date.now() / 1000 + 5; }

  async function api(method, path, body) {
    const headers = { authorization: 'Bearer ' + session.token };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const j = await r.json().catch(() => ({}));
    if (r.status === 401) { signOut('Your session ended; sign in again.'); }
    if (!r.ok) throw new Error((j.error && j.error.message) || `HTTP ${r.status}`);
    return j;
  }

  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('login-error').textContent = '';
    const tenant = $('login-tenant').value.trim(), user = $('login-user').value.trim();
    $('login-submit').disabled = true;
    try {
      const r = await fetch('/api/v1/admin/login', {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ tenant, user, password: $('login-password').value }),
      });
      const j = await r.json().catch(() => ({}));
      if (!r.ok) {
        const code = j.error && j.error.code;
        $('login-error').textContent = code === 'invalid_credentials' ? 'Wrong tenant, user or password.'
          : code === 'too_many_attempts' ? `Too many attempts; try again in ${r.headers.get('retry-after') || 'a few'} seconds.`
          : (j.error && j.error.message) || `Sign-in failed (HTTP ${r.status}).`;
        $('login-password').select();
        return;
      }
      session = { token: j.token, expires_at: j.expires_at, tenant, user };
      sessionStorage.setItem('pace.admin', JSON.stringify(session));
      $('login-password').value = '';
      start();
    } catch (e) {
      $('login-error').textContent = 'The console cannot reach the node: ' + e.message;
    } finally {
      $('login-submit').disabled = false;
    }
  });

  function signOut(why) {
    session = null;
    sessionStorage.removeItem('pace.admin');
    if (feed) { feed.onclose = null; feed.close(); feed = null; }
    clearTimeout(feedTimer);
    $('console').hidden = true;
    $('logout').hidden = true;
    $('feed').hidden = true;
    $('login-view').hidden = false;
    $('who').textContent = '';
    feedState(false, 'offline');
    $('login-error').textContent = why || '';
    $('login-tenant').focus();
  }
  $('logout').addEventListener('click', () => signOut());

  function start() {
    $('login-view').hidden = true;
    $('console').hidden = false;
    $('logout').hidden = false;
    $('feed').hidden = false;
    $('who').textContent = `${session.user} @ ${session.tenant}`;
    connectFeed();
    search();
  }

  // ---- live feed --------------------------------------------------------------
  function feedState(up, text) { $('feed').dataset.up = String(up); $('feed').textContent = text; }
  async function connectFeed() {
    if (!signedIn()) return signOut('Your session ended; sign in again.');
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // A single-use ticket opens the feed: the admin token never goes in a URL.
    let ticket;
    try {
      ticket = (await api('POST', '/api/v1/admin/ws-ticket')).ticket;
    } catch {
      if (!signedIn()) return;
      feedState(false, 'reconnecting');
      feedTimer = setTimeout(connectFeed, Math.random() * Math.min(10000, 500 * 2 ** feedAttempt++));
      return;
    }
    feed = new WebSocket(`${scheme}//${location.host}/admin/ws?ticket=${encodeURIComponent(ticket)}`);
    feed.onopen = () => { feedAttempt = 0; feedState(true, 'live'); };
    feed.onmessage = (ev) => {
      let t;
      try { t = JSON.parse(ev.data); } catch { return; }
      if (t.type === 'telemetry') telemetry(t);
    };
    feed.onclose = () => {
      feed = null;
      feedState(false, 'reconnecting');
      const wait = Math.random() * Math.min(10000, 500 * 2 ** feedAttempt++);
      feedTimer = setTimeout(connectFeed, wait);
    };
  }

  function telemetry(t) {
    rooms = new Map(t.rooms.map((r) => [r.id, r]));
    for (const r of t.rooms) {
      const h = history.get(r.id) || [];
      const s = r.stats || {};
      h.push({ t: t.at_ms, waiting: s.waiting || 0, active: s.active || 0,
        capacity: r.config.capacity, rate: s.admissions_last_minute || 0 });
      if (h.length > HISTORY) h.shift();
      history.set(r.id, h);
    }
    roomList();
    if (selected && rooms.has(selected)) roomLive(rooms.get(selected));
    nodes(t);
  }

  // ---- rooms ------------------------------------------------------------------
  function roomList() {
    const ul = $('room-list');
    const ids = [...rooms.keys()].sort();
    if (ul.dataset.ids !== ids.join('\n')) {
      ul.replaceChildren(...ids.map((id) => {
        const li = document.createElement('li');
        const b = document.createElement('button');
        b.type = 'button';
        b.dataset.room = id;
        const name = document.createElement('span');
        name.textContent = id;
        const n = document.createElement('span');
        n.className = 'count';
        b.append(name, n);
        b.addEventListener('click', () => select(id));
        li.append(b);
        return li;
      }));
      ul.dataset.ids = ids.join('\n');
    }
    for (const b of ul.querySelectorAll('button')) {
      const r = rooms.get(b.dataset.room);
      b.querySelector('.count').textContent = `${fmt.format(r.stats ? r.stats.waiting : 0)} · ${r.config.state}`;
      b.setAttribute('aria-current', String(b.dataset.room === selected));
    }
  }

  function select(id) {
    selected = id;
    const r = rooms.get(id);
    $('room-title').textContent = 'Room ' + id;
    const link = location.origin + '/r/' + encodeURIComponent(id);
    $('room-link').textContent = 'Waiting page: ' + link;
    $('room-body').hidden = false;
    $('dial-status').textContent = '';
    fillDials(r.config);
    roomList();
    roomLive(r);
  }

  function fillDials(c) {
    $('dial-capacity').value = c.capacity;
    $('dial-admit_per_minute').value = c.admit_per_minute ?? '';
    $('dial-state').value = c.state;
    $('dial-mode').value = c.mode || 'fifo';
    $('dial-pow_difficulty').value = c.pow_difficulty;
    $('dial-target_url').value = c.target_url;
    const a = c.appearance || {};
    $('dial-title').value = a.title || '';
    $('dial-message').value = a.message || '';
    $('dial-background').value = a.background || '#f5f6fa';
    $('dial-text').value = a.text || '#161a2b';
    $('dial-accent').value = a.accent || '#3451c7';
    eventList(c.events || []);
  }

  // ---- scheduled events -------------------------------------------------
  const when = (ms) => new Date(ms).toLocaleString();
  function localInput(ms) {
    const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
    return d.toISOString().slice(0, 19);
  }
  function eventList(events) {
    const list = $('event-list');
    list.replaceChildren();
    for (const e of events) {
      const li = document.createElement('li');
      const seed = e.seed ? ` · seed ${e.seed}` : '';
      const commit = e.seed_sha256 ? ` · SHA-256(seed) ${e.seed_sha256}` : '';
      li.textContent = `${e.id}: pre-queue ${when(e.prequeue_start)}, start ${when(e.event_start)}, end ${when(e.event_end)}, ${e.order || 'fifo'}${commit}${seed}`;
      const edit = document.createElement('button');
      edit.type = 'button';
      edit.textContent = 'Edit';
      edit.addEventListener('click', () => {
        $('event-id').value = e.id;
        $('event-prequeue_start').value = localInput(e.prequeue_start);
        $('event-event_start').value = localInput(e.event_start);
        $('event-event_end').value = localInput(e.event_end);
        $('event-order').value = e.order || 'fifo';
        $('event-capacity').value = e.capacity ?? '';
        $('event-admit_per_minute').value = e.admit_per_minute ?? '';
        $('event-message').value = e.message || '';
        $('event-remove').checked = false;
      });
      li.append(' ', edit);
      list.append(li);
    }
    if (!events.length) list.textContent = 'No events.';
  }
  // The room's events with the form's event added, replaced or removed.
  function eventsValue(current) {
    const id = $('event-id').value.trim();
    const others = (current || []).filter((e) => e.id !== id);
    if ($('event-remove').checked) return others;
    const num = (v) => (v === '' ? undefined : Number(v));
    const e = {
      id,
      prequeue_start: new Date($('event-prequeue_start').value).getTime(),
      event_start: new Date($('event-event_start').value).getTime(),
      event_end: new Date($('event-event_end').value).getTime(),
      order: $('event-order').value,
      capacity: num($('event-capacity').value),
      admit_per_minute: num($('event-admit_per_minute').value),
      message: $('event-message').value.trim() || undefined,
    };
    return [...others, e];
  }

  // One dial changes one field on top of the room's current config (read
  // fresh, so two admins' changes to different dials do not undo each other).
  function dialValue(field) {
    switch (field) {
      case 'capacity': case 'pow_difficulty': return Number($('dial-' + field).value);
      case 'admit_per_minute': { const v = $('dial-admit_per_minute').value; return v === '' ? null : Number(v); }
      case 'state': return $('dial-state').value;
      case 'mode': return $('dial-mode').value;
      case 'target_url': return $('dial-target_url').value.trim();
      case 'appearance': {
        const a = { background: $('dial-background').value, text: $('dial-text').value, accent: $('dial-accent').value };
        const title = $('dial-title').value.trim(), message = $('dial-message').value.trim();
        if (title) a.title = title;
        if (message) a.message = message;
        return a;
      }
      default: return undefined;
    }
  }
  for (const form of document.querySelectorAll('form.dial')) {
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const room = selected, field = form.dataset.field, value = dialValue(field);
      const status = $('dial-status');
      status.dataset.error = 'false';
      status.textContent = `Applying ${field}…`;
      try {
        const current = await api('GET', `/api/v1/admin/rooms/${encodeURIComponent(room)}`);
        const config = { ...current.config, [field]: field === 'events' ? eventsValue(current.config.events) : value };
        const saved = await api('PUT', `/api/v1/admin/rooms/${encodeURIComponent(room)}`, config);
        const shown = field === 'appearance' ? 'waiting page'
          : field === 'events' ? `events = ${(saved.config.events || []).map((e) => e.id).join(', ') || 'none'}`
            : `${field} = ${JSON.stringify(saved.config[field])}`;
        status.textContent = `✓ ${room}: ${shown} applied at ${new Date().toLocaleTimeString()}`;
        form.dataset.saved = 'true';
        setTimeout(() => { form.dataset.saved = 'false'; }, 1500);
        const r = rooms.get(room);
        if (r) { r.config = saved.config; roomLive(r); }
        if (field === 'events') eventList(saved.config.events || []);
      } catch (e) {
        status.dataset.error = 'true';
        status.textContent = `✗ ${field} not applied: ${e.message}`;
      }
    });
  }

  $('new-room').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const id = $('new-room-id').value.trim();
    const status = $('new-room-status');
    status.dataset.error = 'false';
    try {
      await api('PUT', `/api/v1/admin/rooms/${encodeURIComponent(id)}`, {
        capacity: Number($('new-room-capacity').value), admit_per_minute: null, session_ttl_secs: 600,
        target_url: $('new-room-target').value.trim(), state: 'open', pow_difficulty: 0,
      });
      status.textContent = `✓ room ${id} created`;
      const r = await api('GET', `/api/v1/admin/rooms/${encodeURIComponent(id)}`);
      rooms.set(id, { id, config: r.config, stats: null });
      roomList();
      select(id);
    } catch (e) {
      status.dataset.error = 'true';
      status.textContent = '✗ ' + e.message;
    }
  });

  function roomLive(r) {
    const s = r.stats || {};
    $('kpi-waiting').textContent = fmt.format(s.waiting || 0);
    $('kpi-active').textContent = fmt.format(s.active || 0);
    $('kpi-capacity').textContent = fmt.format(r.config.capacity);
    $('kpi-rate').textContent = fmt.format(s.admissions_last_minute || 0);
    $('kpi-admitted').textContent = fmt.format(s.admitted_total || 0);
    const w = s.wait_seconds || { count: 0, mean: 0, buckets: [] };
    $('kpi-wait').textContent = w.count ? `${w.mean.toFixed(1)} s` : '–';
    const h = history.get(r.id) || [];
    const last = h[h.length - 1] || { waiting: 0, active: 0, capacity: r.config.capacity, rate: 0 };
    lineChart($('chart-queue'), h, ['waiting', 'active', 'capacity']);
    const legend = (cls, text) => { const s = document.createElement('span'); s.className = cls; s.textContent = text; return s; };
    $('cap-queue').replaceChildren(legend('waiting', `Waiting ${last.waiting}`), ' · ',
      legend('active', `Active ${last.active}`), ' · ', legend('capacity', `Capacity ${last.capacity}`), ' (last 5 min)');
    lineChart($('chart-rate'), h, ['rate']);
    $('cap-rate').textContent = `Admissions per minute ${last.rate} (last 5 min)`;
    bars($('chart-waits'), w.buckets);
    $('cap-waits').textContent = `Wait before admission: ${w.count} admissions, mean ${w.mean.toFixed(1)} s`;
  }

  // ---- charts: plain SVG ---------------------------------------------------------
  function el(name, attrs, text) {
    const e = document.createElementNS(SVGNS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function lineChart(svg, samples, keys) {
    const W = 320, H = 130, L = 30, B = 14, T = 6;
    const max = Math.max(1, ...samples.flatMap((s) => keys.map((k) => s[k])));
    const top = Math.ceil(max * 1.1);
    const x = (i) => L + ((W - L - 4) * i) / Math.max(1, HISTORY - 1);
    const y = (v) => H - B - ((H - B - T) * v) / top;
    const parts = [];
    for (const f of [0, 0.5, 1]) {
      parts.push(el('line', { class: 'grid', x1: L, x2: W, y1: y(top * f), y2: y(top * f) }));
      parts.push(el('text', { x: 2, y: y(top * f) + 4 }, fmt.format(Math.round(top * f))));
    }
    parts.push(el('text', { x: L, y: H - 2 }, '−5 min'), el('text', { x: W - 22, y: H - 2 }, 'now'));
    const offset = HISTORY - samples.length;
    for (const k of keys) {
      const pts = samples.map((s, i) => `${x(i + offset).toFixed(1)},${y(s[k]).toFixed(1)}`).join(' ');
      const last = samples.length ? samples[samples.length - 1][k] : 0;
      parts.push(el('polyline', { class: k, points: pts, 'data-last': last }));
    }
    svg.replaceChildren(...parts);
  }
  function bars(svg, buckets) {
    const W = 320, H = 130, B = 14, T = 12;
    const max = Math.max(1, ...buckets.map((b) => b.count));
    const n = Math.max(1, buckets.length), w = W / n;
    const parts = buckets.map((b, i) => {
      const h = ((H - B - T) * b.count) / max;
      const g = el('g', {});
      g.append(el('rect', { class: 'bucket', x: i * w + 3, y: H - B - h, width: w - 6, height: h, 'data-count': b.count }),
        el('text', { x: i * w + 1, y: H - 2, class: 'tick' }, b.le === '+Inf' ? 'more' : `${b.le}s`));
      if (b.count) g.append(el('text', { x: i * w + 4, y: H - B - h - 3 }, fmt.format(b.count)));
      return g;
    });
    svg.replaceChildren(...parts);
  }

  // ---- broadcast ----------------------------------------------------------------
  $('bc-scope').addEventListener('change', () => {
    const room = $('bc-scope').value === 'room';
    $('bc-target').disabled = room;
    $('bc-target').required = !room;
    $('bc-target').placeholder = $('bc-scope').value === 'device' ? 'device id' : 'department';
  });
  $('broadcast').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const scope = $('bc-scope').value, target = $('bc-target').value.trim();
    const body = { event: $('bc-event').value.trim(), data: { text: $('bc-text').value } };
    if (scope === 'room') Object.assign(body, { scope: 'group', target: '@room:' + selected });
    if (scope === 'department') Object.assign(body, { scope: 'group', target: `${session.tenant}:${target}` });
    if (scope === 'device') Object.assign(body, { scope: 'device', target });
    const status = $('bc-status');
    status.dataset.error = 'false';
    try {
      const r = await api('POST', '/api/v1/notify', body);
      status.textContent = `✓ sent to ${body.scope} ${body.target} (${r.id || 'accepted'})`;
      $('bc-text').value = '';
    } catch (e) {
      status.dataset.error = 'true';
      status.textContent = '✗ not sent: ' + e.message;
    }
  });

  // ---- nodes and devices ---------------------------------------------------------
  function cells(values) {
    const tr = document.createElement('tr');
    for (const v of values) { const td = document.createElement('td'); td.textContent = v; tr.append(td); }
    return tr;
  }
  function ago(ms) { const s = Math.max(0, Math.round((Date.now() - ms) / 1000)); return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`; }
  function nodes(t) {
    $('nodes-total').textContent = `· ${fmt.format(t.total_connections)} connections`;
    $('nodes').replaceChildren(...t.nodes.map((n) =>
      cells([n.node_id, n.address, fmt.format(n.connections), n.ready ? 'yes' : 'no', ago(n.last_heartbeat_ms)])));
  }
  async function search() {
    const q = $('device-q').value.trim();
    const status = $('devices-status');
    status.dataset.error = 'false';
    try {
      const r = await api('GET', `/api/v1/admin/devices?limit=100&q=${encodeURIComponent(q)}`);
      $('devices').replaceChildren(...r.devices.map((d) => {
        const tr = cells([d.device_id, d.user || '', d.type || '', d.model || '',
          (d.departments || []).join(', '), d.last_seen_ms ? ago(d.last_seen_ms) : '', d.last_ip || '']);
        const td = document.createElement('td');
        const b = document.createElement('button');
        b.type = 'button';
        b.textContent = 'Manage';
        b.setAttribute('aria-label', `Manage ${d.device_id}`);
        b.addEventListener('click', () => {
          $('manage-device').value = d.device_id;
          const prefix = session.tenant + ':';
          $('manage-departments').value = (d.departments || []).map((g) => g.startsWith(prefix) ? g.slice(prefix.length) : g).join(', ');
          $('manage-departments').focus();
        });
        td.append(b);
        tr.append(td);
        return tr;
      }));
      status.textContent = `${r.devices.length} device${r.devices.length === 1 ? '' : 's'}${q ? ` matching “${q}”` : ''}`;
    } catch (e) {
      status.dataset.error = 'true';
      status.textContent = '✗ ' + e.message;
    }
  }
  $('device-search').addEventListener('submit', (ev) => { ev.preventDefault(); search(); });

  // ---- device actions: departments, kick, forget; session revoke ---------------
  async function manage(what, run) {
    const status = $('manage-status');
    const id = $('manage-device').value.trim();
    status.dataset.error = 'false';
    if (!id) { status.dataset.error = 'true'; status.textContent = '✗ name a device'; return; }
    try {
      await run(encodeURIComponent(id));
      status.textContent = `✓ ${what}: ${id}`;
      search();
    } catch (e) {
      status.dataset.error = 'true';
      status.textContent = '✗ ' + e.message;
    }
  }
  $('device-actions').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const departments = $('manage-departments').value.split(',').map((s) => s.trim()).filter(Boolean);
    manage('departments set', (id) => api('PUT', `/api/v1/admin/devices/${id}/departments`, { departments }));
  });
  $('kick-device').addEventListener('click', () =>
    manage('kicked', (id) => api('POST', `/api/v1/admin/devices/${id}/kick`, {})));
  $('forget-device').addEventListener('click', () =>
    manage('forgotten', (id) => api('DELETE', `/api/v1/admin/devices/${id}`)));
  $('revoke-session').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const status = $('revoke-status');
    status.dataset.error = 'false';
    const device = $('revoke-device').value.trim();
    if (!selected) { status.dataset.error = 'true'; status.textContent = '✗ select a room'; return; }
    try {
      await api('POST', `/api/v1/admin/rooms/${encodeURIComponent(selected)}/sessions/revoke`, { device_id: device });
      status.textContent = `✓ session of ${device} revoked`;
    } catch (e) {
      status.dataset.error = 'true';
      status.textContent = '✗ ' + e.message;
    }
  });

  if (signedIn()) start(); else $('login-tenant').focus();
})();

// The waiting-room page: keeps the device's id and credential, holds its
// place over a WebSocket (or, where a proxy refuses WebSockets, over the
// HTTP stream: EventSource + fetch), and sends it on with its admission token.
// Protocol: docs/protocol.md. No framework, no build step.
'use strict';
(() => {
  const cfg = JSON.parse(document.getElementById('pace-room').textContent);
  const $ = (id) => document.getElementById(id);
  const store = {
    get: (k) => { try { return localStorage.getItem(k); } catch { return null; } },
    set: (k, v) => { try { localStorage.setItem(k, v); } catch { /* private mode: this page only */ } },
    del: (k) => { try { localStorage.removeItem(k); } catch { /* ignore */ } },
  };
  const css = document.documentElement.style;
  css.setProperty('--bg', cfg.colours.background);
  css.setProperty('--fg', cfg.colours.text);
  css.setProperty('--accent', cfg.colours.accent);

  const KEY_ID = 'pace.device_id', KEY_TOKEN = 'pace.token', KEY_EXP = 'pace.token_expires_at';
  const KEY_FIRST = 'pace.first.' + cfg.room, KEY_CURSORS = 'pace.cursors';
  const RENEW_BEFORE_S = 7 * 86400;

  function newId() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return 'browser_' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  let deviceId = store.get(KEY_ID);
  if (!deviceId) { deviceId = newId(); store.set(KEY_ID, deviceId); }

  // ---- what the page shows --------------------------------------------
  let state = '', lastAnnounce = 0, lastPosition = 0;
  function say(text, urgent) {
    // The live region speaks on every state change, and on position
    // changes at most every 20 s, so a screen reader is not flooded.
    const now = Date.now();
    if (urgent || now - lastAnnounce > 20000) { $('announce').textContent = text; lastAnnounce = now; }
  }
  function show(next, headline, detail) {
    const changed = next !== state;
    state = next;
    document.body.dataset.state = next;
    $('headline').textContent = headline;
    if (detail !== undefined) $('detail').textContent = detail;
    $('retry').hidden = !(next === 'reconnecting' || next === 'replaced' || next === 'error');
    if (changed) say(headline, true);
  }
  const fmt = new Intl.NumberFormat();
  function eta(seconds) {
    if (seconds === undefined || seconds === null) return 'Estimating…';
    if (seconds < 60) return 'Under a minute';
    const m = Math.round(seconds / 60);
    if (m < 60) return `About ${m} min`;
    return `About ${Math.floor(m / 60)} h ${m % 60} min`;
  }
  // ---- scheduled events: countdown, pre-queue ---------------------------
  // The times come from the room status, counted against the store's
  // clock (`now_ms`), never this browser's.
  let eventTimer = null, event = null, skew = 0;
  function clockText(ms) {
    const s = Math.max(0, Math.ceil(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const two = (n) => String(n).padStart(2, '0');
    return h > 0 ? `${h}:${two(m)}:${two(sec)}` : `${m}:${two(sec)}`;
  }
  async function fetchEvent() {
    const q = new URLSearchParams({ device_id: deviceId, token: store.get(KEY_TOKEN) || '' });
    const r = await fetch(`/api/v1/rooms/${encodeURIComponent(cfg.room)}/status?${q}`);
    const j = await r.json().catch(() => ({}));
    if (!r.ok || !j.event) return null;
    event = j.event;
    skew = event.now_ms - Date.now();
    if (event.message) $('message').textContent = event.message;
    $('commitment').hidden = !event.seed_sha256;
    if (event.seed_sha256) $('seed-sha256').textContent = event.seed_sha256;
    return event;
  }
  function untilMs(t) { return t - (Date.now() + skew); }
  async function countdownToOpen() {
    clearInterval(eventTimer);
    let e = null;
    try { e = await fetchEvent(); } catch { e = null; }
    if (!e || e.phase !== 'countdown') {
      // Opened meanwhile (or no status): ask again shortly.
      timer = setTimeout(() => send({ type: 'join', room: cfg.room }), e ? 500 : 5000);
      return;
    }
    $('position').textContent = '–';
    $('waiting').textContent = '–';
    $('eta').textContent = '–';
    const tick = () => {
      const left = untilMs(e.prequeue_start);
      $('countdown').textContent = clockText(left);
      show('countdown', `The line opens in ${clockText(left)}.`,
        'Keep this page open: it joins the line by itself when it opens. Coming early gives no advantage.');
      if (left <= 0) {
        clearInterval(eventTimer);
        // A little jitter so every waiting page does not join in the same millisecond.
        timer = setTimeout(() => send({ type: 'join', room: cfg.room }), Math.random() * 1000);
      }
    };
    tick();
    eventTimer = setInterval(tick, 1000);
    say(`The line opens in ${clockText(untilMs(e.prequeue_start))}.`, true);
  }
  function prequeue(q) {
    $('position').textContent = '–';
    $('waiting').textContent = fmt.format(q.waiting_total);
    $('eta').textContent = '–';
    const words = () => event
      ? `The start is in ${clockText(untilMs(event.event_start))}.`
      : 'The start is coming.';
    const detail = () => `${fmt.format(q.waiting_total)} people are in the pre-queue. ` + (event && event.order === 'shuffle'
      ? 'At the start everyone here is put in a random order, drawn from a seed committed in advance, ahead of later arrivals.'
      : 'At the start everyone here goes ahead of later arrivals, in the order they came.');
    show('prequeue', 'You are in the pre-queue, waiting for the start.', detail());
    const startsIn = () => (event ? 'Starts in ' + clockText(untilMs(event.event_start)) : '');
    $('countdown').textContent = startsIn();
    clearInterval(eventTimer);
    eventTimer = setInterval(() => {
      $('countdown').textContent = startsIn();
      $('detail').textContent = detail();
    }, 1000);
    if (!event || event.phase !== 'prequeue') fetchEvent().then(() => say(words(), false)).catch(() => {});
  }

  function place(q) {
    if (q.state === 'prequeue') return prequeue(q);
    clearInterval(eventTimer);
    $('countdown').textContent = '';
    let first = Number(store.get(KEY_FIRST) || 0);
    if (!first || q.position > first) { first = q.position; store.set(KEY_FIRST, String(first)); }
    $('position').textContent = fmt.format(q.position);
    $('waiting').textContent = fmt.format(q.waiting_total);
    $('eta').textContent = eta(q.eta_seconds);
    const pct = first > 1 ? Math.round(((first - q.position) / (first - 1)) * 100) : 100;
    $('bar').style.width = Math.max(pct, 3) + '%';
    $('progress').setAttribute('aria-valuenow', String(pct));
    const words = `You are number ${fmt.format(q.position)} in line.`;
    if (q.state === 'paused') {
      show('paused', 'The line is paused for now.', 'You keep your place; it moves again as soon as the organiser resumes.');
    } else if (q.state === 'closed') {
      show('closed-waiting', words, 'This waiting room takes no new visitors, but your place is kept.');
    } else {
      show('waiting', words, 'Keep this page open. Reloading it keeps your place.');
    }
    if (q.position !== lastPosition) { lastPosition = q.position; say(words, false); }
  }
  function note(n) {
    const d = n.data;
    const text = typeof d === 'string' ? d : (d && (d.text || d.message)) || JSON.stringify(d);
    const li = document.createElement('li');
    const t = document.createElement('time');
    t.textContent = new Date(n.sent_at_ms).toLocaleTimeString();
    li.append(t, text);
    $('note-list').prepend(li);
    while ($('note-list').children.length > 5) $('note-list').lastChild.remove();
    $('notes').hidden = false;
    say('Message: ' + text, true);
  }

  // ---- credential ---------------------------------------------------------
  async function register(withToken) {
    const headers = { 'content-type': 'application/json' };
    const token = store.get(KEY_TOKEN);
    if (withToken && token) headers.authorization = 'Bearer ' + token;
    const body = { device_id: deviceId, type: 'browser', app_version: 'pace-web/1', os: navigator.platform || '' };
    if (cfg.tenant) body.tenant = cfg.tenant;
    const r = await fetch('/api/v1/devices/register', { method: 'POST', headers, body: JSON.stringify(body) });
    const j = await r.json().catch(() => ({}));
    if (r.ok && j.token) {
      store.set(KEY_TOKEN, j.token);
      store.set(KEY_EXP, String(j.expires_at));
      return 'ok';
    }
    return (j.error && j.error.code) || 'http_' + r.status;
  }
  // A token valid for a week more is used as is; otherwise it is renewed.
  // An id this browser can no longer prove is given up for a new one.
  async function credential(force) {
    const exp = Number(store.get(KEY_EXP) || 0);
    if (!force && store.get(KEY_TOKEN) && exp - Date.now() / 1000 > RENEW_BEFORE_S) return;
    let r = await register(true);
    if (r === 'device_exists' || r === 'invalid_device_token' || r === 'device_token_mismatch') {
      deviceId = newId();
      store.set(KEY_ID, deviceId);
      store.del(KEY_TOKEN);
      store.del(KEY_FIRST);
      r = await register(false);
    }
    if (r !== 'ok') throw new Error(r);
  }

  // ---- notifications: dedupe by id, resume by cursor ------------------
  const seen = new Set();
  function cursors() { try { return JSON.parse(store.get(KEY_CURSORS) || '{}'); } catch { return {}; } }
  function keep(c) {
    const all = cursors();
    const k = c.scope + '|' + (c.target || '');
    const old = all[k];
    if (!old || c.epoch !== old.epoch || c.seq > old.seq) {
      all[k] = { scope: c.scope, target: c.target, epoch: c.epoch, seq: c.seq };
      store.set(KEY_CURSORS, JSON.stringify(all));
    }
  }

  // ---- proof of work ------------------------------------------------------
  let worker = null;
  function solve(ch) {
    show('verifying', 'Checking your browser…', 'A short calculation keeps automated visitors out. It takes a moment.');
    if (worker) worker.terminate();
    worker = new Worker('/assets/pow-worker.js');
    worker.onmessage = (ev) => {
      worker.terminate();
      worker = null;
      send({ type: 'solve', room: cfg.room, challenge: ch.challenge, solution: String(ev.data.solution) });
    };
    worker.postMessage({ prefix: ch.prefix, difficulty: ch.difficulty });
  }

  // ---- connection ---------------------------------------------------------
  // One connection at a time, on either transport: `conn.send(frame)`,
  // `conn.close()`. WebSocket first; the HTTP stream (GET /stream as an
  // EventSource, frames POSTed to /stream/send) when the WebSocket never
  // opens (a proxy refused the upgrade) or dies within 5 s three times
  // running; the WebSocket again after 5 minutes. Nothing visible changes.
  const STREAM_FOR_MS = 300000, QUICK_DEATH_MS = 5000, QUICK_DEATHS = 3;
  let conn = null, attempt = 0, timer = null, countdown = null, welcomed = false, stableSince = 0, powRetries = 0;
  let streamUntil = 0, quickDeaths = 0;
  function send(frame) { if (conn && conn.open) conn.send(frame); }

  async function connect() {
    clearTimeout(timer);
    clearInterval(countdown);
    try {
      await credential(attempt > 1 && !welcomed);
    } catch (e) {
      return retry(`Could not register this browser (${e.message}).`);
    }
    const held = Object.values(cursors());
    const q = new URLSearchParams({ device_id: deviceId, token: store.get(KEY_TOKEN) || '' });
    if (held.length) q.set('resume', '1');
    welcomed = false;
    conn = Date.now() < streamUntil ? openStream(q, held) : openWebSocket(q, held);
    document.documentElement.dataset.transport = conn.kind;
  }

  function onText(data, held) {
    let f;
    try { f = JSON.parse(data); } catch { return; }
    frame(f, held);
  }

  function openWebSocket(q, held) {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/ws?${q}`);
    const c = { kind: 'websocket', open: false, send: (f) => ws.send(JSON.stringify(f)), close: () => ws.close() };
    ws.onopen = () => { c.open = true; };
    ws.onmessage = (ev) => onText(ev.data, held);
    ws.onclose = (ev) => lost(c, ev.code);
    return c;
  }

  function openStream(q, held) {
    const es = new EventSource(`/stream?${q}`);
    let chain = Promise.resolve();
    const c = { kind: 'stream', open: false, close: () => es.close() };
    c.send = (f) => {
      // In order, one POST at a time; the answers come on the stream.
      const headers = { 'content-type': 'application/json', 'x-device-id': deviceId };
      const token = store.get(KEY_TOKEN);
      if (token) headers.authorization = 'Bearer ' + token;
      chain = chain.then(() => fetch('/stream/send', { method: 'POST', headers, body: JSON.stringify(f) }))
        .then((r) => {
          // 409 stream_not_here: the gateway sends this browser elsewhere
          // now: reconnect the stream (and resume).
          if (!r.ok && r.status !== 429) { es.close(); lost(c, 1006); }
        })
        .catch(() => { es.close(); lost(c, 1006); });
    };
    es.onopen = () => { c.open = true; };
    es.onmessage = (ev) => onText(ev.data, held);
    es.addEventListener('close', (ev) => {
      let code = 1006;
      try { code = JSON.parse(ev.data).code; } catch { /* no code: lost */ }
      es.close();
      lost(c, code);
    });
    // EventSource would reconnect by itself; the page decides instead
    // (backoff, fresh credential, its own resume cursors).
    es.onerror = () => { es.close(); lost(c, 1006); };
    return c;
  }

  // A connection ended: fall back to the stream when the WebSocket does
  // not get through, then as any close.
  function lost(c, code) {
    if (conn !== c) return;
    if (c.kind === 'websocket') {
      if (!c.open) {
        // Never opened: the upgrade does not get through. Straight to the stream.
        conn = null;
        streamUntil = Date.now() + STREAM_FOR_MS;
        quickDeaths = 0;
        return connect();
      }
      const quick = code === 1006 && Date.now() - stableSince < QUICK_DEATH_MS;
      quickDeaths = quick ? quickDeaths + 1 : 0;
      if (quickDeaths >= QUICK_DEATHS) { streamUntil = Date.now() + STREAM_FOR_MS; quickDeaths = 0; }
    }
    closed(code);
  }

  function frame(f, held) {
    switch (f.type) {
      case 'welcome':
        // Marks for real-user monitoring and the page benchmark.
        if (!performance.getEntriesByName('pace:welcome').length) performance.mark('pace:welcome');
        welcomed = true;
        stableSince = Date.now();
        $('device').textContent = 'Device ' + deviceId.slice(0, 16) + '…';
        if (held.length) send({ type: 'resume', cursors: held });
        send({ type: 'join', room: cfg.room });
        break;
      case 'queue':
        if (!performance.getEntriesByName('pace:first-position').length) performance.mark('pace:first-position');
        powRetries = 0;
        place(f);
        break;
      case 'challenge':
        solve(f);
        break;
      case 'admitted':
        clearInterval(eventTimer);
        $('countdown').textContent = '';
        store.del(KEY_FIRST);
        show('admitted', "You're in!", 'Taking you there now…');
        $('position').textContent = '0';
        setTimeout(() => location.replace(f.target_url), 400);
        break;
      case 'notification':
        keep(f);
        if (!seen.has(f.id)) {
          seen.add(f.id);
          if (seen.size > 500) seen.delete(seen.values().next().value);
          note(f);
        }
        break;
      case 'resumed':
        for (const s of f.scopes) keep(s);
        break;
      case 'error':
        refused(f);
        break;
      default:
        break;
    }
  }

  function refused(f) {
    switch (f.code) {
      case 'room_closed':
      case 'no_such_room':
        show('closed', 'This waiting room is closed.', f.code === 'room_closed'
          ? 'It takes no new visitors right now. This page checks again every 30 seconds.'
          : 'There is no waiting room at this address.');
        // A closed room may open again: ask again now and then.
        if (f.code === 'room_closed') timer = setTimeout(() => send({ type: 'join', room: cfg.room }), 30000);
        break;
      case 'event_not_open':
        countdownToOpen();
        break;
      case 'room_rejecting':
        show('closed', 'This waiting room is not taking visitors.',
          'It refuses new visitors right now. This page checks again every 30 seconds.');
        timer = setTimeout(() => send({ type: 'join', room: cfg.room }), 30000);
        break;
      case 'pow_invalid':
      case 'pow_reused':
        if (powRetries++ < 3) send({ type: 'join', room: cfg.room });
        else show('error', 'We could not verify this browser.', 'Reload the page to try again.');
        break;
      case 'too_many_joins':
      case 'too_many_places':
        show('error', 'Too many attempts from this device.', f.message);
        timer = setTimeout(() => send({ type: 'join', room: cfg.room }), 30000);
        break;
      default:
        if (f.code === 'store_unavailable') {
          timer = setTimeout(() => send({ type: 'join', room: cfg.room }), 2000);
        }
        show('error', 'Something went wrong; retrying.', f.message);
    }
  }

  function closed(code) {
    conn = null;
    if (worker) { worker.terminate(); worker = null; }
    if (state === 'admitted') return;
    if (code === 4000) {
      // Replaced: the same browser opened the room in another tab.
      show('replaced', 'This waiting room is open in another tab.', 'Your place is held there. Use this tab instead?');
      $('retry').textContent = 'Use this tab';
      return;
    }
    if (welcomed && Date.now() - stableSince > 10000) attempt = 0;
    // Restarts and resyncs come back at once (with a little jitter);
    // anything else backs off (full jitter, 0.5 s doubling to 20 s).
    const prompt = code === 1012 || code === 1013 || code === 4003;
    const cap = Math.min(20000, 500 * 2 ** attempt);
    const wait = prompt ? Math.random() * 1000 : Math.random() * cap;
    attempt++;
    return retry(welcomed ? 'Connection lost; your place is kept.' : 'Could not reach the waiting room.', wait);
  }

  function retry(why, wait) {
    if (wait === undefined) wait = Math.random() * Math.min(20000, 500 * 2 ** attempt++);
    const until = Date.now() + wait;
    const tick = () => {
      const s = Math.max(0, Math.ceil((until - Date.now()) / 1000));
      show('reconnecting', 'Reconnecting…', `${why} Trying again in ${s} s.`);
    };
    tick();
    clearInterval(countdown);
    countdown = setInterval(tick, 1000);
    clearTimeout(timer);
    timer = setTimeout(connect, wait);
  }

  $('retry').addEventListener('click', () => {
    $('retry').textContent = 'Reconnect now';
    attempt = 0;
    if (conn) { const c = conn; conn = null; c.close(); }
    connect();
  });
  window.addEventListener('online', () => { if (!conn) connect(); });
  connect();
})();

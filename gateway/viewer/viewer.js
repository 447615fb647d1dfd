// imgfetch viewer. Fetches images over the gateway's websocket (/v1/ws) and shows each one as
// it arrives, with its associated information. The protocol is in docs/API.md
// ("Websocket: /v1/ws"); the networks come from GET /v1/networks.
//
// Nothing is lost across a reconnect: a request the gateway accepted is asked for again by id
// ({"type":"result"}), one it had not yet accepted is sent again under the same id (and asked
// for by id if the gateway answers duplicate_id, which means it had accepted it after all).
'use strict';

(() => {
  /** Unanswered requests on the socket at once; the gateway allows 32 by default. */
  const IN_FLIGHT = 16;
  /** Keys one submission may hold: larger batches belong to the `imgfetch` CLI. */
  const MAX_KEYS = 500;
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 10000;
  const TOKEN_KEY = 'imgfetch-token';

  const $ = (id) => document.getElementById(id);
  const ui = {
    connection: $('connection'),
    form: $('request'),
    network: $('network'),
    keys: $('keys'),
    auth: $('auth'),
    token: $('token'),
    clear: $('clear'),
    share: $('share'),
    formError: $('form-error'),
    summary: $('summary'),
    results: $('results'),
    card: $('card'),
  };

  /** Every request of this page, by id, in the order they were made. */
  const requests = new Map();
  /** Ids to send (or ask for again) when the socket has room. */
  const waiting = [];
  let socket = null;
  // The token `socket` was opened with (it goes in the upgrade's query).
  let socketToken = '';
  let online = false;
  let everOpened = false;
  let retryMs = RETRY_MIN_MS;
  let retryTimer = null;
  /** The gateway refused /v1/networks without a (valid) token. */
  let needToken = false;
  /** Closed by the gateway for idleness: reconnect when there is work, not before. */
  let idle = false;
  /** The image whose binary frames are arriving: { request, frame, left, parts, bytes }. */
  let receiving = null;
  /** Prefix of this page's request ids, so ids of two tabs never collide. */
  const session = randomHex(8);
  let counter = 0;

  function randomHex(bytes) {
    const a = new Uint8Array(bytes);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function token() {
    return ui.token.value.trim();
  }

  // ---- connection ----------------------------------------------------------------------------

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connection.textContent = text;
  }

  function socketUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const t = token();
    // Browsers cannot set headers on a websocket, so the token goes in the query (docs/API.md,
    // "Client authentication"); it never goes in the page's own address.
    return `${scheme}//${location.host}/v1/ws${t ? `?token=${encodeURIComponent(t)}` : ''}`;
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (socket) return;
    idle = false;
    // A refusal stays on screen while the page keeps trying, until a token is given.
    if (ui.connection.dataset.state !== 'refused') {
      setConnection(everOpened ? 'reconnecting' : 'connecting',
        everOpened ? 'Reconnecting to the gateway…' : 'Connecting to the gateway…');
    }
    let opened = false;
    socketToken = token();
    const ws = new WebSocket(socketUrl());
    ws.binaryType = 'blob';
    socket = ws;
    ws.onopen = () => {
      opened = true;
      everOpened = true;
      online = true;
      retryMs = RETRY_MIN_MS;
      setConnection('connected', 'Connected');
      loadNetworks();
      pump();
    };
    ws.onmessage = (event) => {
      if (typeof event.data === 'string') {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch (e) {
          console.error('imgfetch: a text frame that is not JSON', e);
          return;
        }
        onFrame(frame);
      } else {
        onBinary(event.data);
      }
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      online = false;
      requeueUnanswered();
      const pending = waiting.length > 0;
      if (event.code === 1000 && event.reason.startsWith('idle timeout') && !pending) {
        idle = true;
        setConnection('idle', 'Idle: reconnects when you fetch');
        return;
      }
      if (!opened) {
        // Refused before the upgrade: a missing or wrong token shows as 401 on /v1/networks.
        checkRefusal();
      }
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    if (retryTimer || socket) return;
    const wait = retryMs;
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    if (ui.connection.dataset.state !== 'refused') {
      setConnection('reconnecting', `Gateway unreachable; trying again in ${Math.ceil(wait / 1000)} s`);
    }
    retryTimer = setTimeout(connect, wait);
  }

  async function checkRefusal() {
    try {
      const r = await fetch('/v1/networks', { headers: authHeaders(), cache: 'no-store' });
      if (r.status === 401) {
        setConnection('refused', 'The gateway needs a valid bearer token');
        ui.auth.open = true;
      }
    } catch (e) {
      // The gateway is down: the reconnect loop says so.
    }
  }

  /** Requests that were out on a socket that closed go back to the front of the line. */
  function requeueUnanswered() {
    if (receiving) {
      // A part-received image is dropped; its request is asked for again by id.
      if (receiving.request) receiving.request.accepted = true;
      receiving = null;
    }
    const again = [];
    for (const r of requests.values()) {
      if (r.out && !r.answered) {
        r.out = false;
        // Sent again: a duplicate_id answer then means "accepted after all; ask by id".
        r.resent = true;
        again.push(r.id);
        setState(r, r.accepted ? 'fetching' : 'queued', 'connection lost; will ask again');
      }
    }
    waiting.unshift(...again);
  }

  function outstanding() {
    let n = 0;
    for (const r of requests.values()) if (r.out && !r.answered) n += 1;
    return n;
  }

  /** Sends waiting requests while the socket has room. */
  function pump() {
    if (!online) {
      if (waiting.length > 0 && !socket && (idle || !retryTimer)) connect();
      return;
    }
    let room = IN_FLIGHT - outstanding();
    while (room > 0 && waiting.length > 0) {
      const r = requests.get(waiting.shift());
      if (!r || r.answered) continue;
      const frame = r.accepted
        ? { type: 'result', id: r.id }
        : { type: 'fetch', id: r.id, network: r.network, key: r.key };
      socket.send(JSON.stringify(frame));
      r.out = true;
      r.sentOnce = true;
      r.askedResult = r.accepted;
      room -= 1;
      if (r.accepted) setState(r, 'fetching', 'asking the gateway again by id');
    }
    summarize();
  }

  // ---- frames from the gateway ---------------------------------------------------------------

  function onFrame(frame) {
    const r = frame.id != null ? requests.get(frame.id) : undefined;
    switch (frame.type) {
      case 'accepted':
        if (r && !r.answered) {
          r.accepted = true;
          setState(r, 'fetching', 'queued in JetStream; waiting for a resolver');
        }
        break;
      case 'image':
        if (!r) {
          console.error('imgfetch: an image for an unknown id', frame.id);
          receiving = { request: null, frame, left: frame.frames, parts: null, bytes: 0 };
        } else {
          receiving = { request: r, frame, left: frame.frames, parts: [], bytes: 0 };
          setState(r, 'fetching', `receiving ${formatBytes(frame.size)}`);
          r.progress.max = Math.max(frame.size, 1);
          r.progress.value = 0;
          r.progress.hidden = frame.frames <= 1;
        }
        if (frame.frames === 0) finishImage();
        break;
      case 'error':
        if (frame.id == null) {
          showFormError(`The gateway refused a message: ${frame.code}: ${frame.message}`);
          break;
        }
        if (!r || r.answered) break;
        if (receiving && receiving.request === r) receiving = null;
        if (frame.code === 'duplicate_id' && r.sentOnce && !r.askedResult && r.resent) {
          // Sent again after a reconnect, but the gateway had accepted the first one.
          r.accepted = true;
          r.out = false;
          waiting.unshift(r.id);
          pump();
          break;
        }
        answer(r);
        fail(r, frame.code, frame.message);
        break;
      case 'archive_failed':
        if (r) setInfo(r, 'Archive', `not written: ${frame.message}`);
        break;
      default:
        console.warn('imgfetch: an unknown frame', frame);
    }
  }

  function onBinary(blob) {
    if (!receiving) {
      console.error('imgfetch: a binary frame with no image announced');
      return;
    }
    receiving.left -= 1;
    if (receiving.request) {
      receiving.parts.push(blob);
      receiving.bytes += blob.size;
      receiving.request.progress.value = receiving.bytes;
    }
    if (receiving.left <= 0) finishImage();
  }

  function finishImage() {
    const { request: r, frame, parts, bytes } = receiving;
    receiving = null;
    if (!r || r.answered) return;
    answer(r);
    r.progress.hidden = true;
    if (bytes !== frame.size) {
      fail(r, 'integrity', `expected ${frame.size} bytes, received ${bytes}`);
      return;
    }
    show(r, frame, new Blob(parts, { type: displayType(frame.content_type) }));
  }

  /** The request has its terminal answer: its slot on the socket is free. */
  function answer(r) {
    r.answered = true;
    r.out = false;
    pump();
  }

  /** Only image types a browser merely displays become the blob's type. */
  function displayType(contentType) {
    const essence = String(contentType || '').split(';')[0].trim().toLowerCase();
    return essence.startsWith('image/') && essence !== 'image/svg+xml'
      ? essence
      : 'application/octet-stream';
  }

  // ---- cards -----------------------------------------------------------------------------------

  function newRequest(network, key) {
    counter += 1;
    const id = `v${session}-${counter}`;
    const node = ui.card.content.firstElementChild.cloneNode(true);
    const r = {
      id,
      network,
      key,
      state: 'queued',
      accepted: false,
      answered: false,
      out: false,
      sentOnce: false,
      askedResult: false,
      resent: false,
      url: null,
      node,
      img: node.querySelector('img'),
      badge: node.querySelector('.badge'),
      detail: node.querySelector('.detail'),
      progress: node.querySelector('.progress'),
      info: node.querySelector('.info'),
    };
    node.dataset.id = id;
    node.dataset.key = key;
    node.dataset.network = network;
    node.querySelector('.key').textContent = key;
    node.setAttribute('aria-label', `${key} from ${network}`);
    setState(r, 'queued', 'waiting to be sent');
    requests.set(id, r);
    return r;
  }

  function setState(r, state, detail) {
    if (r.answered && state !== 'shown' && state !== 'error') return;
    r.state = state;
    r.node.dataset.state = state;
    r.badge.textContent = state;
    r.detail.textContent = detail || '';
    summarize();
  }

  function fail(r, code, message) {
    r.node.dataset.code = code;
    r.node.setAttribute('role', 'group');
    setState(r, 'error', `${code}: ${message}`);
  }

  function show(r, frame, blob) {
    const info = frame.info || {};
    const loc = info.location || {};
    setInfo(r, 'Network', frame.network || r.network);
    if (loc.name || loc.latitude != null) {
      const coords = loc.latitude != null && loc.longitude != null
        ? `${Number(loc.latitude).toFixed(5)}, ${Number(loc.longitude).toFixed(5)}`
        : '';
      setInfo(r, 'Place', [loc.name, coords && `(${coords})`].filter(Boolean).join(' '));
    }
    if (info.captured_at) setInfo(r, 'Taken', formatTime(info.captured_at), info.captured_at);
    if (info.device) setInfo(r, 'Device', info.device);
    setInfo(r, 'Size', `${formatBytes(frame.size)} · ${frame.content_type}`);
    if (frame.archived_as) setInfo(r, 'Archive', frame.archived_as);
    else if (frame.archive_error) setInfo(r, 'Archive', `not written: ${frame.archive_error}`);
    for (const [name, value] of Object.entries(info.extras || {})) setInfo(r, name, value);
    setInfo(r, 'Request id', r.id);

    r.url = URL.createObjectURL(blob);
    r.img.alt = [r.key, loc.name && `at ${loc.name}`, info.captured_at && `on ${formatTime(info.captured_at)}`]
      .filter(Boolean).join(', ');
    r.img.onload = () => {
      r.img.hidden = false;
      const dims = `${r.img.naturalWidth} × ${r.img.naturalHeight} px`;
      setInfo(r, 'Size', `${formatBytes(frame.size)} · ${frame.content_type} · ${dims}`);
      setState(r, 'shown', dims);
    };
    r.img.onerror = () => {
      fail(r, 'undisplayable', `the browser cannot display this ${frame.content_type} image`);
    };
    r.detail.textContent = 'decoding';
    r.img.src = r.url;
  }

  /** Sets the row `name` of a card's information list (adds it the first time). */
  function setInfo(r, name, value, datetime) {
    let row = Array.from(r.info.children).find((n) => n.tagName === 'DT' && n.textContent === name);
    let dd;
    if (row) {
      dd = row.nextElementSibling;
    } else {
      row = document.createElement('dt');
      row.textContent = name;
      dd = document.createElement('dd');
      r.info.append(row, dd);
    }
    dd.replaceChildren();
    if (datetime) {
      const t = document.createElement('time');
      t.dateTime = datetime;
      t.textContent = value;
      dd.append(t);
    } else {
      dd.textContent = value;
    }
  }

  function formatBytes(n) {
    if (n == null) return '?';
    if (n < 1024) return `${n} B`;
    const units = ['KiB', 'MiB', 'GiB', 'TiB'];
    let v = n;
    let u = -1;
    do {
      v /= 1024;
      u += 1;
    } while (v >= 1024 && u < units.length - 1);
    return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
  }

  function formatTime(iso) {
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
  }

  let summaryTimer = null;
  function summarize() {
    if (summaryTimer) return;
    // Coalesced, so that a screen reader hears a count now and then, not every frame.
    summaryTimer = setTimeout(() => {
      summaryTimer = null;
      const counts = { queued: 0, fetching: 0, shown: 0, error: 0 };
      for (const r of requests.values()) counts[r.state] += 1;
      const total = requests.size;
      if (total === 0) {
        ui.summary.textContent = 'Nothing fetched yet.';
        return;
      }
      const busy = counts.queued + counts.fetching;
      ui.summary.textContent = `${total} requested: ${counts.shown} shown, ${counts.error} failed` +
        (busy ? `, ${counts.fetching} fetching, ${counts.queued} queued.` : '. All done.');
      ui.summary.dataset.busy = String(busy);
    }, 250);
  }

  // ---- the form ------------------------------------------------------------------------------

  function authHeaders() {
    const t = token();
    return t ? { Authorization: `Bearer ${t}` } : {};
  }

  function showFormError(text) {
    ui.formError.textContent = text;
    ui.formError.hidden = !text;
  }

  async function loadNetworks() {
    const chosen = ui.network.value || new URLSearchParams(location.search).get('network') || '';
    let list;
    try {
      const r = await fetch('/v1/networks', { headers: authHeaders(), cache: 'no-store' });
      if (r.status === 401) {
        needToken = true;
        ui.auth.open = true;
        showFormError('This gateway needs a bearer token: enter it under “Bearer token”.');
        return false;
      }
      needToken = false;
      const body = await r.json();
      if (!r.ok) {
        showFormError(`Could not list the networks: ${body.code}: ${body.message}`);
        return false;
      }
      list = body.networks;
    } catch (e) {
      showFormError('Could not reach the gateway to list its networks.');
      return false;
    }
    ui.network.replaceChildren();
    for (const n of list) {
      const o = new Option(n.served ? n.name : `${n.name} (not served)`, n.name);
      ui.network.add(o);
    }
    if (chosen && !list.some((n) => n.name === chosen)) {
      ui.network.add(new Option(`${chosen} (not listed)`, chosen));
    }
    if (list.length === 0 && !chosen) {
      ui.network.add(new Option('No networks yet: start a resolver', ''));
    }
    if (chosen) ui.network.value = chosen;
    if (ui.formError.textContent.startsWith('Could not') || ui.formError.textContent.startsWith('This gateway')) {
      showFormError('');
    }
    return true;
  }

  function parseKeys(text) {
    const seen = new Set();
    const keys = [];
    for (const part of text.split(/[\n,]/)) {
      const k = part.trim();
      if (k && !seen.has(k)) {
        seen.add(k);
        keys.push(k);
      }
    }
    return keys;
  }

  function start(network, keys) {
    if (!network) {
      showFormError('Pick a network first.');
      ui.network.focus();
      return;
    }
    if (keys.length === 0) {
      showFormError('Enter at least one image key.');
      ui.keys.focus();
      return;
    }
    if (keys.length > MAX_KEYS) {
      showFormError(`${keys.length} keys is more than the ${MAX_KEYS} this page fetches at once; ` +
        'use the imgfetch command-line client for large batches.');
      return;
    }
    // What the gateway said about the token stays until a token works.
    if (!needToken) showFormError('');
    const fresh = [];
    for (const key of keys) {
      const r = newRequest(network, key);
      fresh.push(r.node);
      waiting.push(r.id);
    }
    ui.results.prepend(...fresh);
    const params = new URLSearchParams({ network, keys: keys.join(',') });
    const link = `${location.pathname}?${params}`;
    history.replaceState(null, '', link);
    ui.share.href = link;
    ui.share.hidden = false;
    pump();
  }

  ui.form.addEventListener('submit', (event) => {
    event.preventDefault();
    start(ui.network.value, parseKeys(ui.keys.value));
  });

  ui.clear.addEventListener('click', () => {
    for (const [id, r] of requests) {
      if (r.state === 'shown' || r.state === 'error') {
        if (r.url) URL.revokeObjectURL(r.url);
        r.node.remove();
        requests.delete(id);
      }
    }
    summarize();
  });

  ui.token.addEventListener('change', () => {
    sessionStorage.setItem(TOKEN_KEY, token());
    loadNetworks();
    // The reconnect loop may have opened a socket with this very token while it was being
    // typed: keep that one, and the requests already out on it (closing it would lose an image
    // on its way, which a gateway without an archive cannot give again).
    if (socket && socketToken === token()) return;
    setConnection('connecting', 'Connecting with the new token…');
    // The token is given at the upgrade: a new token needs a new socket.
    if (socket) socket.close(1000, 'new token');
    else connect();
  });

  // ---- start -----------------------------------------------------------------------------------

  ui.token.value = sessionStorage.getItem(TOKEN_KEY) || '';
  if (ui.token.value) ui.auth.open = false;
  const params = new URLSearchParams(location.search);
  const presetNetwork = params.get('network') || '';
  const presetKeys = parseKeys(params.get('keys') || '');
  if (presetKeys.length) ui.keys.value = presetKeys.join('\n');
  loadNetworks().then(() => {
    if (presetNetwork && presetKeys.length) {
      ui.network.value = presetNetwork;
      start(presetNetwork, presetKeys);
    }
  });
  connect();
})();

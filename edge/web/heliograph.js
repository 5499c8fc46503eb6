// Heliograph browser SDK: a signaling client for the heliograph.v1 protocol and a WebRTC
// mesh helper ("perfect negotiation") on top of it. Dependency-free ES module; the
// environment (WebSocket, RTCPeerConnection, timers, randomness) can be injected for tests.

export const PROTOCOL = 'heliograph.v1';

/** Tiny event emitter: `on` returns an unsubscribe function; listeners get the payload. */
export class Emitter {
  #listeners = new Map();

  on(type, fn) {
    let set = this.#listeners.get(type);
    if (!set) this.#listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this.#listeners.get(type)?.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (ev) => { off(); fn(ev); });
    return off;
  }

  emit(type, payload) {
    for (const fn of [...(this.#listeners.get(type) ?? [])]) {
      try {
        fn(payload);
      } catch (e) {
        // A throwing listener must not break protocol handling.
        (globalThis.reportError ?? console.error)(e);
      }
    }
  }
}

/** A request the server (or the client) refused; `code` is the protocol error code. */
export class HeliographError extends Error {
  constructor(code, message, request) {
    super(`${code}: ${message}`);
    this.name = 'HeliographError';
    this.code = code;
    this.request = request;
  }
}

const DEFAULTS = {
  reconnect: true,
  initialDelay: 500, // ms before the first reconnect attempt (before jitter)
  maxDelay: 15000,
  factor: 2,
  jitter: 0.5, // delay is drawn uniformly from [d * (1 - jitter), d]
  requestTimeout: 15000,
  pingInterval: 20000, // client pings detect a dead link the browser has not noticed; 0 = off
  pingTimeout: 10000,
  resume: true,
  /**
   * `async (room) => token`: called for every join (and rejoin) when set, so that each one
   * carries a fresh join token from the app's backend; called once more after `token-expired`.
   */
  getToken: null,
};

/**
 * A contact hash for `contacts` (docs/PROTOCOL.md#contacts): base64url (no padding) of
 * HMAC-SHA256(appKey, handle trimmed and lowercased), 43 characters, by WebCrypto. `appKey` is
 * shared by the app's users: it keeps hashes from being matched across apps, but whoever knows
 * it (the operator, anyone reading the app) can reverse a guessable handle such as a phone
 * number by trying them all; that is why presence needs mutual consent.
 */
export async function contactHash(handle, appKey) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) throw new Error('contactHash needs WebCrypto (a secure context)');
  const enc = new TextEncoder();
  const key = await subtle.importKey('raw', enc.encode(String(appKey)),
    { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const mac = new Uint8Array(await subtle.sign('HMAC', key, enc.encode(normalizeHandle(handle))));
  let bin = '';
  for (const b of mac) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The form of a handle that is hashed: trimmed, lowercased. */
export function normalizeHandle(handle) {
  return String(handle).trim().toLowerCase();
}

/** How many recent signal refs are remembered to give `error`/`expired` their request. */
const SIGNAL_MEMORY = 256;

/** After a `reconnect` notice the edge closes within `after_ms`; past this much more, we do. */
const DRAIN_GRACE = 5000;

/** Upper bound (ms) of the random delay before reconnecting off a draining edge. */
const DRAIN_JITTER = 100;

/**
 * The signaling client. States: idle → connecting → open ⇄ reconnecting → closed.
 * Events: welcome, state, joined, left, peer-joined, peer-left, signal, error, expired,
 * resumed, rejoined, rejoin-failed, reconnect, reconnecting, disconnected, contact, invite,
 * message (any frame).
 */
export class Heliograph extends Emitter {
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.setTimeout = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this.clearTimeout = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this.random = options.random ?? Math.random;
    this.now = options.now ?? (() => Date.now());
    this.url = null;
    this.state = 'idle';
    this.peerId = null;
    this.region = null;
    this.edge = null;
    this.iceServers = [];
    this.resumeToken = null;
    /** The highest `seq` processed in the current session (null: the edge sends none). */
    this.lastSeq = null;
    /** Rooms this client wants to be in: room → { meta, peers: Map<id, peer> | null }. */
    this.rooms = new Map();
    this.ws = null;
    this.attempt = 0;
    this.nextRef = 1;
    this.pending = new Map(); // ref → { msg, resolve, reject, timer, sent }
    this.signals = new Map(); // ref → signal msg (bounded)
    this.reconnectTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
    this.welcomed = null; // { resolve } for connect()
    this.everWelcomed = false;
    /**
     * The resume in flight: the old session { peerId, token, ref } and the fresh one from
     * `welcome` ({ peerId, token, lastSeq }) to fall back to. Kept across a socket that dies
     * during the resume, so that the next connection resumes the same old session.
     */
    this.resume = null;
    /** Rosters of the rooms while disconnected, given back if the session is resumed. */
    this.heldRosters = new Map();
    /** Rooms left while the session could not be told; left again after a resume. */
    this.leaving = new Set();
    this.drain = null; // { timer } after a `reconnect` notice
    /** The contact sets last given to `setContacts` (sent again to a fresh session). */
    this.contactSets = null;
    /** Mutual contacts online: `${hash} ${peer}` → { hash, peer, region }. */
    this.contactsOnline = new Map();
  }

  /** Opens the connection; resolves with the first `welcome`. Reconnects until `close()`. */
  connect(url) {
    if (this.state !== 'idle' && this.state !== 'closed') {
      throw new Error(`connect() called in state ${this.state}`);
    }
    this.url = url;
    const p = new Promise((resolve, reject) => { this.welcomed = { resolve, reject }; });
    this.#open('connecting');
    return p;
  }

  /** Closes for good: no more reconnects; pending requests are rejected. */
  close() {
    this.#clearTimers();
    this.#dropSocket(1000, 'client closed');
    this.#setState('closed');
    // The edge ends the session on our close: a later connect() starts afresh, no resume.
    this.resume = null;
    this.everWelcomed = false;
    for (const [ref, req] of this.pending) {
      this.pending.delete(ref);
      req.reject(new HeliographError('closed', 'the client was closed', req.msg));
    }
    this.welcomed?.reject(new HeliographError('closed', 'the client was closed'));
    this.welcomed = null;
  }

  /**
   * Joins `room`; resolves with the peers already there. Rejoined after reconnects.
   * `options.meta` may be a function of the client, called at every (re)join (e.g. to carry
   * the edge); `options.token` is a join token (the `getToken` option, when set, supplies a
   * fresh one for every join instead).
   */
  join(room, options = {}) {
    const { meta = null, token = null } = options ?? {};
    const entry = { meta, token, peers: null };
    this.rooms.set(room, entry);
    this.leaving.delete(room);
    this.heldRosters.delete(room);
    return this.#joinRoom(room, entry, {}).then((reply) => reply.peers, (err) => {
      // Refused before it reached the edge: not a room to rejoin later, like any refusal.
      if (err?.code === 'token-fetch-failed' && this.rooms.get(room) === entry) {
        this.rooms.delete(room);
      }
      throw err;
    });
  }

  /**
   * Sends a join with its token; after `token-expired`, once more with a fresh token from
   * `getToken`. Without `getToken` the join is sent at once (no await before it).
   */
  #joinRoom(room, entry, opts) {
    const send = (token, tokenRetried) =>
      this.#request(this.#joinMessage(room, entry, token), { ...opts, tokenRetried });
    const first = this.options.getToken
      ? this.#fetchToken(room).then((token) => send(token, false))
      : send(entry.token, false);
    return first.catch((err) => {
      if (!err?.freshTokenWanted) throw err;
      if (this.rooms.get(room) !== entry) {
        throw new HeliographError('cancelled', 'left before the join completed', err.request);
      }
      return this.#fetchToken(room).then((token) => send(token, true));
    });
  }

  #joinMessage(room, entry, token) {
    const msg = { type: 'join', room };
    const meta = typeof entry.meta === 'function' ? entry.meta(this) : entry.meta;
    if (meta != null) msg.meta = meta;
    if (token != null) msg.token = token;
    return msg;
  }

  /** A join token from the app's `getToken`; its failure is a `token-fetch-failed` error. */
  async #fetchToken(room) {
    try {
      return await this.options.getToken(room);
    } catch (e) {
      throw new HeliographError('token-fetch-failed', String(e?.message ?? e), { type: 'join', room });
    }
  }

  /** Leaves `room`. Resolves once the server confirms (at once when not connected). */
  leave(room) {
    this.rooms.delete(room);
    this.heldRosters.delete(room);
    for (const [ref, req] of this.pending) {
      if (req.msg.type === 'join' && req.msg.room === room) {
        this.#settle(ref);
        req.reject(new HeliographError('cancelled', 'left before the join completed', req.msg));
      }
    }
    if (this.state !== 'open') {
      // A resumed session would still be in the room: remember to leave it then.
      this.leaving.add(room);
      return Promise.resolve();
    }
    return this.#request({ type: 'leave', room }).then(() => undefined);
  }

  /** Relays `data` to peer `to` in `room`. Returns the request ref (errors arrive as events). */
  signal(room, to, kind, data) {
    const ref = `s${this.nextRef++}`;
    const msg = { type: 'signal', room, to, kind, data, ref };
    this.signals.set(ref, msg);
    if (this.signals.size > SIGNAL_MEMORY) this.signals.delete(this.signals.keys().next().value);
    if (this.state !== 'open') {
      this.emit('error', { code: 'disconnected', message: 'not connected', ref, request: msg });
      return ref;
    }
    this.#send(msg);
    return ref;
  }

  /**
   * Replaces this session's contact hashes (from `contactHash`): `publish`, the handles others
   * may find you by; `watch`, the ones you look for. Resolves on `contacts-set`. Kept by a
   * resumed session, sent again to a fresh one.
   */
  setContacts({ publish = [], watch = [] } = {}) {
    this.contactSets = { publish: [...publish], watch: [...watch] };
    return this.#request({ type: 'contacts', ...this.contactSets }).then(() => undefined);
  }

  /** Mutual contacts known to be online: { hash, peer, region }. */
  onlineContacts() {
    return [...this.contactsOnline.values()];
  }

  /**
   * Invites mutual contact `peerId` into `room` (with optional `data`). Returns the request
   * ref; success is silent, `not-a-contact` arrives as an `error` event with that ref.
   */
  invite(peerId, room, data) {
    const ref = `s${this.nextRef++}`;
    const msg = { type: 'invite', to: peerId, room, ref };
    if (data !== undefined) msg.data = data;
    this.signals.set(ref, msg);
    if (this.signals.size > SIGNAL_MEMORY) this.signals.delete(this.signals.keys().next().value);
    if (this.state !== 'open') {
      this.emit('error', { code: 'disconnected', message: 'not connected', ref, request: msg });
      return ref;
    }
    this.#send(msg);
    return ref;
  }

  /** Round trip to the edge in milliseconds. */
  ping() {
    const started = this.now();
    return this.#request({ type: 'ping' }, { queue: false }).then(() => this.now() - started);
  }

  /** The known peers of a joined room. */
  peers(room) {
    return [...(this.rooms.get(room)?.peers?.values() ?? [])];
  }

  // --- connection -------------------------------------------------------------------------

  #open(state) {
    this.#setState(state);
    let ws;
    try {
      ws = new this.WebSocket(this.url, PROTOCOL);
    } catch (e) {
      this.emit('error', { code: 'connect-failed', message: String(e?.message ?? e) });
      this.#scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = (ev) => { if (this.ws === ws) this.#onFrame(ev.data); };
    ws.onclose = (ev) => { if (this.ws === ws) this.#onClose(ev.code, ev.reason); };
    ws.onerror = () => {}; // a close event always follows
  }

  #onClose(code, reason) {
    this.ws = null;
    this.#clearPing();
    const drained = this.#endDrain(code);
    // Requests that cannot survive the connection: leave is done (we are out of every room,
    // or leave the resumed session's again), pings and resumes fail. Joins stay and are sent
    // again on the next connection.
    for (const [ref, req] of this.pending) {
      if (req.msg.type === 'join') {
        req.sent = false;
        if (req.timer) this.clearTimeout(req.timer);
        req.timer = null;
        continue;
      }
      this.#settle(ref);
      if (req.msg.type === 'leave') {
        this.leaving.add(req.msg.room);
        req.resolve({ type: 'left', room: req.msg.room });
      } else {
        req.reject(new HeliographError('disconnected', `connection closed (${code})`, req.msg));
      }
    }
    // The roster is unknown while disconnected; a resume gives it back with what was missed.
    for (const [room, entry] of this.rooms) {
      if (entry.peers) this.heldRosters.set(room, entry.peers);
      entry.peers = null;
    }
    this.emit('disconnected', { code, reason });
    if (this.state === 'closed') return;
    this.#scheduleReconnect(drained);
  }

  /** `quick`: the edge is draining, not failing, so skip the backoff (but not a jitter). */
  #scheduleReconnect(quick = false) {
    if (!this.options.reconnect || this.state === 'closed') {
      this.#setState('closed');
      return;
    }
    this.#setState('reconnecting');
    const o = this.options;
    const base = Math.min(o.maxDelay, o.initialDelay * o.factor ** this.attempt);
    const delay = quick
      ? Math.round(DRAIN_JITTER * this.random())
      : Math.round(base * (1 - o.jitter * this.random()));
    this.attempt += 1;
    this.emit('reconnecting', { attempt: this.attempt, delay });
    this.reconnectTimer = this.setTimeout(() => {
      this.reconnectTimer = null;
      if (this.state === 'reconnecting') this.#open('reconnecting');
    }, delay);
  }

  /** Gives up on the current socket (a dead or doomed link) and reconnects. */
  #abandonSocket(code, reason) {
    const ws = this.ws;
    this.#dropSocket(code, reason);
    if (ws) this.#onClose(code, reason);
  }

  #dropSocket(code, reason) {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(code, reason); } catch { /* already closed */ }
  }

  #setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this.emit('state', { state, previous });
  }

  #clearTimers() {
    if (this.reconnectTimer) this.clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.#clearPing();
    this.#endDrain(null);
  }

  /** Forgets a `reconnect` notice; true if `code` is the close that the notice announced. */
  #endDrain(code) {
    if (!this.drain) return false;
    if (this.drain.timer) this.clearTimeout(this.drain.timer);
    this.drain = null;
    return code === 1001 || code === 4001;
  }

  #clearPing() {
    if (this.pingTimer) this.clearTimeout(this.pingTimer);
    if (this.pongTimer) this.clearTimeout(this.pongTimer);
    this.pingTimer = this.pongTimer = null;
  }

  #schedulePing() {
    this.#clearPing();
    if (!this.options.pingInterval) return;
    this.pingTimer = this.setTimeout(() => {
      this.pingTimer = null;
      this.pongTimer = this.setTimeout(() => {
        // No pong: the link is dead even if the socket has not noticed. Start over.
        this.pongTimer = null;
        this.#abandonSocket(4000, 'ping timeout');
      }, this.options.pingTimeout);
      this.ping().then(() => this.#schedulePing(), () => {});
    }, this.options.pingInterval);
  }

  // --- requests ---------------------------------------------------------------------------

  /**
   * `queue: false` fails at once when not open instead of waiting for the next session, and
   * is not held back by a resume; `now` sends on the current socket whatever the state (the
   * resume itself, before anyone can hear of the new `welcome`).
   */
  #request(msg, { queue = true, internal = false, now = false, tokenRetried = false } = {}) {
    return new Promise((resolve, reject) => {
      if (this.state === 'closed') {
        reject(new HeliographError('closed', 'the client is closed', msg));
        return;
      }
      if (!queue && !now && this.state !== 'open') {
        reject(new HeliographError('disconnected', 'not connected', msg));
        return;
      }
      const ref = `r${this.nextRef++}`;
      msg.ref = ref;
      const req = {
        msg, resolve, reject, sent: false, timer: null, internal, rejoin: internal, tokenRetried,
      };
      this.pending.set(ref, req);
      // While not open, the request waits for the next `welcome` (joins via rejoin); while
      // resuming, until the session is known (a rejoin would race the resumed membership).
      if (now || (this.state === 'open' && (!this.resume || !queue))) this.#transmit(req);
    });
  }

  /** Sends a pending request; its timeout runs only while it is on the wire. */
  #transmit(req) {
    req.sent = true;
    const ref = req.msg.ref;
    if (req.timer) this.clearTimeout(req.timer);
    req.timer = this.setTimeout(() => {
      if (!this.#settle(ref)) return;
      req.reject(new HeliographError('timeout', `no reply to ${req.msg.type}`, req.msg));
    }, this.options.requestTimeout);
    this.#send(req.msg);
  }

  #settle(ref) {
    const req = this.pending.get(ref);
    if (!req) return null;
    this.pending.delete(ref);
    if (req.timer) this.clearTimeout(req.timer);
    return req;
  }

  #send(msg) {
    // `ack`: every frame up to it has been read, so the edge need not keep it for a replay.
    // Not while a resume is under way: the numbering is then about to change.
    const out = this.lastSeq != null && this.resume == null && msg.type !== 'resume'
      ? { ...msg, ack: this.lastSeq }
      : msg;
    try {
      this.ws?.send(JSON.stringify(out));
    } catch (e) {
      this.emit('error', { code: 'send-failed', message: String(e?.message ?? e), request: msg });
    }
  }

  // --- frames -----------------------------------------------------------------------------

  #onFrame(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this.emit('error', { code: 'bad-frame', message: 'the server sent a frame that is not JSON' });
      return;
    }
    if (!this.#inSequence(msg)) return;
    this.emit('message', msg);
    switch (msg.type) {
      case 'welcome': return this.#onWelcome(msg);
      case 'joined': {
        const entry = this.rooms.get(msg.room);
        const peers = msg.peers ?? [];
        if (entry) entry.peers = new Map(peers.map((p) => [p.id, p]));
        const req = this.#settle(msg.ref);
        req?.resolve(msg);
        this.emit('joined', { room: msg.room, peers, rejoin: req ? !!req.rejoin : false });
        return;
      }
      case 'left':
        this.leaving.delete(msg.room);
        this.#settle(msg.ref)?.resolve(msg);
        this.emit('left', { room: msg.room });
        return;
      case 'peer-joined':
        this.rooms.get(msg.room)?.peers?.set(msg.peer.id, msg.peer);
        this.emit('peer-joined', { room: msg.room, peer: msg.peer });
        return;
      case 'peer-left':
        this.rooms.get(msg.room)?.peers?.delete(msg.peer_id);
        this.emit('peer-left', { room: msg.room, peerId: msg.peer_id, reason: msg.reason });
        return;
      case 'signal':
        this.emit('signal', { room: msg.room, from: msg.from, kind: msg.kind, data: msg.data });
        return;
      case 'resumed':
        return this.#onResumed(msg);
      case 'pong':
      case 'contacts-set':
        this.#settle(msg.ref)?.resolve(msg);
        return;
      case 'contact': {
        const key = `${msg.hash} ${msg.peer}`;
        if (msg.online) {
          this.contactsOnline.set(key, { hash: msg.hash, peer: msg.peer, region: msg.region ?? null });
        } else {
          this.contactsOnline.delete(key);
        }
        this.emit('contact', {
          hash: msg.hash, online: !!msg.online, peer: msg.peer, region: msg.region ?? null,
        });
        return;
      }
      case 'invite':
        this.emit('invite', { from: msg.from, room: msg.room, data: msg.data ?? null });
        return;
      case 'expired': {
        const request = this.signals.get(msg.ref) ?? null;
        this.emit('expired', {
          to: msg.to, room: msg.room ?? request?.room ?? null, ref: msg.ref ?? null, request,
        });
        return;
      }
      case 'reconnect':
        return this.#onReconnectNotice(msg);
      case 'error':
        return this.#onError(msg);
      default:
        // Unknown types are ignored so that newer edges can talk to older clients.
        return;
    }
  }

  /**
   * Tracks `seq` and tells whether to process the frame: false for one already processed
   * (an edge may replay what it is unsure we got). Frames without `seq` (older edges) pass.
   */
  #inSequence(msg) {
    const seq = msg?.seq;
    if (!Number.isInteger(seq)) return true;
    // Both open a session of their own, numbered from scratch (see #onWelcome, #resumeFailed).
    if (msg.type === 'welcome' || this.#isResumeFailure(msg)) return true;
    if (this.lastSeq != null && seq <= this.lastSeq) return false;
    this.lastSeq = seq;
    // While resuming, numbered frames are the old session's: it is back, rosters included.
    if (this.resume) this.#restoreRosters();
    return true;
  }

  #isResumeFailure(msg) {
    return msg.type === 'error' && this.resume != null && msg.ref != null
      && msg.ref === this.resume.ref;
  }

  #onWelcome(msg) {
    const reconnect = this.everWelcomed;
    const target = reconnect && this.options.resume ? this.#resumeTarget() : null;
    this.everWelcomed = true;
    this.attempt = 0;
    this.peerId = msg.peer_id;
    this.region = msg.region;
    this.edge = msg.edge;
    this.iceServers = msg.ice_servers ?? [];
    this.resumeToken = msg.resume_token ?? null;
    this.lastSeq = Number.isInteger(msg.seq) ? msg.seq : null;
    if (target) {
      // Try to keep the old session; on `resume-failed` carry on with this one and rejoin.
      // Sent before anyone hears of this welcome, so that it is the first request.
      this.resume = {
        ...target,
        ref: null,
        fresh: { peerId: this.peerId, token: this.resumeToken, lastSeq: this.lastSeq },
      };
      this.#sendResume(target);
    } else {
      this.resume = null;
    }
    this.#setState('open');
    this.emit('welcome', { ...msg, reconnect, resuming: !!target });
    this.welcomed?.resolve(msg);
    this.welcomed = null;
    this.#schedulePing();
    if (!target) {
      this.#startFresh();
      this.#afterSession(false);
    }
  }

  /** The session to resume: the one of a resume cut short, else the last one, if any. */
  #resumeTarget() {
    const r = this.resume;
    const token = r ? r.token : this.resumeToken;
    if (!token) return null;
    return { peerId: r ? r.peerId : this.peerId, token, lastSeq: this.lastSeq };
  }

  #sendResume(target) {
    const msg = { type: 'resume', token: target.token };
    if (target.lastSeq != null) msg.last_seq = target.lastSeq;
    this.#request(msg, { queue: false, now: true }).then(() => {}, (err) => {
      // No answer on a live socket leaves the session's state unknown: start over, resuming
      // the same old session (the edge answers `resume-failed` once it is gone).
      if (err.code === 'timeout' && this.resume?.ref === msg.ref) {
        this.#abandonSocket(4002, 'resume timeout');
      }
    });
    this.resume.ref = msg.ref;
    // From the first numbered frame on, the stream is the resumed session's.
    this.lastSeq = target.lastSeq;
  }

  #onResumed(msg) {
    const req = this.#settle(msg.ref);
    req?.resolve(msg);
    const r = this.resume;
    if (!r || (msg.ref != null && msg.ref !== r.ref)) return; // not our resume (stale)
    this.resume = null;
    this.#restoreRosters();
    this.peerId = msg.peer_id ?? r.peerId;
    this.resumeToken = msg.resume_token ?? r.token;
    // The session kept its rooms, including those left while it could not be told.
    for (const room of this.leaving) {
      if (!this.rooms.has(room)) {
        this.#request({ type: 'leave', room }, { internal: true }).then(() => {}, () => {});
      }
    }
    this.leaving.clear();
    this.emit('resumed', { peerId: this.peerId, replayed: msg.replayed ?? 0 });
    this.#afterSession(true);
  }

  #resumeFailed(msg) {
    const { fresh } = this.resume;
    this.resume = null;
    this.peerId = fresh.peerId;
    this.resumeToken = fresh.token;
    this.lastSeq = Number.isInteger(msg.seq) ? msg.seq : fresh.lastSeq;
    this.#startFresh();
    this.#afterSession(false);
  }

  #restoreRosters() {
    for (const [room, peers] of this.heldRosters) {
      const entry = this.rooms.get(room);
      if (entry && !entry.peers) entry.peers = peers;
    }
    this.heldRosters.clear();
  }

  /** A new session is in no room: forget what only a resumed one would need. */
  #startFresh() {
    this.heldRosters.clear();
    this.leaving.clear();
    // Nobody is known to be online for a new session: the re-sent sets will tell again.
    const known = [...this.contactsOnline.values()];
    this.contactsOnline.clear();
    for (const c of known) this.emit('contact', { ...c, online: false, region: null });
    for (const [ref, req] of this.pending) {
      if (req.msg.type === 'leave' && !req.sent) {
        this.#settle(ref);
        req.resolve({ type: 'left', room: req.msg.room });
      }
    }
  }

  /** Once the session is known: rejoin the rooms (unless resumed) and send queued requests. */
  #afterSession(resumed) {
    if (!resumed) {
      for (const room of this.rooms.keys()) {
        const waiting = [...this.pending.values()].some(
          (r) => r.msg.type === 'join' && r.msg.room === room);
        if (!waiting) this.#rejoin(room); // else the caller's own join is (re)sent below
      }
      const waiting = [...this.pending.values()].some((r) => r.msg.type === 'contacts' && !r.sent);
      if (this.contactSets && !waiting) this.#resendContacts();
    }
    for (const req of this.pending.values()) {
      if (!req.sent) {
        if (req.msg.type === 'join') {
          req.rejoin = true;
          const entry = this.rooms.get(req.msg.room);
          if (typeof entry?.meta === 'function') req.msg.meta = entry.meta(this);
        }
        this.#transmit(req);
      }
    }
  }

  /**
   * The edge is draining and closes this socket (1001) in about `after_ms`: reconnect at
   * once when it does, and close it ourselves if it does not.
   */
  #onReconnectNotice(msg) {
    // During a resume it may be a replayed notice meant for the old socket, not this one.
    if (this.resume) return;
    const afterMs = Math.max(0, Number(msg.after_ms) || 0);
    this.#endDrain(null);
    const ws = this.ws;
    this.drain = {
      timer: this.setTimeout(() => {
        this.drain.timer = null;
        if (this.ws === ws) this.#abandonSocket(4001, 'reconnect notice expired');
      }, afterMs + DRAIN_GRACE),
    };
    this.emit('reconnect', { after_ms: afterMs });
  }

  /** A fresh session has no contact sets: send the last ones again. */
  #resendContacts() {
    // A refusal reaches the app as an `error` event; a lost socket sends them again at the
    // next welcome.
    this.#request({ type: 'contacts', ...this.contactSets }, { internal: true })
      .then(() => {}, () => {});
  }

  #rejoin(room) {
    const entry = this.rooms.get(room);
    if (!entry) return;
    this.#joinRoom(room, entry, { internal: true }).then(
      () => this.emit('rejoined', { room }),
      (err) => this.#rejoinFailed(room, err));
  }

  #rejoinFailed(room, err) {
    if (!this.rooms.has(room) || this.state !== 'open') return; // the next welcome rejoins
    if (err.code === 'unavailable' || err.code === 'timeout' || err.code === 'token-fetch-failed') {
      // The registry (or the app's token backend) is briefly unavailable: try again after
      // the first backoff step.
      this.setTimeout(() => { if (this.state === 'open') this.#rejoin(room); },
        this.options.initialDelay);
      return;
    }
    this.rooms.delete(room);
    this.emit('rejoin-failed', { room, code: err.code, message: err.message });
  }

  #onError(msg) {
    if (this.#isResumeFailure(msg)) {
      // Expected when the session is gone (or the edge keeps none): not an error event.
      const req = this.#settle(msg.ref);
      req?.reject(new HeliographError(msg.code, msg.message, req.msg));
      this.#resumeFailed(msg);
      return;
    }
    const req = msg.ref != null ? this.#settle(msg.ref) : null;
    const request = req?.msg ?? (msg.ref != null ? this.signals.get(msg.ref) : undefined) ?? null;
    if (req) {
      // An expired join token is asked for once more (`getToken`) and the join sent again:
      // the room stays wanted and nobody is told of the first refusal.
      const freshTokenWanted = req.msg.type === 'join' && msg.code === 'token-expired'
        && !!this.options.getToken && !req.tokenRetried;
      if (freshTokenWanted) {
        const err = new HeliographError(msg.code, msg.message, req.msg);
        err.freshTokenWanted = true;
        req.reject(err);
        return;
      }
      if (req.msg.type === 'join' && !req.internal) this.rooms.delete(req.msg.room);
      req.reject(new HeliographError(msg.code, msg.message, req.msg));
      if (req.msg.type === 'resume') return; // a stale resume: the session is settled
      if (req.msg.type === 'leave' && req.internal) return; // the session had left already
    }
    this.emit('error', { code: msg.code, message: msg.message, ref: msg.ref, request });
  }
}

// --- PeerMesh ------------------------------------------------------------------------------

/** Default rule: the peer with the lexicographically smaller id is polite. */
export function isPolite(selfId, otherId) {
  return selfId < otherId;
}

/**
 * One RTCPeerConnection per peer of a room, negotiated with the "perfect negotiation"
 * pattern over Heliograph signals. The impolite side (larger id) opens the default data
 * channel, which starts the first negotiation; either side may renegotiate later.
 * Events: peer, channel, connectionstatechange, close, error.
 */
export class PeerMesh extends Emitter {
  constructor(client, room, options = {}) {
    super();
    this.client = client;
    this.room = room;
    this.RTCPeerConnection = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    this.rtcConfig = options.rtcConfig ?? {};
    this.channelLabel = options.channelLabel ?? 'data';
    this.channelOptions = options.channelOptions ?? { ordered: true };
    this.polite = options.polite ?? isPolite;
    this.peers = new Map();
    this.selfId = null;
    this.unsubscribe = [];
  }

  /** Starts following the room (call after or before `client.join`). */
  start() {
    const c = this.client;
    const mine = (ev) => ev.room === this.room;
    this.unsubscribe.push(
      // While resuming, `peerId` is the fresh session's only until `resumed` restores ours.
      c.on('welcome', (ev) => { if (!ev.resuming) this.#syncSelf(); }),
      c.on('joined', (ev) => { if (mine(ev)) this.#reconcile(ev.peers); }),
      c.on('left', (ev) => { if (mine(ev)) this.#closeAll('left'); }),
      c.on('peer-joined', (ev) => { if (mine(ev)) this.#replace(ev.peer); }),
      c.on('peer-left', (ev) => { if (mine(ev)) this.closePeer(ev.peerId, ev.reason ?? 'left'); }),
      c.on('signal', (ev) => { if (mine(ev)) this.#onSignal(ev); }),
      c.on('error', (ev) => {
        const r = ev.request;
        if (r?.type === 'signal' && r.room === this.room && ev.code === 'unknown-peer') {
          this.closePeer(r.to, 'unknown-peer');
        }
      }),
    );
    this.#syncSelf();
    const peers = c.rooms.get(this.room)?.peers;
    if (peers) this.#reconcile([...peers.values()]);
    return this;
  }

  /** Stops following the room and closes every connection. */
  close() {
    for (const off of this.unsubscribe) off();
    this.unsubscribe = [];
    this.#closeAll('closed');
  }

  /** The open default data channel to `peerId`, if any. */
  channel(peerId) {
    const ch = this.peers.get(peerId)?.channel;
    return ch && ch.readyState === 'open' ? ch : null;
  }

  /** Sends on every open default channel; returns how many peers it went to. */
  broadcast(data) {
    let n = 0;
    for (const id of this.peers.keys()) {
      const ch = this.channel(id);
      if (ch) { ch.send(data); n += 1; }
    }
    return n;
  }

  closePeer(peerId, reason = 'closed') {
    const p = this.peers.get(peerId);
    if (!p) return;
    this.peers.delete(peerId);
    p.closed = true;
    try { p.channel?.close(); } catch { /* ignore */ }
    try { p.pc.close(); } catch { /* ignore */ }
    this.emit('close', { peer: p, reason });
  }

  #syncSelf() {
    const id = this.client.peerId;
    if (id && this.selfId && id !== this.selfId) {
      // We reconnected as a new peer: every remote side knows us by the old id.
      this.#closeAll('reconnected');
    }
    this.selfId = id;
  }

  #closeAll(reason) {
    for (const id of [...this.peers.keys()]) this.closePeer(id, reason);
  }

  #reconcile(list) {
    this.#syncSelf();
    const ids = new Set(list.map((p) => p.id));
    for (const id of [...this.peers.keys()]) if (!ids.has(id)) this.closePeer(id, 'gone');
    for (const info of list) if (!this.peers.has(info.id)) this.#add(info);
  }

  #replace(info) {
    if (this.peers.has(info.id)) this.closePeer(info.id, 'rejoined');
    this.#add(info);
  }

  #add(info) {
    if (!this.selfId || info.id === this.selfId) return null;
    const rtcConfig = { iceServers: this.client.iceServers ?? [], ...this.rtcConfig };
    const pc = new this.RTCPeerConnection(rtcConfig);
    const p = {
      id: info.id,
      meta: info.meta ?? {},
      region: info.region ?? null,
      pc,
      polite: this.polite(this.selfId, info.id),
      channel: null,
      makingOffer: false,
      ignoreOffer: false,
      settingAnswer: false,
      queue: Promise.resolve(),
      closed: false,
    };
    this.peers.set(p.id, p);
    const send = (kind, data) => { if (!p.closed) this.client.signal(this.room, p.id, kind, data); };
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) send('candidate', candidate.toJSON ? candidate.toJSON() : candidate);
    };
    pc.onnegotiationneeded = async () => {
      try {
        p.makingOffer = true;
        await pc.setLocalDescription();
        if (!p.closed) send('offer', { type: pc.localDescription.type, sdp: pc.localDescription.sdp });
      } catch (error) {
        this.emit('error', { peer: p, error });
      } finally {
        p.makingOffer = false;
      }
    };
    pc.onconnectionstatechange = () => {
      if (p.closed) return;
      this.emit('connectionstatechange', { peer: p, state: pc.connectionState });
      if (pc.connectionState === 'failed' && pc.restartIce) pc.restartIce();
    };
    pc.ondatachannel = ({ channel }) => this.#adopt(p, channel);
    this.emit('peer', { peer: p });
    if (!p.polite) {
      this.#adopt(p, pc.createDataChannel(this.channelLabel, this.channelOptions));
    }
    return p;
  }

  #adopt(p, channel) {
    channel.binaryType = 'arraybuffer';
    if (channel.label === this.channelLabel) p.channel = channel;
    const announce = () => { if (!p.closed) this.emit('channel', { peer: p, channel }); };
    if (channel.readyState === 'open') announce();
    else channel.addEventListener('open', announce, { once: true });
  }

  #onSignal({ from, kind, data }) {
    let p = this.peers.get(from);
    if (!p) {
      // A peer we have not heard of yet (its signal overtook the roster event).
      const info = this.client.rooms.get(this.room)?.peers?.get(from) ?? { id: from };
      p = this.#add(info);
      if (!p) return;
    }
    p.queue = p.queue.then(() => this.#handle(p, kind, data)).catch((error) => {
      if (!p.closed) this.emit('error', { peer: p, error });
    });
  }

  async #handle(p, kind, data) {
    if (p.closed) return;
    const pc = p.pc;
    if (kind === 'offer' || kind === 'answer') {
      const description = { type: kind, sdp: data?.sdp };
      const readyForOffer = !p.makingOffer && (pc.signalingState === 'stable' || p.settingAnswer);
      const collision = kind === 'offer' && !readyForOffer;
      p.ignoreOffer = !p.polite && collision;
      if (p.ignoreOffer) return;
      p.settingAnswer = kind === 'answer';
      try {
        await pc.setRemoteDescription(description);
      } finally {
        p.settingAnswer = false;
      }
      if (kind === 'offer' && !p.closed) {
        await pc.setLocalDescription();
        this.client.signal(this.room, p.id, 'answer',
          { type: pc.localDescription.type, sdp: pc.localDescription.sdp });
      }
    } else if (kind === 'candidate') {
      try {
        await pc.addIceCandidate(data);
      } catch (e) {
        if (!p.ignoreOffer) throw e;
      }
    } else {
      this.emit('custom', { peer: p, data });
    }
  }
}

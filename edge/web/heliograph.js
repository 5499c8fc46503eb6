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
  return base64url(new Uint8Array(await subtle.sign('HMAC', key, enc.encode(normalizeHandle(handle)))));
}

/** The form of a handle that is hashed: trimmed, lowercased. */
export function normalizeHandle(handle) {
  return String(handle).trim().toLowerCase();
}

/** base64url without padding, of bytes. */
function base64url(bytes) {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Bytes of base64url text (padding optional); throws on anything else. */
function fromBase64url(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
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
    /**
     * This client's member key pair (ECDSA P-256; the private key is not extractable) and its
     * public key as sent in `join` (base64url of the raw point), once `enableKeys()` made it.
     */
    this.keys = null;
    this.keysReady = null; // the promise of `keys` while it is being generated
  }

  /**
   * Makes this client's member key pair (once) and sends its public key with every join from
   * then on (the edge shows it to the room as `meta.key`). A `PeerMesh` with brokering calls it.
   * Resolves with `{ publicKey, privateKey, raw }` (`raw`: the base64url public key).
   */
  enableKeys() {
    if (this.keysReady) return this.keysReady;
    const subtle = globalThis.crypto?.subtle;
    if (!subtle) return Promise.reject(new Error('WebCrypto (crypto.subtle) is unavailable'));
    this.keysReady = (async () => {
      const pair = await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false,
        ['sign', 'verify']);
      const raw = base64url(new Uint8Array(await subtle.exportKey('raw', pair.publicKey)));
      this.keys = { publicKey: pair.publicKey, privateKey: pair.privateKey, raw };
      return this.keys;
    })();
    return this.keysReady;
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
   * fresh one for every join instead). `options.public` lists a room this join creates to
   * discovery (`listRooms`), with `options.roomMeta` (a JSON object) shown in the listing.
   */
  join(room, options = {}) {
    const { meta = null, token = null, roomMeta = null } = options ?? {};
    const entry = { meta, token, peers: null, public: options?.public === true, roomMeta };
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
    const sendNow = (token, tokenRetried) =>
      this.#request(this.#joinMessage(room, entry, token), { ...opts, tokenRetried });
    // A key still being made is waited for, so that no join of a keyed client goes without.
    const send = (token, tokenRetried) => (this.keysReady && !this.keys
      ? this.keysReady.then(() => sendNow(token, tokenRetried), () => sendNow(token, tokenRetried))
      : sendNow(token, tokenRetried));
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
    if (this.keys) msg.key = this.keys.raw;
    // Only a join that creates the room uses these; a rejoin that re-creates it keeps them.
    if (entry.public) msg.public = true;
    if (entry.roomMeta != null) msg.room_meta = entry.roomMeta;
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
    return this.#sendUnanswered({ type: 'signal', room, to, kind, data, ref });
  }

  /**
   * Sends a request that is answered only when it fails (signal, invite): it is remembered
   * by its ref, so that an `error` event can carry it. Returns the ref.
   */
  #sendUnanswered(msg) {
    const { ref } = msg;
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
    return this.#sendUnanswered(msg);
  }

  /**
   * A page of public rooms of every region, from the registry: `list-rooms {prefix?, cursor?,
   * limit?}` → `{ items: [{ room, members, regions, meta? }], next, partial, unreachable }`,
   * sorted by room id. Pass `next` back as `cursor` for the following page (`null`: the
   * last). `partial` means the regions in `unreachable` did not answer in time and their rooms
   * are missing. Fails at once (`disconnected`) when not connected.
   */
  listRooms(options = {}) {
    const msg = { type: 'list-rooms' };
    for (const k of ['prefix', 'cursor', 'limit']) if (options?.[k] != null) msg[k] = options[k];
    return this.#request(msg, { queue: false }).then((reply) => ({
      items: reply.items ?? [],
      next: reply.next ?? null,
      partial: reply.partial === true,
      unreachable: reply.unreachable ?? [],
    }));
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
      case 'rooms':
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
 * The control channel's fixed SCTP stream id. It is negotiated (both sides create it), so it
 * opens with the connection and needs no in-band announcement; the browser numbers app
 * channels up from 0, far below it.
 */
export const CONTROL_CHANNEL_ID = 1000;
const CONTROL_LABEL = 'heliograph-control';
/** First element of the signed text of a brokered envelope: a signature for another use or
 * version can never pass for one of these. */
const ENVELOPE_CONTEXT = 'heliograph-brokered-v1';
/** Marks the mesh's own notices among `custom` signals through the server. */
const NOTICE = 'heliograph-mesh';
const SIGNAL_KINDS = new Set(['offer', 'answer', 'candidate', 'custom']);

const MESH_DEFAULTS = {
  /** Introductions and renegotiation through peers (see docs/SDK.md, Brokering). */
  brokering: false,
  /** ms a signal for a peer we hold no channel with waits for a peer able to relay it. */
  introductionTimeout: 3000,
  /** ms a connection introduced through peers may take to come up before its signals are sent again through the server. */
  connectTimeout: 8000,
  /** ms a connection kept across a peer's rejoin waits to learn and see its new id. */
  rebindTimeout: 15000,
  /** ms a peer that should be called waits for the call before calling itself. */
  answerTimeout: 6000,
  /** ms a brokered signal from a sender not (yet) in our roster is held for its `peer-joined`. */
  rosterWait: 2000,
  /** Relayed envelopes a second accepted from each neighbour (bursts of twice as many). */
  relayRate: 50,
  /** Most brokered signals held at once waiting for the roster. */
  maxHeld: 64,
  /** ms of clock difference tolerated on brokered envelopes; replays are remembered as long. */
  maxSkew: 120000,
  /** Brokered signals remembered per peer, to send again through the server if refused. */
  relayLog: 64,
  /** ms between advertisements of known public rooms to each neighbour. */
  gossipInterval: 5000,
  /** ms after which a room heard of (from the server or a neighbour) is no longer advertised or listed. */
  gossipTtl: 60000,
  /** Most rooms in one advertisement, and kept from each neighbour's. */
  maxGossipRooms: 64,
  /** Control messages larger than this are ignored. */
  maxControlBytes: 262144,
};

/** The text a brokered envelope's signature covers: every field but `sig`, in a fixed order. */
export function canonicalEnvelope(env) {
  return JSON.stringify([ENVELOPE_CONTEXT, env.from, env.to, env.room, env.kind, env.body,
    env.ts, env.nonce]);
}

function isEnvelope(env) {
  return env != null && typeof env === 'object'
    && ['from', 'to', 'room', 'kind', 'body', 'nonce', 'sig'].every((k) => typeof env[k] === 'string')
    && Number.isFinite(env.ts) && SIGNAL_KINDS.has(env.kind) && env.nonce.length <= 64;
}

/**
 * One RTCPeerConnection per peer of a room, negotiated with the "perfect negotiation"
 * pattern over Heliograph signals. The impolite side (larger id) opens the default data
 * channel, which starts the first negotiation; either side may renegotiate later.
 * With `brokering`, each connection also carries a control channel over which signals between
 * connected peers travel, and through which a peer introduces a newcomer to its neighbours
 * (signed by the originator, verified against the roster's keys); the server is the fallback.
 * Events: peer, channel, connectionstatechange, close, error, custom, signalled, refused,
 * fallback, rebound.
 */
export class PeerMesh extends Emitter {
  constructor(client, room, options = {}) {
    super();
    this.client = client;
    this.room = room;
    this.options = { ...MESH_DEFAULTS, ...options };
    this.RTCPeerConnection = options.RTCPeerConnection ?? globalThis.RTCPeerConnection;
    this.rtcConfig = options.rtcConfig ?? {};
    this.channelLabel = options.channelLabel ?? 'data';
    this.channelOptions = options.channelOptions ?? { ordered: true };
    this.polite = options.polite ?? isPolite;
    this.brokering = this.options.brokering === true;
    /**
     * Test hooks only: `tamperRelayed(envelope)` returns what this page passes on instead of
     * what it relays for others (null: nothing).
     */
    this.testHooks = options.testHooks ?? null;
    this.setTimeout = client.setTimeout ?? globalThis.setTimeout.bind(globalThis);
    this.clearTimeout = client.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
    this.now = client.now ?? (() => Date.now());
    this.peers = new Map();
    this.selfId = null;
    this.unsubscribe = [];
    this.counters = {
      signalsViaServer: 0, signalsViaPeers: 0, relayed: 0, brokeredRefused: 0, fallbacks: 0,
      relayDropped: 0,
    };
    this.waiters = new Set(); // routing decisions waiting for a peer able to relay
    this.held = []; // brokered envelopes from senders not yet in the roster
    this.seen = new Map(); // sender → Map(nonce → ts): what was accepted, against replays
    this.verifyKeys = new Map(); // key text → Promise<CryptoKey>
    this.untrusted = new Set(); // relays whose forwards failed verification
    this.verifying = Promise.resolve(); // brokered envelopes are checked one at a time, in order
    this.knownRooms = new Map(); // room → { room, members, regions, meta, seenAt, source }
    this.gossipTimer = null;
    this.announceQueued = false;
    this.movedOn = new Set(); // ids whose connections were rebound to newer ones
    if (this.brokering) {
      this.client.enableKeys().catch((error) => this.emit('error', { peer: null, error }));
    }
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
      c.on('peer-joined', (ev) => {
        if (!mine(ev)) return;
        this.#replace(ev.peer);
        this.#releaseHeld();
      }),
      c.on('peer-left', (ev) => { if (mine(ev)) this.#departed(ev.peerId, ev.reason ?? 'left'); }),
      c.on('signal', (ev) => {
        if (!mine(ev)) return;
        if (this.brokering && ev.kind === 'custom' && ev.data?.[NOTICE]) {
          this.#onNotice(ev.from, ev.data);
          return;
        }
        this.#receive(ev.from, ev.kind, ev.data, 'server');
      }),
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
    if (this.brokering) this.#scheduleGossip();
    return this;
  }

  /** Stops following the room and closes every connection. */
  close() {
    for (const off of this.unsubscribe) off();
    this.unsubscribe = [];
    if (this.gossipTimer) this.clearTimeout(this.gossipTimer);
    this.gossipTimer = null;
    this.#closeAll('closed');
    this.#wake();
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

  /**
   * Counters of this mesh: signals it sent through the server and through peers (its own
   * control channels, direct or relayed), signals it relayed for others, brokered signals it
   * refused, fallbacks to the server; and per connection how it was signalled.
   */
  stats() {
    const connections = {};
    for (const p of this.peers.values()) connections[p.id] = p.signalledBy;
    return { ...this.counters, connections };
  }

  /**
   * Public rooms: the server's answer to `client.listRooms(options)` merged with what
   * neighbours advertised and the room of this mesh when it is public. The server's entry
   * wins; each item says where it is from (`server`, `gossip`, `self`) and how old it is (ms).
   * Gossip is a hint: joining always goes through an edge.
   */
  async discoverRooms(options = {}) {
    let server = null;
    try {
      server = await this.client.listRooms(options);
    } catch {
      server = null; // unreachable edge, or one that does not list rooms: gossip only
    }
    const now = this.now();
    const items = new Map();
    for (const it of server?.items ?? []) {
      if (typeof it?.room !== 'string') continue;
      items.set(it.room, { ...it, source: 'server', age: 0 });
      this.#remember({ ...it, seenAt: now, source: 'server' });
    }
    const prefix = typeof options.prefix === 'string' ? options.prefix : '';
    for (const e of this.#freshRooms(now)) {
      if (!e.room.startsWith(prefix) || items.has(e.room)) continue;
      items.set(e.room, {
        room: e.room,
        members: e.members,
        ...(e.regions ? { regions: e.regions } : {}),
        ...(e.meta ? { meta: e.meta } : {}),
        source: e.source,
        age: Math.max(0, now - e.seenAt),
      });
    }
    const sorted = [...items.values()].sort((a, b) => (a.room < b.room ? -1 : a.room > b.room ? 1 : 0));
    return { items: sorted, next: server?.next ?? null, server: server != null };
  }

  closePeer(peerId, reason = 'closed') {
    const p = this.peers.get(peerId);
    if (!p) return;
    this.peers.delete(peerId);
    p.closed = true;
    if (p.startTimer) this.clearTimeout(p.startTimer);
    if (p.watchdog) this.clearTimeout(p.watchdog);
    if (p.limboTimer) this.clearTimeout(p.limboTimer);
    try { p.channel?.close(); } catch { /* ignore */ }
    try { p.ctrl?.close(); } catch { /* ignore */ }
    try { p.pc.close(); } catch { /* ignore */ }
    this.emit('close', { peer: p, reason });
    this.#announceSoon();
    this.#wake();
  }

  #syncSelf() {
    const id = this.client.peerId;
    if (id && this.selfId && id !== this.selfId) {
      // We reconnected as a new peer: every remote side knows us by the old id. With
      // brokering, a connection still up is kept: we tell the peer our new id over its own
      // channel (only we can), and it rebinds the connection once its roster shows that id
      // with our key.
      for (const p of [...this.peers.values()]) {
        if (p.keyed && this.#usable(p)) {
          p.ctrl.send(JSON.stringify({ t: 'rebind', id }));
          p.polite = this.polite(id, p.id);
          this.#limbo(p);
        } else {
          this.closePeer(p.id, 'reconnected');
        }
      }
    }
    this.selfId = id;
  }

  #closeAll(reason) {
    for (const id of [...this.peers.keys()]) this.closePeer(id, reason);
  }

  /** Peers listed by `joined` were there before us: with brokering, we call them. */
  #reconcile(list) {
    this.#syncSelf();
    const ids = new Set(list.map((p) => p.id));
    for (const info of list) this.#tryRebind(info);
    for (const p of [...this.peers.values()]) {
      if (ids.has(p.id)) {
        if (p.limboTimer && !p.rebindTo) this.clearTimeout(p.limboTimer);
        if (!p.rebindTo) p.limboTimer = null;
        continue;
      }
      // A kept connection may belong to a peer rejoining under a new id: it gets
      // `rebindTimeout` to say so; any other peer not in the roster is closed.
      if (p.keyed && this.#usable(p)) this.#limbo(p);
      else this.closePeer(p.id, 'gone');
    }
    for (const info of list) {
      if (this.peers.has(info.id) || this.movedOn.has(info.id)) continue;
      if (!this.#awaitsRebind(info, 'joined')) this.#add(info, 'joined');
    }
    this.#releaseHeld();
  }

  /** A peer announced by `peer-joined` is new: with brokering, it calls us. */
  #replace(info) {
    if (this.#tryRebind(info) || this.#awaitsRebind(info, 'peer-joined')) return;
    if (this.peers.has(info.id)) this.closePeer(info.id, 'rejoined');
    this.#add(info, 'peer-joined');
  }

  /** `peer-left`: a connection whose peer told us its new id stays until it is rebound. */
  #departed(peerId, reason) {
    const p = this.peers.get(peerId);
    if (p && p.rebindTo && !p.closed) {
      this.#limbo(p);
      return;
    }
    this.closePeer(peerId, reason);
  }

  /**
   * Rebinds a kept connection to `info` if its peer said (over its own channel) that it is
   * now `info.id` and the roster gives that id the same key.
   */
  #tryRebind(info) {
    const key = info.meta?.key;
    if (typeof key !== 'string') return false;
    for (const p of this.peers.values()) {
      if (p.closed || p.rebindTo !== info.id || p.key !== key || p.id === info.id) continue;
      const previous = p.id;
      this.peers.delete(previous);
      this.movedOn.add(previous);
      if (this.movedOn.size > 256) this.movedOn.delete(this.movedOn.values().next().value);
      if (this.peers.has(info.id)) this.closePeer(info.id, 'rebound');
      p.id = info.id;
      p.meta = info.meta ?? {};
      p.region = info.region ?? p.region;
      p.rebindTo = null;
      p.deferred = null;
      if (p.limboTimer) this.clearTimeout(p.limboTimer);
      p.limboTimer = null;
      p.polite = this.polite(this.selfId, p.id);
      this.peers.set(p.id, p);
      this.emit('rebound', { peer: p, previous });
      this.#announceSoon();
      return true;
    }
    return false;
  }

  /**
   * A roster entry carrying the key of a kept connection whose peer has not told us its new
   * id yet: not called now, but when the connection is rebound or given up.
   */
  #awaitsRebind(info, how) {
    const key = info.meta?.key;
    if (typeof key !== 'string') return false;
    for (const p of this.peers.values()) {
      if (p.closed || !p.limboTimer || p.key !== key || p.id === info.id) continue;
      p.deferred = { info, how };
      return true;
    }
    return false;
  }

  /** Gives a kept connection `rebindTimeout` to be rebound or to be back in the roster. */
  #limbo(p) {
    if (p.limboTimer) return;
    p.limboTimer = this.setTimeout(() => {
      p.limboTimer = null;
      if (p.closed) return;
      const roster = this.client.rooms.get(this.room)?.peers;
      if (roster?.has(p.id) && !p.rebindTo) return;
      const deferred = p.deferred;
      this.closePeer(p.id, 'gone');
      if (deferred && roster?.has(deferred.info.id) && !this.peers.has(deferred.info.id)) {
        this.#add(deferred.info, deferred.how);
      }
    }, this.options.rebindTimeout);
  }

  #add(info, how) {
    if (!this.selfId || info.id === this.selfId) return null;
    const rtcConfig = { iceServers: this.client.iceServers ?? [], ...this.rtcConfig };
    const pc = new this.RTCPeerConnection(rtcConfig);
    const key = typeof info.meta?.key === 'string' ? info.meta.key : null;
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
      // Brokering: both sides have member keys (the remote's from the roster).
      keyed: this.brokering && key != null && this.client.keys != null,
      key,
      /** How the connection was introduced: 'server' or 'peer' (null until its first offer). */
      signalledBy: null,
      ctrl: null, // the control channel
      neighbors: null, // the peers it told us it holds channels with (null: not told yet)
      lastVia: null, // how its last signal came: 'server', 'direct' or the relaying peer's id
      log: [], // brokered signals sent to it, to send again through the server if refused
      sendChain: Promise.resolve(), // our signals to it, in order, whatever path each takes
      introDeadline: null, // until when its introduction may wait for a relay
      waited: false, // its introduction waited for a relay
      fellBack: false, // …in vain (counted once)
      seed: false, // introduced through the server while others wait to be relayed through it
      serverOnly: false, // a relayed signal to it was refused: the server from now on
      refusedRelay: false, // we refused a relayed signal from it: drop relays until direct
      everConnected: false,
      watchdog: null, // timer: a relayed introduction that does not come up goes to the server
      rebindTo: null, // the new id this peer told us over its own channel, after its rejoin
      limboTimer: null, // a kept connection waiting to be rebound (or back in the roster)
      deferred: null, // a roster entry with this peer's key, added if the rebind does not come
      heard: false,
      started: false,
      startTimer: null,
    };
    this.peers.set(p.id, p);
    pc.onicecandidate = ({ candidate }) => {
      if (candidate) this.#send(p, 'candidate', candidate.toJSON ? candidate.toJSON() : candidate);
    };
    pc.onnegotiationneeded = async () => {
      try {
        p.makingOffer = true;
        await pc.setLocalDescription();
        if (!p.closed) this.#send(p, 'offer', { type: pc.localDescription.type, sdp: pc.localDescription.sdp });
      } catch (error) {
        this.emit('error', { peer: p, error });
      } finally {
        p.makingOffer = false;
      }
    };
    pc.onconnectionstatechange = () => {
      if (p.closed) return;
      this.emit('connectionstatechange', { peer: p, state: pc.connectionState });
      if (pc.connectionState === 'connected') p.everConnected = true;
      if (p.keyed) {
        this.#announceSoon();
        this.#wake();
      }
      if (pc.connectionState === 'failed' && pc.restartIce) pc.restartIce();
    };
    pc.ondatachannel = ({ channel }) => this.#adopt(p, channel);
    this.emit('peer', { peer: p });
    // Classic: the impolite side calls. Brokering: the newcomer calls those it found in the
    // room, so that it can choose the path of each introduction; the called side calls
    // itself if no call comes.
    const calls = p.keyed ? how === 'joined' : !p.polite;
    if (calls) {
      this.#call(p);
    } else if (p.keyed && how !== 'signal') {
      p.startTimer = this.setTimeout(() => {
        p.startTimer = null;
        if (!p.closed && !p.heard) this.#call(p);
      }, this.options.answerTimeout);
    }
    return p;
  }

  /** Opens our side's channels, which starts the negotiation. */
  #call(p) {
    if (p.started) return;
    p.started = true;
    if (p.keyed) this.#openControl(p);
    this.#adopt(p, p.pc.createDataChannel(this.channelLabel, this.channelOptions));
  }

  #adopt(p, channel) {
    channel.binaryType = 'arraybuffer';
    if (channel.label === this.channelLabel) p.channel = channel;
    const announce = () => { if (!p.closed) this.emit('channel', { peer: p, channel }); };
    if (channel.readyState === 'open') announce();
    else channel.addEventListener('open', announce, { once: true });
  }

  // --- signals: which path each takes -----------------------------------------------------

  /** Queues a signal for `p`; signals for one peer leave in order, whatever their paths. */
  #send(p, kind, data) {
    if (p.closed) return;
    if (!p.keyed) {
      this.#viaServer(p, kind, data); // at once, as without brokering
      return;
    }
    p.sendChain = p.sendChain.then(() => this.#route(p, kind, data)).catch((error) => {
      if (!p.closed) this.emit('error', { peer: p, error });
    });
  }

  /**
   * Direct over our own control channel when it is up; else through a peer connected to
   * both; else, when such a peer may soon be there, wait for it (bounded); else the server.
   */
  async #route(p, kind, data) {
    if (p.closed) return;
    if (!p.keyed) return this.#viaServer(p, kind, data);
    if (this.#direct(p, kind, data)) return;
    const broker = await this.#findBroker(p);
    if (p.closed) return;
    if (this.#direct(p, kind, data)) return;
    if (broker && await this.#viaBroker(p, broker, kind, data)) return;
    if (p.waited && !p.fellBack) {
      // Waited for a relay in vain: count it once per peer.
      p.fellBack = true;
      this.counters.fallbacks += 1;
      this.emit('fallback', { peer: p, reason: 'timeout' });
    }
    this.#viaServer(p, kind, data);
  }

  #usable(q) {
    return q != null && !q.closed && q.ctrl?.readyState === 'open'
      && !['failed', 'disconnected', 'closed'].includes(q.pc.connectionState);
  }

  #direct(p, kind, data) {
    if (!this.#usable(p)) return false;
    p.ctrl.send(JSON.stringify({ t: 'signal', kind, data }));
    this.counters.signalsViaPeers += 1;
    this.#mark(p, kind, 'peer');
    return true;
  }

  #viaServer(p, kind, data) {
    // Not connected: the client reports it (`error` disconnected); nothing went out.
    if (this.client.state === 'open') this.counters.signalsViaServer += 1;
    this.client.signal(this.room, p.id, kind, data);
    this.#mark(p, kind, 'server');
  }

  async #viaBroker(p, q, kind, data) {
    const env = await this.#seal(p.id, kind, data);
    if (p.closed || !this.#usable(q)) return false;
    p.log.push({ nonce: env.nonce, kind, data });
    if (p.log.length > this.options.relayLog) p.log.shift();
    q.ctrl.send(JSON.stringify({ t: 'relay', env }));
    this.counters.signalsViaPeers += 1;
    this.#mark(p, kind, 'peer');
    if (kind === 'offer' && !p.everConnected && !p.watchdog) {
      // A relay may lose what it was given without a word: if the connection is not up in
      // time, its signals go again through the server (a repeated offer or candidate is
      // harmless to the receiver).
      p.watchdog = this.setTimeout(() => {
        p.watchdog = null;
        if (!p.closed && !p.everConnected && !p.serverOnly && p.log.length) {
          this.#resendThroughServer(p, p.log[0].nonce, 'timeout');
        }
      }, this.options.connectTimeout);
    }
    return true;
  }

  #mark(p, kind, path) {
    if (kind !== 'offer' || p.signalledBy) return;
    p.signalledBy = path;
    this.emit('signalled', { peer: p, path });
  }

  /** A peer that can relay to `p` now: the one its last relayed signal came through, else any neighbour that told us it holds a channel with `p`. */
  #brokerNow(p) {
    const ok = (q) => q && q !== p && q.keyed && !this.untrusted.has(q.id) && this.#usable(q);
    const last = this.peers.get(p.lastVia);
    if (ok(last)) return last;
    for (const q of this.peers.values()) if (ok(q) && q.neighbors?.has(p.id)) return q;
    return null;
  }

  /**
   * Worth waiting for a relay: not past the deadline, `p` has not spoken to us through the
   * server (we answer the way we were called), and some neighbour may yet be able to relay:
   * one connected that has not told us its neighbours, or one being introduced through the
   * server right now (the newcomer's first connection).
   */
  #mayWait(p) {
    if (p.serverOnly || p.lastVia === 'server' || this.now() >= p.introDeadline) return false;
    for (const q of this.peers.values()) {
      if (q === p || !q.keyed || q.closed || this.untrusted.has(q.id)) continue;
      if (this.#usable(q) && q.neighbors == null) return true;
      const state = q.pc.connectionState;
      if (q.seed && !this.#usable(q) && state !== 'failed' && state !== 'closed') return true;
    }
    return false;
  }

  async #findBroker(p) {
    // An introduction made through the server stays there until the connection is up:
    // a candidate relayed by a peer could overtake the offer it belongs to.
    // Likewise, while not connected, we answer through the server what came through it.
    if (p.serverOnly || (!p.everConnected && (p.signalledBy === 'server' || p.lastVia === 'server'))) {
      return null;
    }
    p.introDeadline ??= this.now() + this.options.introductionTimeout;
    // Bounded: each round waits for a change (or the deadline, which ends the loop).
    for (let round = 0; round < 1000; round += 1) {
      const q = this.#brokerNow(p);
      if (q || this.#usable(p) || p.closed) return q;
      if (!this.#mayWait(p)) {
        // Decided synchronously, so that the next introduction sees it and waits for this one.
        if (!p.signalledBy) p.seed = true;
        return null;
      }
      p.waited = true;
      await this.#waitForChange(p.introDeadline);
    }
    return null;
  }

  #waitForChange(deadline) {
    return new Promise((resolve) => {
      const w = {
        done: () => {
          this.clearTimeout(w.timer);
          this.waiters.delete(w);
          resolve();
        },
      };
      w.timer = this.setTimeout(w.done, Math.max(0, deadline - this.now()));
      this.waiters.add(w);
    });
  }

  #wake() {
    for (const w of [...this.waiters]) w.done();
  }

  // --- receiving --------------------------------------------------------------------------

  /** A signal from `from`, by `via`: 'server', 'direct' (its control channel) or a relay's id. */
  #receive(from, kind, data, via) {
    let p = this.peers.get(from);
    if (!p) {
      // A peer we have not heard of yet (its signal overtook the roster event).
      const info = this.client.rooms.get(this.room)?.peers?.get(from) ?? { id: from };
      p = this.#add(info, 'signal');
      if (!p) return;
    }
    p.heard = true;
    if (p.startTimer) this.clearTimeout(p.startTimer);
    p.startTimer = null;
    if (via !== 'direct') p.lastVia = via;
    if (kind === 'offer' && !p.signalledBy) {
      p.signalledBy = via === 'server' ? 'server' : 'peer';
      this.emit('signalled', { peer: p, path: p.signalledBy });
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
        // Our side of the negotiated control channel, now that the answer has negotiated the
        // data section (created earlier it would ask for a negotiation of its own).
        if (p.keyed && !p.ctrl) this.#openControl(p);
        this.#send(p, 'answer', { type: pc.localDescription.type, sdp: pc.localDescription.sdp });
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

  // --- the control channel ----------------------------------------------------------------

  #openControl(p) {
    const ch = p.pc.createDataChannel(CONTROL_LABEL,
      { negotiated: true, id: CONTROL_CHANNEL_ID, ordered: true });
    p.ctrl = ch;
    ch.addEventListener('open', () => {
      if (p.closed) return;
      p.refusedRelay = false;
      this.#announceSoon();
      this.#sendRooms(p);
      this.#wake();
    });
    ch.addEventListener('close', () => {
      if (p.closed) return;
      this.#announceSoon();
      this.#wake();
    });
    ch.addEventListener('message', (ev) => { if (!p.closed) this.#onControl(p, ev.data); });
  }

  #onControl(p, text) {
    if (typeof text !== 'string' || text.length > this.options.maxControlBytes) return;
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    switch (m?.t) {
      case 'neighbors':
        p.neighbors = new Set((Array.isArray(m.ids) ? m.ids : [])
          .filter((id) => typeof id === 'string').slice(0, 4096));
        this.#wake();
        return;
      case 'signal':
        if (SIGNAL_KINDS.has(m.kind)) this.#receive(p.id, m.kind, m.data, 'direct');
        return;
      case 'relay':
        this.#onRelay(p, m.env);
        return;
      case 'undeliverable':
        if (typeof m.to === 'string' && typeof m.nonce === 'string') {
          p.neighbors?.delete(m.to);
          this.#resendThroughServer(this.peers.get(m.to), m.nonce, 'undeliverable');
        }
        return;
      case 'rooms':
        this.#onRooms(p, m.items);
        return;
      case 'rebind':
        if (typeof m.id === 'string' && m.id.length <= 128 && m.id !== p.id) {
          p.rebindTo = m.id;
          const info = this.client.rooms.get(this.room)?.peers?.get(m.id);
          if (!info || !this.#tryRebind(info)) this.#limbo(p);
        }
        return;
      default:
        // Unknown messages are ignored, so that newer peers can talk to older ones.
    }
  }

  /** Tells every neighbour which peers we hold a channel with (they may ask us to relay). */
  #announceSoon() {
    if (!this.brokering || this.announceQueued) return;
    this.announceQueued = true;
    this.setTimeout(() => {
      this.announceQueued = false;
      const usable = [...this.peers.values()].filter((q) => q.keyed && this.#usable(q));
      const text = JSON.stringify({ t: 'neighbors', ids: usable.map((q) => q.id) });
      for (const q of usable) q.ctrl.send(text);
    }, 0);
  }

  /**
   * A relayed envelope from neighbour `q`: ours to check, or one to pass on. We pass on only
   * what `q` itself originated, and only to a peer we hold a channel with; the receiver, not
   * us, decides whether to believe it.
   */
  #onRelay(q, env) {
    if (!isEnvelope(env)) return;
    if (!this.#relayAllowed(q)) {
      this.counters.relayDropped += 1;
      return;
    }
    if (env.to === this.selfId) {
      this.verifying = this.verifying.then(() => this.#acceptRelayed(env, q.id, false))
        .catch((error) => this.emit('error', { peer: q, error }));
      return;
    }
    const target = this.peers.get(env.to);
    if (env.from !== q.id || !target?.keyed || !this.#usable(target)) {
      q.ctrl?.send(JSON.stringify({ t: 'undeliverable', to: env.to, nonce: env.nonce }));
      return;
    }
    // Test hook: the envelope to pass on instead, or null to lose it.
    const out = this.testHooks?.tamperRelayed ? this.testHooks.tamperRelayed({ ...env }) : env;
    if (out == null) return;
    target.ctrl.send(JSON.stringify({ t: 'relay', env: out }));
    this.counters.relayed += 1;
  }

  /**
   * Each neighbour may hand us `relayRate` relayed envelopes a second (bursts of twice that),
   * whether for us or to pass on: a signature check costs, and a peer flooding us must not
   * make us flood others. An introduction takes a handful.
   */
  #relayAllowed(q) {
    const rate = this.options.relayRate;
    const now = this.now();
    const b = q.relayBucket ?? (q.relayBucket = { tokens: 2 * rate, at: now });
    b.tokens = Math.min(2 * rate, b.tokens + ((now - b.at) / 1000) * rate);
    b.at = now;
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Checks a relayed envelope addressed to us and, if it holds, handles its signal. */
  async #acceptRelayed(env, via, held) {
    if (env.room !== this.room) return this.#refuse(env, via, 'wrong-room');
    const roster = this.client.rooms.get(this.room)?.peers;
    const member = roster?.get(env.from);
    if (!member) {
      // Its `peer-joined` may still be on the way: hold it a little, then refuse.
      if (!held && this.held.length < this.options.maxHeld) {
        const h = { env, via, timer: null };
        h.timer = this.setTimeout(() => this.#unhold(h), this.options.rosterWait);
        this.held.push(h);
        return undefined;
      }
      return this.#refuse(env, via, 'not-a-member');
    }
    if (typeof member.meta?.key !== 'string') return this.#refuse(env, via, 'no-key');
    if (Math.abs(this.now() - env.ts) > this.options.maxSkew) return this.#refuse(env, via, 'stale');
    let seen = this.seen.get(env.from);
    if (seen?.has(env.nonce)) return this.#refuse(env, via, 'replay');
    let valid = false;
    try {
      const key = await this.#verifyKey(member.meta.key);
      valid = await crypto.subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, key,
        fromBase64url(env.sig), new TextEncoder().encode(canonicalEnvelope(env)));
    } catch {
      valid = false;
    }
    if (!valid) return this.#refuse(env, via, 'bad-signature');
    if (!seen) this.seen.set(env.from, (seen = new Map()));
    const now = this.now();
    for (const [nonce, ts] of seen) if (Math.abs(now - ts) > this.options.maxSkew) seen.delete(nonce);
    seen.set(env.nonce, env.ts);
    const p = this.peers.get(env.from);
    // After a refusal the sender sends again through the server from the refused signal on:
    // what else is relayed meanwhile would come before it.
    if (p?.refusedRelay) return undefined;
    let data;
    try {
      data = JSON.parse(env.body);
    } catch {
      return this.#refuse(env, via, 'bad-body');
    }
    this.#receive(env.from, env.kind, data, via);
    return undefined;
  }

  #unhold(h) {
    const i = this.held.indexOf(h);
    if (i < 0) return;
    this.held.splice(i, 1);
    this.clearTimeout(h.timer);
    this.verifying = this.verifying.then(() => this.#acceptRelayed(h.env, h.via, true))
      .catch((error) => this.emit('error', { peer: null, error }));
  }

  /** Held envelopes whose sender is now in the roster are checked, in arrival order. */
  #releaseHeld() {
    const roster = this.client.rooms.get(this.room)?.peers;
    for (const h of [...this.held]) if (roster?.has(h.env.from)) this.#unhold(h);
  }

  #verifyKey(text) {
    let key = this.verifyKeys.get(text);
    if (!key) {
      key = crypto.subtle.importKey('raw', fromBase64url(text),
        { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
      this.verifyKeys.set(text, key);
      if (this.verifyKeys.size > 1024) this.verifyKeys.delete(this.verifyKeys.keys().next().value);
    }
    return key;
  }

  async #seal(to, kind, data) {
    const env = {
      v: 1,
      from: this.selfId,
      to,
      room: this.room,
      kind,
      body: JSON.stringify(data ?? null),
      ts: this.now(),
      nonce: base64url(crypto.getRandomValues(new Uint8Array(12))),
    };
    const keys = this.client.keys ?? await this.client.enableKeys();
    const sig = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, keys.privateKey,
      new TextEncoder().encode(canonicalEnvelope(env)));
    env.sig = base64url(new Uint8Array(sig));
    return env;
  }

  /**
   * Refuses a relayed envelope. Unless it is a replay, the claimed sender is told through the
   * server (the authority), and sends that signal and those after it through the server; a
   * relay whose forward failed the signature is not trusted again.
   */
  #refuse(env, via, reason) {
    this.counters.brokeredRefused += 1;
    this.emit('refused', { from: env.from, via, reason });
    if (reason === 'replay') return;
    if (reason === 'bad-signature' || reason === 'bad-body') this.untrusted.add(via);
    const p = this.peers.get(env.from);
    if (!p) return;
    p.refusedRelay = true;
    if (this.client.state === 'open') {
      this.client.signal(this.room, p.id, 'custom', { [NOTICE]: 'refused', nonce: env.nonce });
      this.counters.signalsViaServer += 1;
    }
  }

  /** A notice through the server from the mesh of `from`. */
  #onNotice(from, data) {
    if (data[NOTICE] === 'refused' && typeof data.nonce === 'string') {
      this.#resendThroughServer(this.peers.get(from), data.nonce, 'refused');
    }
  }

  /**
   * A relayed signal to `p` was refused or could not be delivered: it and every one sent
   * after it go again through the server, and so does everything for `p` from now on until
   * our own channel with it is up. Notices naming no signal we relayed are ignored.
   */
  #resendThroughServer(p, nonce, reason) {
    if (!p || p.closed) return;
    const at = p.log.findIndex((e) => e.nonce === nonce);
    if (at < 0) return;
    const again = p.log.slice(at);
    p.log = [];
    p.serverOnly = true;
    this.counters.fallbacks += 1;
    this.emit('fallback', { peer: p, reason });
    if (again.some((e) => e.kind === 'offer') && p.signalledBy === 'peer') {
      p.signalledBy = null; // the introduction is the server's after all
    }
    p.sendChain = p.sendChain.then(() => {
      for (const e of again) if (!p.closed) this.#viaServer(p, e.kind, e.data);
    });
  }

  // --- gossip of public rooms -------------------------------------------------------------

  #scheduleGossip() {
    this.gossipTimer = this.setTimeout(() => {
      this.gossipTimer = null;
      for (const q of this.peers.values()) this.#sendRooms(q);
      if (this.unsubscribe.length) this.#scheduleGossip();
    }, this.options.gossipInterval);
  }

  /** The public rooms this client is in (joined with `public: true`), as it sees them now. */
  #ownRooms(now) {
    const out = [];
    for (const [room, entry] of this.client.rooms) {
      // While disconnected the roster is held for a resume: still the best count we have.
      const peers = entry?.peers ?? this.client.heldRosters?.get(room);
      if (!entry?.public || !peers) continue;
      const regions = new Set([this.client.region, ...[...peers.values()].map((p) => p.region)]);
      out.push({
        room,
        members: peers.size + 1,
        regions: [...regions].filter((r) => typeof r === 'string').sort(),
        seenAt: now,
        source: 'self',
      });
    }
    return out;
  }

  /** Known rooms younger than the TTL, freshest first, at most `maxGossipRooms`. */
  #freshRooms(now) {
    const out = this.#ownRooms(now);
    const own = new Set(out.map((e) => e.room));
    for (const e of [...this.knownRooms.values()]) {
      if (now - e.seenAt > this.options.gossipTtl) this.knownRooms.delete(e.room);
      else if (!own.has(e.room)) out.push(e);
    }
    out.sort((a, b) => b.seenAt - a.seenAt);
    return out.slice(0, this.options.maxGossipRooms);
  }

  #remember(e) {
    const old = this.knownRooms.get(e.room);
    if (old && old.seenAt > e.seenAt) return;
    this.knownRooms.delete(e.room);
    this.knownRooms.set(e.room, e);
    // Bounded: the least recently heard go first.
    const cap = this.options.maxGossipRooms * 4;
    while (this.knownRooms.size > cap) this.knownRooms.delete(this.knownRooms.keys().next().value);
  }

  #sendRooms(q) {
    if (!q.keyed || !this.#usable(q)) return;
    const now = this.now();
    const items = this.#freshRooms(now).map((e) => ({
      room: e.room,
      members: e.members,
      ...(e.regions ? { regions: e.regions } : {}),
      ...(e.meta ? { meta: e.meta } : {}),
      age: Math.max(0, now - e.seenAt),
    }));
    q.ctrl.send(JSON.stringify({ t: 'rooms', items }));
  }

  /** A neighbour's advertisement: each entry is checked for shape and kept if fresher. */
  #onRooms(q, items) {
    if (!Array.isArray(items)) return;
    const now = this.now();
    for (const it of items.slice(0, this.options.maxGossipRooms)) {
      if (typeof it?.room !== 'string' || it.room.length === 0 || it.room.length > 128) continue;
      if (!Number.isInteger(it.members) || it.members < 0) continue;
      if (!Number.isFinite(it.age) || it.age < 0 || it.age > this.options.gossipTtl) continue;
      const e = { room: it.room, members: it.members, seenAt: now - it.age, source: 'gossip', from: q.id };
      if (Array.isArray(it.regions)) {
        e.regions = it.regions.filter((r) => typeof r === 'string' && r.length <= 64).slice(0, 16);
      }
      if (it.meta && typeof it.meta === 'object' && !Array.isArray(it.meta)
        && JSON.stringify(it.meta).length <= 4096) e.meta = it.meta;
      this.#remember(e);
    }
  }
}

// Test doubles for the SDK: a scripted WebSocket, a manual clock and a fake RTCPeerConnection.

/** Timers that only fire when the test advances the clock. */
export class FakeClock {
  constructor() {
    this.now = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.now + Math.max(0, ms), fn, ms });
      return id;
    };
    this.clearTimeout = (id) => { this.timers.delete(id); };
  }

  /** Delays of the timers currently pending, in creation order. */
  pending() {
    return [...this.timers.values()].map((t) => t.ms);
  }

  /** Advances time by `ms`, firing due timers in order (bounded). */
  advance(ms) {
    const end = this.now + ms;
    for (let i = 0; i < 10000; i++) {
      let next = null;
      for (const [id, t] of this.timers) {
        if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = end;
  }
}

/** A WebSocket whose server side the test plays. Instances are recorded in `FakeWebSocket.all`. */
export class FakeWebSocket {
  static all = [];

  static reset() { FakeWebSocket.all = []; }

  static get last() { return FakeWebSocket.all.at(-1); }

  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.sent = [];
    this.readyState = 0;
    this.closedWith = null;
    FakeWebSocket.all.push(this);
  }

  send(text) {
    if (this.readyState !== 1) throw new Error('socket not open');
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }

  // --- server side ---
  open() { this.readyState = 1; this.onopen?.({}); }

  receive(msg) { this.onmessage?.({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) }); }

  welcome(peerId, extra = {}) {
    if (this.readyState !== 1) this.open();
    this.receive({
      type: 'welcome', peer_id: peerId, resume_token: `tok-${peerId}`, region: 'eu',
      edge: 'edge-1', ice_servers: [{ urls: ['stun:127.0.0.1:3478'] }], protocol: 'heliograph.v1',
      ...extra,
    });
  }

  serverClose(code = 1006, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The last message sent by the client of a type. */
  lastSent(type) { return this.sent.filter((m) => m.type === type).at(-1); }
}

/** Lets pending promise callbacks run. */
export async function flush(rounds = 5) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

/** A fake RTCPeerConnection with enough state for perfect negotiation. */
export class FakePeerConnection {
  static all = [];

  constructor(config) {
    this.config = config;
    this.signalingState = 'stable';
    this.connectionState = 'new';
    this.localDescription = null;
    this.remoteDescription = null;
    this.candidates = [];
    this.channels = [];
    this.closed = false;
    this.n = 0;
    FakePeerConnection.all.push(this);
  }

  createDataChannel(label, options) {
    const ch = new FakeChannel(label, options);
    this.channels.push(ch);
    queueMicrotask(() => this.onnegotiationneeded?.());
    return ch;
  }

  async setLocalDescription() {
    const type = this.signalingState === 'have-remote-offer' ? 'answer' : 'offer';
    this.localDescription = { type, sdp: `${type}-sdp-${++this.n}` };
    this.signalingState = type === 'offer' ? 'have-local-offer' : 'stable';
  }

  async setRemoteDescription(desc) {
    if (desc.type === 'offer' && this.signalingState === 'have-local-offer') {
      this.signalingState = 'stable'; // implicit rollback
      this.rolledBack = true;
    }
    this.remoteDescription = desc;
    this.signalingState = desc.type === 'offer' ? 'have-remote-offer' : 'stable';
  }

  async addIceCandidate(c) {
    if (!this.remoteDescription) throw new Error('no remote description');
    this.candidates.push(c);
  }

  restartIce() { this.restarted = true; }

  close() { this.closed = true; this.signalingState = 'closed'; }
}

class FakeChannel extends EventTarget {
  constructor(label, options) {
    super();
    this.label = label;
    this.options = options;
    this.readyState = 'connecting';
    this.sent = [];
  }

  send(d) { this.sent.push(d); }

  close() { this.readyState = 'closed'; }

  fireOpen() { this.readyState = 'open'; this.dispatchEvent(new Event('open')); }
}

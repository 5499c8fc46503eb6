// Type declarations for heliograph.js, the Heliograph browser SDK (protocol heliograph.v1).

export declare const PROTOCOL: 'heliograph.v1';

export type Unsubscribe = () => void;

/** Small event emitter; listeners receive the event payload. */
export declare class Emitter<Events extends Record<string, unknown>> {
  on<K extends keyof Events>(type: K, fn: (payload: Events[K]) => void): Unsubscribe;
  off<K extends keyof Events>(type: K, fn: (payload: Events[K]) => void): void;
  once<K extends keyof Events>(type: K, fn: (payload: Events[K]) => void): Unsubscribe;
  emit<K extends keyof Events>(type: K, payload: Events[K]): void;
}

/** Every code an edge sends in an `error` frame (docs/PROTOCOL.md, "Error codes"). */
export type ServerErrorCode =
  | 'bad-json' | 'unknown-type' | 'bad-field' | 'invalid-room' | 'invalid-meta'
  | 'binary-unsupported' | 'not-in-room' | 'unknown-peer' | 'too-many-rooms' | 'room-full'
  | 'resume-failed' | 'unavailable' | 'internal'
  | 'token-required' | 'token-expired' | 'token-invalid-signature' | 'token-algorithm-refused'
  | 'token-malformed' | 'token-wrong-room' | 'forbidden' | 'rate-limited'
  | 'removed' | 'room-closed'
  | 'not-a-contact' | 'too-many-contacts'
  // Sent only on the Socket.IO endpoint (docs/MIGRATING.md), listed so that the set is complete.
  | 'too-large';

/** Codes the SDK raises itself. */
export type ClientErrorCode =
  | 'timeout' | 'closed' | 'disconnected' | 'cancelled' | 'bad-frame' | 'send-failed'
  | 'connect-failed' | 'token-fetch-failed';

export type ErrorCode = ServerErrorCode | ClientErrorCode;

export type SignalKind = 'offer' | 'answer' | 'candidate' | 'custom';
export type State = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';
export type Meta = Record<string, unknown>;

export interface PeerInfo {
  id: string;
  meta: Meta;
  region: string;
}

export interface IceServer {
  urls: string[];
  username?: string;
  credential?: string;
}

export interface Welcome {
  type: 'welcome';
  peer_id: string;
  resume_token: string;
  region: string;
  edge: string;
  ice_servers: IceServer[];
  protocol: string;
  /** Position of the frame in its session (absent from older edges); see `Heliograph.lastSeq`. */
  seq?: number;
}

/** The answer to a successful `resume`, after the frames the old session had missed. */
export interface Resumed {
  type: 'resumed';
  /** The resumed session's peer id (the one from before the reconnect). */
  peer_id: string;
  /** How many missed frames of the old session were replayed before this one. */
  replayed: number;
  /** Replaces the previous token; the next resume uses it. */
  resume_token: string;
  ref?: string;
  seq?: number;
}

/** The edge is draining: it closes the socket (code 1001) in about `after_ms`. */
export interface ReconnectNotice {
  type: 'reconnect';
  after_ms: number;
  seq?: number;
}

/** A signal this client sent to `to` will never be delivered. */
export interface Expired {
  type: 'expired';
  to: string;
  room: string;
  /** The `ref` of the signal, as returned by `signal()`. */
  ref?: string;
  seq?: number;
}

/**
 * A message from the application's server (the coordinator's server API), delivered to one
 * peer or every member of `room`; arrives through the `message` event like every frame.
 */
export interface ServerMessageFrame {
  type: 'message';
  room: string;
  /** Always `"server"`: no peer id is ever `server` (peer ids are 32 hex digits). */
  from: 'server';
  data: unknown;
  seq?: number;
}

/** A client message as sent (with its `ref`). */
export interface Request {
  type: 'join' | 'leave' | 'signal' | 'ping' | 'resume' | 'list-rooms' | 'contacts' | 'invite';
  ref?: string;
  room?: string;
  meta?: Meta;
  to?: string;
  kind?: SignalKind;
  data?: unknown;
  token?: string;
  last_seq?: number;
  /** A join's member key (base64url of the P-256 point), sent once `enableKeys()` made it. */
  key?: string;
  public?: boolean;
  publish?: string[];
  watch?: string[];
  room_meta?: Meta;
  prefix?: string;
  cursor?: string;
  limit?: number;
}

/** A mutual contact's presence (docs/PROTOCOL.md#contacts). */
export interface ContactEvent {
  /** The hash, published by `peer`, that this client watches. */
  hash: string;
  online: boolean;
  peer: string;
  /** The contact's region while online; null when offline. */
  region: string | null;
}

export interface OnlineContact {
  hash: string;
  peer: string;
  region: string | null;
}

export interface ContactSets {
  /** Hashes of this user's own handles (at most the edge's --max-contact-publish, default 16). */
  publish?: string[];
  /** Hashes of the handles this user looks for (at most --max-contact-watch, default 1000). */
  watch?: string[];
}

/**
 * base64url(HMAC-SHA256(appKey, handle trimmed and lowercased)), 43 characters (WebCrypto).
 * The app key is shared by the app's users: it does not stop whoever knows it from reversing a
 * guessable handle (a phone number) by trying every value; presence therefore needs mutual
 * consent.
 */
export declare function contactHash(handle: string, appKey: string): Promise<string>;
/** The form of a handle that `contactHash` hashes: trimmed and lowercased. */
export declare function normalizeHandle(handle: string): string;

export declare class HeliographError extends Error {
  readonly code: ErrorCode;
  /** The request that failed, when known. */
  readonly request?: Request;
  constructor(code: string, message: string, request?: Request);
}

export interface HeliographEvents {
  [key: string]: unknown;
  /**
   * Every new socket's welcome. `resuming`: a `resume` is in flight, so `peerId` is the fresh
   * session's only until `resumed` (restores the old id) or `resume-failed` (keeps this one).
   */
  welcome: Welcome & { reconnect: boolean; resuming: boolean };
  state: { state: State; previous: State };
  joined: { room: string; peers: PeerInfo[]; rejoin: boolean };
  left: { room: string };
  rejoined: { room: string };
  'rejoin-failed': { room: string; code: ErrorCode; message: string };
  /** The old session continues: same peer id, rooms kept (not re-joined), missed frames delivered. */
  resumed: { peerId: string; replayed: number };
  /** The edge is draining: the client reconnects (and resumes) without backoff when it closes. */
  reconnect: { after_ms: number };
  'peer-joined': { room: string; peer: PeerInfo };
  'peer-left': { room: string; peerId: string; reason: string };
  signal: { room: string; from: string; kind: SignalKind; data: unknown };
  /**
   * A signal this client sent will never be delivered (its target did not come back within the
   * edge's grace period, or its pending buffer was full). `request`: the signal, if remembered.
   */
  expired: { to: string; room: string | null; ref: string | null; request: Request | null };
  error: { code: ErrorCode; message: string; ref?: string | number; request?: Request | null };
  reconnecting: { attempt: number; delay: number };
  disconnected: { code: number; reason: string };
  /** A mutual contact came online, or went offline (or stopped being mutual). */
  contact: ContactEvent;
  /** A mutual contact invites this client into `room`. */
  invite: { from: string; room: string; data: unknown };
  /** Every frame from the edge, parsed. */
  message: { type: string; [key: string]: unknown };
}

export interface HeliographOptions {
  /** Reconnect after the socket closes (default true). */
  reconnect?: boolean;
  /** First reconnect delay in ms before jitter (default 500). */
  initialDelay?: number;
  /** Longest reconnect delay in ms (default 15000). */
  maxDelay?: number;
  /** Backoff growth per failed attempt (default 2). */
  factor?: number;
  /** Fraction of the delay that is random: delay ∈ [d·(1−jitter), d] (default 0.5). */
  jitter?: number;
  /** Time a request may wait for its reply, in ms (default 15000). */
  requestTimeout?: number;
  /** Interval of client pings in ms; 0 turns them off (default 20000). */
  pingInterval?: number;
  /** A ping unanswered for this long drops the connection (default 10000). */
  pingTimeout?: number;
  /**
   * After a reconnect, resume the previous session (same peer id, rooms kept, missed frames
   * replayed) before falling back to rejoining the rooms (default true).
   */
  resume?: boolean;
  /**
   * Supplies a join token for `room` from the app's backend. Called for every join and every
   * rejoin (after a reconnect whose resume failed), and once more when the edge answers
   * `token-expired`; a failure rejects the join with `token-fetch-failed`.
   */
  getToken?: (room: string) => string | Promise<string>;
  /** Injectables, for tests and non-browser hosts. */
  WebSocket?: { new (url: string, protocol: string): WebSocket };
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: unknown) => void;
  random?: () => number;
  now?: () => number;
}

export interface JoinOptions {
  /** What the other peers see; a function is called at every (re)join (e.g. to carry `edge`). */
  meta?: Meta | ((client: Heliograph) => Meta);
  /** A join token for this room (ignored when the client has `getToken`). */
  token?: string;
  /**
   * Lists a room this join creates to discovery (private by default), and has a brokering
   * PeerMesh advertise it to neighbours. A join token's `public` claim, when it has one,
   * decides instead.
   */
  public?: boolean;
  /** A JSON object shown in listings, if this join creates the room. */
  roomMeta?: Meta;
}

/** This client's member key pair: the private key cannot be exported. */
export interface MemberKeys {
  publicKey: CryptoKey;
  privateKey: CryptoKey;
  /** The public key as sent in `join`: base64url of the 65-byte uncompressed point. */
  raw: string;
}

/** A public room as listed by the server or advertised by peers. */
export interface RoomListing {
  room: string;
  /** Members now, detached members within their grace period included. */
  members: number;
  /** The distinct regions of the members, sorted (always present in the server's listings). */
  regions?: string[];
  /** The `roomMeta` of the join that created the room. */
  meta?: Meta;
}

/** What `listRooms` asks for; every field optional. */
export interface ListRoomsOptions {
  /** Only rooms whose id starts with this (at most 128 bytes). */
  prefix?: string;
  /** The `next` of the previous page. */
  cursor?: string;
  /** Rooms per page, 1 to 100 (default 50). */
  limit?: number;
}

/** A page of public rooms from the server, sorted by room id. */
export interface RoomsPage {
  items: RoomListing[];
  /** The cursor of the next page; null on the last. */
  next: string | null;
  /** Some regions did not answer in time: their rooms are missing from this page. */
  partial: boolean;
  /** Those regions. */
  unreachable: string[];
}

export interface RoomState {
  meta: Meta | ((client: Heliograph) => Meta) | null;
  token: string | null;
  public: boolean;
  roomMeta: Meta | null;
  /** The room's other peers; null while (re)joining. */
  peers: Map<string, PeerInfo> | null;
}

export declare class Heliograph extends Emitter<HeliographEvents> {
  constructor(options?: HeliographOptions);
  readonly state: State;
  readonly url: string | null;
  readonly peerId: string | null;
  readonly region: string | null;
  readonly edge: string | null;
  readonly iceServers: IceServer[];
  /** Token of the current session, sent in `resume` after an unexpected disconnect. */
  readonly resumeToken: string | null;
  /** The highest `seq` processed in the current session; frames at or below it are dropped. */
  readonly lastSeq: number | null;
  /** Rooms this client is in or joining; kept by a resume, else rejoined after reconnects. */
  readonly rooms: Map<string, RoomState>;

  /** Connects; resolves with the first welcome. Keeps reconnecting until close(). */
  connect(url: string): Promise<Welcome>;
  /** Closes for good and rejects pending requests. */
  close(): void;
  /** Joins a room; resolves with the peers already in it. Rejoined after reconnects. */
  join(room: string, options?: JoinOptions): Promise<PeerInfo[]>;
  /** Leaves a room. */
  leave(room: string): Promise<void>;
  /** Relays data to a peer; returns the ref that `error`/`expired` events will carry. */
  signal(room: string, to: string, kind: SignalKind, data: unknown): string;
  /** Round trip to the edge in ms. */
  ping(): Promise<number>;
  /**
   * A page of the cluster's public rooms (discovery); rejects at once (`disconnected`) when
   * not connected.
   */
  listRooms(options?: ListRoomsOptions): Promise<RoomsPage>;
  /** This client's member key pair, once `enableKeys()` has made it. */
  readonly keys: MemberKeys | null;
  /** Makes the member key pair (once); every join carries its public key from then on. */
  enableKeys(): Promise<MemberKeys>;
  /** The known other peers of a room. */
  peers(room: string): PeerInfo[];
  /**
   * Replaces this session's contact hashes; resolves on `contacts-set`. Kept by a resumed
   * session, sent again to a fresh one.
   */
  setContacts(sets?: ContactSets): Promise<void>;
  /** Mutual contacts known to be online. */
  onlineContacts(): OnlineContact[];
  /** Invites a mutual contact into `room`; returns the ref a `not-a-contact` error carries. */
  invite(peerId: string, room: string, data?: unknown): string;
}

export declare function isPolite(selfId: string, otherId: string): boolean;

export interface MeshPeer {
  readonly id: string;
  readonly meta: Meta;
  readonly region: string | null;
  readonly pc: RTCPeerConnection;
  /** Whether this side yields on offer collisions. */
  readonly polite: boolean;
  /** The default data channel (label `channelLabel`), once created or received. */
  readonly channel: RTCDataChannel | null;
  readonly closed: boolean;
  /** How the connection's first offer travelled: through the server or through peers. */
  readonly signalledBy: SignalPath | null;
  /** Brokering: the control channel (negotiated, id `CONTROL_CHANNEL_ID`). */
  readonly ctrl: RTCDataChannel | null;
}

export type SignalPath = 'server' | 'peer';

/** Why a brokered signal was refused. */
export type RefusalReason =
  | 'wrong-room' | 'not-a-member' | 'no-key' | 'stale' | 'replay' | 'bad-signature' | 'bad-body';

export interface MeshStats {
  /** Signals this mesh sent through the edge (its own notices included). */
  signalsViaServer: number;
  /** Signals this mesh sent over control channels: to the peer itself, or relayed by another. */
  signalsViaPeers: number;
  /** Signals this mesh relayed for its neighbours. */
  relayed: number;
  /** Brokered signals addressed to this mesh and refused. */
  brokeredRefused: number;
  /** Introductions that went to the server after all (no relay in time, refused, undeliverable). */
  fallbacks: number;
  /** Relayed envelopes dropped because a neighbour sent more than `relayRate` a second. */
  relayDropped: number;
  /** Per connected peer, how its connection was signalled (null: not yet). */
  connections: Record<string, SignalPath | null>;
}

export interface DiscoveredRoom extends RoomListing {
  /** `server`: this answer; `gossip`: advertised by a neighbour; `self`: a public room we are in. */
  source: 'server' | 'gossip' | 'self';
  /** How old the information is, in ms (0 for the server's answer). */
  age: number;
}

/** A relayed signal: signed by `from` over `canonicalEnvelope`, checked with its roster key. */
export interface BrokeredEnvelope {
  v: 1;
  from: string;
  to: string;
  room: string;
  kind: SignalKind;
  /** The signal's data as JSON text (what is signed). */
  body: string;
  /** The originator's clock, ms since the epoch. */
  ts: number;
  nonce: string;
  /** base64url ECDSA P-256 / SHA-256 signature (IEEE P1363, as WebCrypto makes it). */
  sig: string;
}

export declare const CONTROL_CHANNEL_ID: 1000;
export declare function canonicalEnvelope(env: BrokeredEnvelope): string;

export interface PeerMeshEvents {
  [key: string]: unknown;
  peer: { peer: MeshPeer };
  /** A data channel to a peer opened (the default one or one the remote side created). */
  channel: { peer: MeshPeer; channel: RTCDataChannel };
  connectionstatechange: { peer: MeshPeer; state: RTCPeerConnectionState };
  close: { peer: MeshPeer; reason: string };
  custom: { peer: MeshPeer; data: unknown };
  error: { peer: MeshPeer | null; error: unknown };
  /** How a connection's first offer travelled (sent or received). */
  signalled: { peer: MeshPeer; path: SignalPath };
  /** A brokered signal addressed to us was refused; `via` is the relaying peer. */
  refused: { from: string; via: string; reason: RefusalReason };
  /** A connection kept across the peer's rejoin now answers to its new id. */
  rebound: { peer: MeshPeer; previous: string };
  /** Signals for a peer went to the server after all. */
  fallback: { peer: MeshPeer; reason: 'timeout' | 'refused' | 'undeliverable' };
}

export interface PeerMeshOptions {
  RTCPeerConnection?: typeof RTCPeerConnection;
  /** Merged over `{ iceServers: client.iceServers }`. */
  rtcConfig?: RTCConfiguration;
  /** Label of the default channel (default "data"). */
  channelLabel?: string;
  channelOptions?: RTCDataChannelInit;
  /** Which side is polite (default: the lexicographically smaller id). */
  polite?: (selfId: string, otherId: string) => boolean;
  /**
   * Peer-assisted signaling (default false): a control channel per connection, renegotiation
   * over it, introductions of newcomers through a peer connected to both, gossip of public
   * rooms. Every member of the room should use the same setting.
   */
  brokering?: boolean;
  /** ms a signal for an unconnected peer waits for a relay before going to the server (3000). */
  introductionTimeout?: number;
  /** ms a connection introduced through peers may take to come up before its signals go again through the server (8000). */
  connectTimeout?: number;
  /** ms a connection kept across a peer's rejoin waits to be rebound to its new id (15000). */
  rebindTimeout?: number;
  /** ms a peer waits to be called by a newcomer before calling itself (6000). */
  answerTimeout?: number;
  /** ms a relayed signal from a sender not yet in the roster is held (2000). */
  rosterWait?: number;
  /** Relayed envelopes a second accepted from each neighbour, bursts of twice as many (50). */
  relayRate?: number;
  /** Relayed signals held at once for the roster (64). */
  maxHeld?: number;
  /** ms of clock difference tolerated on relayed signals; replays are remembered as long (120000). */
  maxSkew?: number;
  /** Relayed signals remembered per peer, to send again through the server (64). */
  relayLog?: number;
  /** ms between room advertisements to each neighbour (5000). */
  gossipInterval?: number;
  /** ms after which a room heard of is neither advertised nor listed (60000). */
  gossipTtl?: number;
  /** Most rooms per advertisement, and kept per neighbour's advertisement (64). */
  maxGossipRooms?: number;
  /** Larger control messages are ignored (262144). */
  maxControlBytes?: number;
  /** Test hooks only, never for production: alter (or, returning null, lose) what this page relays for others. */
  testHooks?: { tamperRelayed?: (env: BrokeredEnvelope) => BrokeredEnvelope | null };
}

export declare class PeerMesh extends Emitter<PeerMeshEvents> {
  constructor(client: Heliograph, room: string, options?: PeerMeshOptions);
  readonly client: Heliograph;
  readonly room: string;
  readonly peers: Map<string, MeshPeer>;
  /** Follows the room's roster and signals; returns this. */
  start(): this;
  /** Stops following the room and closes every connection. */
  close(): void;
  /** The open default data channel to a peer, or null. */
  channel(peerId: string): RTCDataChannel | null;
  /** Sends on every open default channel; returns the number of peers reached. */
  broadcast(data: string | ArrayBuffer | ArrayBufferView | Blob): number;
  closePeer(peerId: string, reason?: string): void;
  /** Counters of signalling paths, and how each connection was signalled. */
  stats(): MeshStats;
  /**
   * `client.listRooms(options)` merged with rooms advertised by neighbours (the server's
   * entry wins). `server`: whether the server answered. Gossip is a hint: joining always
   * goes through an edge.
   */
  discoverRooms(options?: ListRoomsOptions): Promise<{ items: DiscoveredRoom[]; next: string | null; server: boolean }>;
}

// Compiled with `tsc --noEmit` (never run): an app's code against the SDK's types.
import {
  Heliograph, HeliographError, contactHash, normalizeHandle, type ErrorCode, type ServerErrorCode,
} from '../../heliograph.js';

/** A switch over every error code: it compiles only while it covers every documented one. */
export function explain(code: ErrorCode): string {
  switch (code) {
    case 'bad-json':
    case 'unknown-type':
    case 'bad-field':
    case 'invalid-room':
    case 'invalid-meta':
    case 'binary-unsupported':
      return 'a bug in the app: the request was malformed';
    case 'not-in-room':
    case 'unknown-peer':
      return 'not a member (any more)';
    case 'too-many-rooms':
    case 'room-full':
      return 'a limit was reached';
    case 'resume-failed':
      return 'a new session; rooms are rejoined';
    case 'unavailable':
    case 'internal':
      return 'try again later';
    case 'token-required':
    case 'token-expired':
    case 'token-invalid-signature':
    case 'token-algorithm-refused':
    case 'token-malformed':
    case 'token-wrong-room':
    case 'forbidden':
      return 'the join token does not admit this';
    case 'rate-limited':
      return 'slow down';
    case 'too-large':
      return 'a Socket.IO event over the size limit';
    case 'removed':
    case 'room-closed':
      return 'the server took this client out of the room';
    case 'not-a-contact':
      return 'only mutual contacts can be invited';
    case 'too-many-contacts':
      return 'too many contact hashes';
    case 'timeout':
    case 'closed':
    case 'disconnected':
    case 'cancelled':
    case 'bad-frame':
    case 'send-failed':
    case 'connect-failed':
    case 'token-fetch-failed':
      return 'raised by the SDK';
    default: {
      const unhandled: never = code;
      return unhandled;
    }
  }
}

export async function joinWithTokens(url: string): Promise<number> {
  const client = new Heliograph({
    getToken: async (room) => {
      const r = await fetch(`/api/join-token?room=${encodeURIComponent(room)}`);
      return r.text();
    },
  });
  await client.connect(url);
  try {
    const peers = await client.join('lobby', { meta: { name: 'ada' } });
    await client.join('side', { meta: (c) => ({ edge: c.edge ?? '' }), token: 'ignored-with-getToken' });
    await client.join('arena', { public: true, roomMeta: { title: 'Arena' } });
    let page = await client.listRooms({ prefix: 'ar', limit: 10 });
    while (page.next !== null && !page.partial) {
      page = await client.listRooms({ cursor: page.next });
    }
    const members: number = page.items.reduce((n, r) => n + r.members, 0);
    return peers.length + members + page.unreachable.length;
  } catch (e) {
    if (e instanceof HeliographError) {
      const server: ServerErrorCode | null = e.code === 'token-expired' ? e.code : null;
      return server ? -1 : explain(e.code).length;
    }
    throw e;
  }
}

export async function contacts(url: string, appKey: string): Promise<string[]> {
  const client = new Heliograph();
  await client.connect(url);
  const mine = await contactHash(' Ada@Example.org ', appKey);
  const theirs = await Promise.all(['grace@example.org', 'alan@example.org'].map((h) => contactHash(h, appKey)));
  await client.setContacts({ publish: [mine], watch: theirs });
  client.on('contact', (c) => {
    if (c.online) client.invite(c.peer, 'call-1', { from: normalizeHandle('Ada') });
  });
  client.on('invite', ({ from, room }) => {
    void client.join(room, { meta: { invitedBy: from } });
  });
  return client.onlineContacts().map((c) => `${c.peer}@${c.region ?? '?'}`);
}

// Brokering, stats and room discovery.
import { PeerMesh, type MeshStats, type DiscoveredRoom } from '../../heliograph.js';

export async function brokered(client: Heliograph): Promise<[MeshStats, DiscoveredRoom[]]> {
  const mesh = new PeerMesh(client, 'lobby', { brokering: true, introductionTimeout: 2000 }).start();
  mesh.on('refused', ({ from, via, reason }) => console.log(from, via, reason));
  mesh.on('signalled', ({ peer, path }) => console.log(peer.id, path === 'peer' ? 'by a peer' : 'by the server'));
  await client.join('lobby', { public: true });
  const keys = await client.enableKeys();
  console.log(keys.raw.length);
  const { items, server } = await mesh.discoverRooms({ prefix: 'lob' });
  console.log(server, items.map((i) => `${i.room} ${i.members} ${i.source} ${i.age}`));
  return [mesh.stats(), items];
}

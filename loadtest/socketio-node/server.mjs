// The Node.js Socket.IO signaling server that `heliograph-loadtest relay --wire socketio
// --vs-reference` measures an edge against: the dialect as common single-process servers
// implement it (join-room → room-users / user-joined, offer / answer / ice-candidate relayed
// to `to` with `from` set, user-left), on the official `socket.io` package (pinned in
// package-lock.json). Prints {"listening": "127.0.0.1:PORT"} once it listens.
//
// Usage: node server.mjs [PORT]   (0 or none: any free port)
import { createServer } from 'node:http';

import { Server } from 'socket.io';

const port = Number(process.argv[2] ?? 0);
const http = createServer();
const io = new Server(http, { cors: { origin: true, credentials: true } });

io.on('connection', (socket) => {
  socket.on('join-room', (room, ack) => {
    const users = [...(io.sockets.adapter.rooms.get(room) ?? [])];
    socket.join(room);
    socket.emit('room-users', users);
    socket.to(room).emit('user-joined', socket.id);
    if (typeof ack === 'function') ack({ ok: true, room, users });
  });
  socket.on('leave-room', (room, ack) => {
    socket.leave(room);
    socket.to(room).emit('user-left', socket.id);
    if (typeof ack === 'function') ack({ ok: true, room });
  });
  for (const event of ['offer', 'answer', 'ice-candidate', 'signal']) {
    socket.on(event, (payload, ack) => {
      if (typeof payload?.to !== 'string') {
        socket.emit('error', { code: 'bad-field', message: 'a signal needs `to`' });
        return;
      }
      io.to(payload.to).emit(event, { ...payload, from: socket.id });
      if (typeof ack === 'function') ack({ ok: true });
    });
  }
  socket.on('disconnecting', () => {
    for (const room of socket.rooms) {
      if (room !== socket.id) socket.to(room).emit('user-left', socket.id);
    }
  });
});

http.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ listening: `127.0.0.1:${http.address().port}` })}\n`);
});
process.on('SIGTERM', () => process.exit(0));

// A real `socket.io-client` driven over stdin/stdout, for the edge's Rust integration tests
// (edge/tests/it/socketio.rs): the tests then script official clients next to native ones.
//
// Usage: node driver.mjs URL [OPTIONS_JSON]   (OPTIONS_JSON: socket.io-client options, e.g.
// {"auth": {"token": "..."}, "transports": ["polling"]})
// stdin, one JSON object a line:
//   {"op": "emit", "event": E, "args": [...], "ack": N?}  emit; with `ack`, ask for one
//   {"op": "disconnect"}                                    disconnect and exit
// stdout, one JSON object a line:
//   {"connected": socketId, "transport": name}   {"event": E, "args": [...]}
//   {"ack": N, "args": [...]}   {"connect_error": message}   {"disconnected": reason}
import { createInterface } from 'node:readline';

import { io } from 'socket.io-client';

const [url, options = '{}'] = process.argv.slice(2);
const out = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);
// The tests want one session per driver: no automatic reconnection behind their back.
const socket = io(url, { reconnection: false, ...JSON.parse(options) });

socket.on('connect', () => {
  out({ connected: socket.id, transport: socket.io.engine.transport.name });
  socket.io.engine.once('upgrade', (t) => out({ upgraded: t.name }));
});
socket.on('connect_error', (e) => out({ connect_error: e.message }));
socket.on('disconnect', (reason) => out({ disconnected: reason }));
socket.onAny((event, ...args) => out({ event, args }));

// Exits by itself once nothing is pending: a long-polling client's disconnect is a request
// that must finish first.
const done = () => { socket.disconnect(); lines.close(); process.stdin.destroy(); };
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.op === 'emit') {
    const args = cmd.args ?? [];
    if (cmd.ack !== undefined) {
      socket.emit(cmd.event, ...args, (...reply) => out({ ack: cmd.ack, args: reply }));
    } else {
      socket.emit(cmd.event, ...args);
    }
  } else if (cmd.op === 'disconnect') {
    done();
  }
}).on('close', done);

// Load for the operator page's test (tests/browser_admin.rs): many clients of
// static/switchyard.js at once, in groups, each group on its own URL (a direct path, or a proxy
// that pushes clients down the ladder) with its own options. Prints `READY <json>` once every
// client holds a transport (which, and the `transport` events each heard), then keeps them
// connected until the process is stopped.
//
// CLIENT_GROUPS: a JSON array of {name, url, n, options}.
import { switchyard, waitFor } from './harness.mjs';

const groups = JSON.parse(process.env.CLIENT_GROUPS);
const clients = [];
for (const group of groups) {
  for (let i = 0; i < group.n; i++) {
    const socket = switchyard.connect(group.url, { ...(group.options || {}) });
    const changes = [];
    socket.on('transport', (change) => changes.push(change));
    if (group.room) socket.on('connect', () => socket.emit('join', group.room));
    if (group.every) setInterval(() => socket.emit('message', 'tick'), group.every * (0.5 + Math.random()));
    clients.push({ group: group.name, socket, changes });
  }
}
await waitFor(`${clients.length} clients connected`, () => clients.every((c) => c.socket.connected), 60000);
const summary = clients.map((c) => ({ group: c.group, sid: c.socket.id, transport: c.socket.transport, changes: c.changes }));
process.stdout.write(`READY ${JSON.stringify(summary)}\n`);
// Held until the test stops the process.
setInterval(() => {}, 1 << 30);

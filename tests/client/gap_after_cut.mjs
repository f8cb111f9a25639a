// Problem 2 of issue 12: a cut longer than the grace period. The client comes back on a new
// session, and the page must hear `gap` (once) saying the old one was lost.
import { switchyard, RELAY, step, result, record, waitFor, sleep } from './harness.mjs';

const transport = process.env.TRANSPORT;
const socket = switchyard.connect(RELAY, { transports: [transport], backoffMin: 100, backoffMax: 500 });
const events = record(socket);
await waitFor('the first connect', () => socket.connected);
const first = socket.id;

await step('relay:refuse');
await step('relay:cut');
await waitFor('the drop', () => !socket.connected);
await sleep(4500); // grace 2 s, swept within a second after
await step('relay:pass');
await waitFor('the reconnect on a new session', () => socket.connected && socket.id !== first, 10000);
await sleep(1500); // a `gap` of the client's own would come within a second
socket.emit('message', 'after');
await waitFor('a reply on the new session', () => events.named('response').length === 1);
result({
  first,
  now: socket.id,
  transport: socket.transport,
  gaps: events.named('gap').map((e) => e.data),
  reconnects: events.named('reconnect').map((e) => e.data),
  order: events.filter((e) => ['session', 'gap', 'connect', 'reconnect'].includes(e.event)).map((e) => e.event),
});
socket.close();

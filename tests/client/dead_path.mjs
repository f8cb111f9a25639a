// Problem 5 of issue 12: a path that goes silent without closing (a frozen TCP path) is found
// within about two heartbeats and resumed, on WebSocket (whose protocol pings a page cannot
// see, hence the heartbeat frames) and on SSE (keep-alives).
import { switchyard, RELAY, step, result, record, waitFor } from './harness.mjs';

const transport = process.env.TRANSPORT;
const socket = switchyard.connect(RELAY, { transports: [transport], backoffMin: 100, backoffMax: 500 });
const events = record(socket);
await waitFor('the connect', () => socket.connected);
const sid = socket.id;
await step('relay:stall');
const stalled = Date.now();
await waitFor('the client to notice the dead path', () => !socket.connected, 10000);
const noticed = Date.now() - stalled;
await step('relay:unstall');
await waitFor('the resume', () => socket.connected, 10000);
socket.emit('message', 'after');
await waitFor('a reply after the resume', () => events.named('response').length === 1);
result({
  noticed,
  reason: events.named('disconnect')[0].data.reason,
  sameSession: socket.id === sid,
  resumed: events.named('reconnect')[0].data.resumed,
});
socket.close();

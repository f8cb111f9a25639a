// emitWithAck() across a cut longer than the grace period: a request sent over the WebSocket
// went to a session that was lost, so its promise is rejected with `gap` (a POSTed one whose
// POST got no answer is sent again to the fresh session instead, like any send); one queued
// while disconnected goes to the fresh session and is answered there.
import { switchyard, RELAY, step, result, record, waitFor, sleep } from './harness.mjs';

const socket = switchyard.connect(RELAY, { transports: [process.env.TRANSPORT], backoffMin: 100, backoffMax: 500 });
const events = record(socket);
await waitFor('the first connect', () => socket.connected);
const first = socket.id;

const reason = (promise) => promise.then((value) => ({ resolved: value }), (err) => ({ reason: err.reason, message: err.message }));

await step('relay:stall');
const lost = reason(socket.emitWithAck('sum', [1, 1], { timeout: 0 }));
await sleep(500); // sent; its answer is held in the relay
await step('relay:refuse');
await step('relay:cut');
await step('relay:unstall');
await waitFor('the drop', () => !socket.connected);
const queued = reason(socket.emitWithAck('sum', [2, 2], { timeout: 20000 }));
await sleep(4500); // grace 2 s, swept within a second after
await step('relay:pass');
await waitFor('the reconnect on a new session', () => socket.connected && socket.id !== first, 10000);
result({ first, now: socket.id, lost: await lost, queued: await queued, gaps: events.named('gap').length });
socket.close();

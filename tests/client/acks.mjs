// Acknowledgements with switchyard.js: emitWithAck() resolved by the server's answer (also when
// the answer comes after a cut, over the transport the client fell back to), rejected on a
// timeout and on the server's error form; and handlers answering the server's requests with
// their return value or promise.
import { switchyard, RELAY, step, result, record, waitFor, sleep } from './harness.mjs';

const socket = switchyard.connect(RELAY, { backoffMin: 100, backoffMax: 300, wsTimeout: 1500 });
const events = record(socket);
await waitFor('the first connect', () => socket.connected);
const first = { sid: socket.id, transport: socket.transport };

const reason = (promise) => promise.then((value) => ({ resolved: value }), (err) => ({ reason: err.reason, message: err.message, data: err.data ?? null }));

// Answers, and the error form.
const sum = await socket.emitWithAck('sum', [1, 2, 3]);
const failed = await reason(socket.emitWithAck('sum', 'x'));
const unclaimed = await reason(socket.emitWithAck('nope', 1));

// Nothing comes down the path: the request times out.
await step('relay:stall');
const timedOut = await reason(socket.emitWithAck('sum', [1], { timeout: 300 }));
await step('relay:unstall');

// The server's requests, answered by the page's handlers: a value, then a promise.
socket.on('question', (q) => ({ echo: q }));
socket.emit('ask', { q: 'sync?' });
await waitFor('the first told', () => events.named('told').length === 1);
socket.off('question');
socket.on('question', (q) => sleep(50).then(() => `${q} later`));
socket.emit('ask', { q: 'async?' });
await waitFor('the second told', () => events.named('told').length === 2);

// A cut while the answer is on its way down; the WebSocket is refused from then on, so the
// answer comes with the resume over SSE.
await step('relay:stall');
let settled = null;
const acrossCut = reason(socket.emitWithAck('sum', [40, 2], { timeout: 20000 })).then((r) => {
  settled = { ...r, transport: socket.transport, connects: events.named('connect').length };
  return r;
});
await sleep(500); // the request goes up; its answer is held in the relay
await step('relay:refuse-websocket');
await step('relay:cut');
await step('relay:unstall');
await waitFor('the reconnect on a fallback', () => socket.connected && socket.transport !== 'websocket', 15000);
await acrossCut;

result({
  first,
  now: { sid: socket.id, transport: socket.transport },
  sum,
  failed,
  unclaimed,
  timedOut,
  told: events.named('told').map((e) => e.data),
  questions: events.named('question').map((e) => e.data),
  acrossCut: settled,
  answersSeenAsEvents: events.named('ack').length,
});
socket.close();

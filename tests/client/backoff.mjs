// Problem 3 of issue 12 (the backoff): a path that takes the connection but drops whatever the
// client sends must not be hammered. The attempt count starts over only once a send got
// through, not on every connect, so the delays between connects grow; once sends go through,
// a later drop is resumed quickly again.
import { switchyard, RELAY, step, result, record, waitFor, sleep } from './harness.mjs';

const socket = switchyard.connect(RELAY, { transports: ['websocket'], backoffMin: 100, backoffMax: 1600 });
const events = record(socket);
await waitFor('the connect', () => socket.connected);

await step('relay:cut-on-send');
await step('relay:cut');
await waitFor('the drop', () => !socket.connected);
socket.emit('message', 'dropped by the path, again and again');
await sleep(5000);
const connects = events.named('connect').map((e) => e.t);
const gaps = connects.slice(1).map((t, i) => t - connects[i]);

await step('relay:pass');
await waitFor('the reply once the path lets sends through', () => events.named('response').length === 1, 10000);
await sleep(1500); // the socket outlived its send: it got through
await step('relay:cut');
const cut = Date.now();
await waitFor('the resume after a plain drop', () => events.named('connect').length > connects.length + 1, 5000);
result({ connects: connects.length, gaps, resumeAfterCut: Date.now() - cut, replies: events.named('response').length });
socket.close();

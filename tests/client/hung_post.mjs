// Problem 4 of issue 12: a POST that never gets an answer (a proxy holding it) must not block
// every later send: it times out and is sent again (the server skips numbers it handled).
import { switchyard, SERVER, result, record, waitFor } from './harness.mjs';

const realFetch = globalThis.fetch;
let held = 0;
globalThis.fetch = (url, init) => {
  if (init && init.method === 'POST' && held++ === 0) {
    // The first POST hangs until the client gives up on it.
    return new Promise((_, reject) => {
      init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
    });
  }
  return realFetch(url, init);
};

const socket = switchyard.connect(SERVER, { transports: ['sse'], postTimeout: 1000, backoffMin: 100, backoffMax: 500 });
const events = record(socket);
await waitFor('the connect', () => socket.connected);
const started = Date.now();
for (let i = 1; i <= 3; i++) socket.emit('echo', i);
await waitFor('three echoes', () => events.named('echo').length >= 3, 8000);
result({
  echoes: events.named('echo').map((e) => e.data),
  after: Date.now() - started,
  connected: socket.connected,
  held,
});
socket.close();

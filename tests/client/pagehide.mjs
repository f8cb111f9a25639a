// Problem 6 of issue 12 (leaving the page): on `pagehide`, what is queued is sent at once as a
// keepalive POST, together with what a POST still out carried, so a page that goes away right
// after an emit does not lose it, even behind a hung request.
import { switchyard, SERVER, result, record, waitFor, pageEvent } from './harness.mjs';

const realFetch = globalThis.fetch;
let held = 0;
const keepalive = [];
globalThis.fetch = (url, init) => {
  if (init && init.method === 'POST') {
    if (init.keepalive) keepalive.push(init.body);
    else if (held++ === 0) {
      return new Promise((_, reject) => {
        init.signal?.addEventListener('abort', () => reject(new DOMException('aborted', 'AbortError')));
      });
    }
  }
  return realFetch(url, init);
};

const socket = switchyard.connect(SERVER, { transports: ['sse'], postTimeout: 60000 });
const events = record(socket);
await waitFor('the connect', () => socket.connected);
socket.emit('echo', 1); // its POST hangs
socket.emit('echo', 2); // queued behind it
socket.emit('echo', 3);
pageEvent('pagehide');
await waitFor('the three echoes', () => events.named('echo').length >= 3, 5000);
result({ echoes: events.named('echo').map((e) => e.data), keepalive: keepalive.map((b) => JSON.parse(b)) });
socket.close();

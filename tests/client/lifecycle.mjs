// Problem 6 of issue 12: close() stops everything the client started (so this process exits at
// once afterwards), open() works after the session was taken by another transport, and the
// send queue is bounded.
import { switchyard, SERVER, RELAY, step, result, record, waitFor } from './harness.mjs';

const out = {};

// open() after being superseded: another attach to the same session closes this WebSocket
// with 4000; the client stays down until asked, and open() then resumes the session.
{
  const socket = switchyard.connect(SERVER, { transports: ['websocket'] });
  const events = record(socket);
  await waitFor('the connect', () => socket.connected);
  const sid = socket.id;
  const poll = await fetch(`${SERVER}/poll?sid=${sid}`);
  await poll.text();
  await waitFor('the supersede', () => !socket.connected);
  socket.open();
  await waitFor('the connect after open()', () => socket.connected, 5000);
  out.superseded = {
    disconnect: events.named('disconnect')[0].data,
    sameSession: socket.id === sid,
    connects: events.named('connect').length,
  };
  socket.close();
}

// The queue is bounded: beyond maxQueue, emit() is refused with an `error` event.
{
  const socket = switchyard.connect(SERVER, { autoConnect: false, maxQueue: 50 });
  const events = record(socket);
  for (let i = 0; i < 60; i++) socket.emit('message', i);
  out.queue = { queued: socket._outbox.length, errors: events.named('error').map((e) => e.data) };
  socket.close();
}

// close() with everything running: an SSE stream (its silence timer), a poll in flight, a
// POST in flight, and a WebSocket whose handshake hangs (its open timer, 60 s).
{
  await step('relay:stall');
  const sse = switchyard.connect(SERVER, { transports: ['sse'] });
  const poll = switchyard.connect(SERVER, { transports: ['polling'] });
  const ws = switchyard.connect(RELAY, { transports: ['websocket'], wsTimeout: 60000 });
  await waitFor('the stream and the poll', () => sse.connected && poll.connected);
  poll.emit('message', 'in flight');
  sse.emit('message', 'in flight');
  sse.close();
  poll.close();
  ws.close();
  out.closed = { sse: sse.connected, poll: poll.connected, ws: ws.connected, requests: sse._requests.length + poll._requests.length };
}
result(out);
// Nothing is left to keep this process alive: tests/client.rs times its exit.

// Problem 3 of issue 12: what is queued goes out in batches the server takes (measured in
// UTF-8 bytes, within the limits the hello announces), and one event too large on its own is
// refused with an `error` naming it instead of being sent again forever.
import { switchyard, SERVER, RELAY, step, result, record, waitFor } from './harness.mjs';

const out = {};

// WebSocket: 100 events of 1 KB queued while the path is down, then an oversize one.
{
  const socket = switchyard.connect(RELAY, { transports: ['websocket'], backoffMin: 100, backoffMax: 500 });
  const events = record(socket);
  await waitFor('the websocket connect', () => socket.connected);
  await step('relay:refuse');
  await step('relay:cut');
  await waitFor('the drop', () => !socket.connected);
  for (let i = 0; i < 100; i++) socket.emit('echo', `${i} ` + 'x'.repeat(1000));
  await step('relay:pass');
  await waitFor('100 echoes', () => events.named('echo').length >= 100, 15000);
  socket.emit('echo', 'y'.repeat(70000));
  socket.emit('echo', 'small');
  await waitFor('the small echo after the oversize one', () => events.named('echo').length >= 101, 10000);
  out.websocket = {
    echoes: events.named('echo').map((e) => e.data.split(' ')[0]),
    connects: events.named('connect').length,
    disconnects: events.named('disconnect').map((e) => e.data.reason),
    errors: events.named('error').map((e) => e.data),
  };
  socket.close();
}

// POST: 30 events of 2,000 CJK characters (6,000 bytes each) sent at once, then an oversize one.
{
  const socket = switchyard.connect(SERVER, { transports: ['sse'] });
  const events = record(socket);
  await waitFor('the sse connect', () => socket.connected);
  for (let i = 0; i < 30; i++) socket.emit('echo', `${i} ` + '中'.repeat(2000));
  await waitFor('30 echoes', () => events.named('echo').length >= 30, 15000);
  socket.emit('echo', '字'.repeat(30000)); // 30,000 characters, 90,000 bytes
  socket.emit('echo', 'small');
  await waitFor('the small echo after the oversize one', () => events.named('echo').length >= 31, 10000);
  out.sse = {
    echoes: events.named('echo').map((e) => e.data.split(' ')[0]),
    connects: events.named('connect').length,
    errors: events.named('error').map((e) => e.data),
  };
  socket.close();
}
result(out);

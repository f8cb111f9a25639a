// Developer experience (issue 12): the server's own words in `connect_error`, a `debug` log of
// transport decisions, and Socket.IO's names (io(), auth, reconnectionAttempts,
// connect()/disconnect()).
import { switchyard, SERVER, result, record, waitFor } from './harness.mjs';

const out = {};
{
  const log = [];
  const socket = switchyard.io(SERVER, {
    transports: ['sse', 'polling'],
    reconnectionAttempts: 2,
    reconnectionDelay: 50,
    reconnectionDelayMax: 100,
    debug: (message) => log.push(message),
  });
  const events = record(socket);
  await waitFor('giving up', () => events.named('reconnect_failed').length === 1, 10000);
  out.refused = {
    errors: events.named('connect_error').map((e) => e.data),
    failed: events.named('reconnect_failed')[0].data,
    log,
  };
  socket.close();
}
{
  const socket = switchyard.io(SERVER, { auth: { token: process.env.TOKEN }, transports: ['sse'] });
  const events = record(socket);
  await waitFor('the connect with a token', () => socket.connected);
  const sid = socket.id;
  socket.emit('whoami');
  await waitFor('whoami', () => events.named('whoami').length === 1);
  socket.disconnect();
  const down = socket.connected;
  socket.connect();
  await waitFor('the connect after connect()', () => socket.connected);
  out.auth = { whoami: events.named('whoami')[0].data, down, sameSession: socket.id === sid };
  socket.close();
}
result(out);

// Problem 1 of issue 12: a tab frozen while long-polling (a background tab, a laptop lid)
// comes back after its session expired. Its next poll gets a fresh session: the client must
// adopt it, tell the page with `gap`, and poll on with the new sid, not create session after
// session with the dead one.
import { switchyard, SERVER, step, result, record, waitFor, sleep, freeze } from './harness.mjs';

const socket = switchyard.connect(SERVER, { transports: ['polling'], backoffMin: 100, backoffMax: 1000 });
const events = record(socket);
await waitFor('the first connect', () => socket.connected);
const first = socket.id;
socket.emit('message', 'before');
await waitFor('the reply before the freeze', () => events.named('response').length === 1);

// The server's poll timeout (1 s) answers the poll in flight; the session is then detached and
// its grace period (2 s) runs out while this process runs nothing at all.
freeze(5000);

await waitFor('a fresh session and its gap', () => socket.id !== first && events.named('gap').length > 0, 5000);
// Give a flood time to show: with the dead sid, every poll would open another session.
await sleep(2000);
const live = Number(await step('sessions'));
socket.emit('message', 'after');
await waitFor('the reply after the freeze', () => events.named('response').length === 2);
result({
  first,
  now: socket.id,
  connected: socket.connected,
  transport: socket.transport,
  live,
  gaps: events.named('gap').map((e) => e.data),
  sessionEvents: events.named('session').map((e) => e.data.sid),
});
socket.close();

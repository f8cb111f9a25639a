// Problem 6 of issue 12 (page signals): while a reconnect is far off (a long backoff), the
// page coming back online, or becoming visible again, resumes at once.
import { switchyard, RELAY, step, result, record, waitFor, pageEvent, setVisibility } from './harness.mjs';

const socket = switchyard.connect(RELAY, { transports: ['sse'], backoffMin: 60000, backoffMax: 60000 });
const events = record(socket);
await waitFor('the connect', () => socket.connected);
const out = {};
for (const signal of ['online', 'visible']) {
  await step('relay:refuse');
  await step('relay:cut');
  await waitFor('the drop', () => !socket.connected);
  if (signal === 'online') pageEvent('offline');
  else setVisibility('hidden');
  await step('relay:pass');
  const back = Date.now();
  if (signal === 'online') pageEvent('online');
  else setVisibility('visible');
  await waitFor(`the resume on ${signal}`, () => socket.connected, 5000);
  out[signal] = Date.now() - back;
}
out.reconnects = events.named('reconnect').length;
out.resumed = events.named('reconnect').every((e) => e.data.resumed);
result(out);
socket.close();

// The real socket.io-client (4.8) against /socket.io/, run by tests/socketio_client.rs.
//
// SCENARIO picks what to do:
// * `transports`: connects three times (polling then upgrade, websocket only, polling only),
//   sends `message` three times on each, and reports the `response`s and the transport used;
// * `rooms`: a Socket.IO client and a switchyard.js client join `lobby` and talk;
// * `recovery`: a client behind the relay hears chats 1..5 in a room, then the relay holds
//   back the server's bytes while 6..10 are said, then cuts every connection; the client
//   reconnects, recovers, and hears 11..15. Reports every chat it heard and whether the
//   connection recovered.
// * `acks`: over each transport, `emitWithAck` to handlers that answer (`sum`, the seed's
//   `message`) and one that fails, and the server's request (`ask` -> `question`) answered by
//   the client's ack callback.
// * `cluster` (tests/cluster.rs, SERVER being nginx round robin in front of three nodes): a
//   client on TRANSPORTS (comma-separated; `polling,websocket` is `io()`'s default) sends 20
//   `message`s, each once the reply to the one before came, and reports the recovery offsets of
//   the replies, the Engine.IO sids it used and its connects. With KILL_AT=N, after reply N it
//   asks the test to kill the node holding its Engine.IO session (`kill:SID`), has the cluster
//   emit `notice` to its session while it is cut off, and goes on once it has reconnected.
import { createRequire } from 'node:module';
import { SERVER, RELAY, switchyard, step, result, waitFor, sleep } from './harness.mjs';

const require = createRequire(import.meta.url);
const { io } = require('socket.io-client');

function connected(socket) {
  return new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('connect_error', reject);
  });
}

async function transports() {
  const runs = {};
  for (const [name, options] of [
    ['upgrade', { transports: ['polling', 'websocket'] }],
    ['websocket', { transports: ['websocket'] }],
    ['polling', { transports: ['polling'] }],
  ]) {
    const socket = io(SERVER, { ...options, reconnection: false, forceNew: true });
    const responses = [];
    socket.on('response', (data) => responses.push(data));
    await connected(socket);
    if (name === 'upgrade') {
      await waitFor('the upgrade to websocket', () => socket.io.engine.transport.name === 'websocket');
    }
    for (let i = 0; i < 3; i++) socket.emit('message', `hello ${i}`);
    await waitFor(`three responses over ${name}`, () => responses.length >= 3);
    await sleep(200); // nothing more arrives
    runs[name] = { responses, transport: socket.io.engine.transport.name, id: socket.id };
    socket.disconnect();
  }
  return runs;
}

async function rooms() {
  const sio = io(SERVER, { reconnection: false, forceNew: true });
  const sioChats = [];
  const sioResponses = [];
  sio.on('chat', (data) => sioChats.push(data));
  sio.on('response', (data) => sioResponses.push(data));
  await connected(sio);
  sio.emit('join', 'lobby');

  const yard = switchyard.connect(SERVER, { transports: ['websocket'] });
  const yardChats = [];
  yard.on('chat', (data) => yardChats.push(data));
  yard.on('connect', () => yard.emit('join', 'lobby'));
  await waitFor('the switchyard client to hold a session', () => yard.id);
  // Joins are handled in order per session; a round trip on each makes sure both are in.
  await new Promise((resolve) => { sio.once('response', resolve); sio.emit('message', 'ready?'); });
  await sleep(300);
  yard.emit('message', 'from switchyard.js');
  await waitFor('the Socket.IO client to hear the switchyard.js client', () => sioChats.length >= 1);
  sio.emit('message', 'from socket.io-client');
  await waitFor('the switchyard.js client to hear the Socket.IO client', () => yardChats.length >= 1);
  await sleep(200);
  sio.disconnect();
  yard.close();
  return { sioChats, yardChats, yardSid: yard.id, sioResponses };
}

async function recovery() {
  // The client under test goes through the relay; a second one, connected directly, talks in
  // their room, so what the first misses while cut off is the room's chat.
  const socket = io(RELAY, {
    transports: [process.env.TRANSPORT || 'websocket'],
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
    forceNew: true,
  });
  const chats = [];
  const connects = [];
  socket.on('chat', (data) => chats.push(Number(data.text)));
  socket.on('connect', () => connects.push({ recovered: socket.recovered, id: socket.id }));
  await connected(socket);
  socket.emit('join', 'recovery');
  const talker = io(SERVER, { transports: ['websocket'], reconnection: false, forceNew: true });
  let answered = 0;
  talker.on('response', () => answered++);
  await connected(talker);
  talker.emit('join', 'recovery');
  // Both joins are in once each has had a round trip after it.
  socket.emit('message', 'ready');
  talker.emit('message', 'ready');
  await waitFor('both joined', () => answered >= 1);
  await sleep(200);
  chats.length = 0;
  const say = async (from, to) => {
    for (let n = from; n <= to; n++) talker.emit('message', String(n));
    await waitFor(`the server to handle ${to}`, () => answered >= to + 1);
  };
  await say(1, 5);
  await waitFor('chats 1..5', () => chats.length >= 5);
  await step('relay:stall');
  await say(6, 10); // the chats wait in the relay, then are lost with the connection
  await step('relay:cut');
  await step('relay:unstall');
  await waitFor('the reconnect', () => connects.length >= 2);
  await say(11, 15);
  await waitFor('chat 15', () => chats.includes(15));
  await sleep(300); // nothing more arrives
  socket.disconnect();
  talker.disconnect();
  return { chats, connects };
}

async function acks() {
  const out = {};
  for (const transport of ['websocket', 'polling']) {
    const socket = io(SERVER, { transports: [transport], reconnection: false, forceNew: true });
    await connected(socket);
    const told = new Promise((resolve) => socket.once('told', resolve));
    socket.on('question', (q, answer) => answer(`answer to ${q}`));
    out[transport] = {
      sum: await socket.timeout(5000).emitWithAck('sum', [1, 2, 3]),
      failed: await socket.timeout(5000).emitWithAck('sum', 'not numbers'),
      seed: await socket.timeout(5000).emitWithAck('message', 'hi'),
    };
    socket.emit('ask', { q: 'colour?' });
    out[transport].told = await told;
    socket.disconnect();
  }
  return out;
}

async function cluster() {
  const transports = (process.env.TRANSPORTS || 'polling,websocket').split(',');
  const killAt = Number(process.env.KILL_AT || 0);
  // A reconnect a second after the drop: the notice is emitted while the client is away.
  const socket = io(SERVER, { transports, reconnectionDelay: 1000, reconnectionDelayMax: 1000, forceNew: true });
  const offsets = [];
  const notices = [];
  const connects = [];
  const engines = [];
  socket.on('response', (data, offset) => offsets.push(offset));
  socket.on('notice', (data) => notices.push(data));
  socket.on('connect', () => {
    connects.push({ recovered: socket.recovered, engine: socket.io.engine.id });
    engines.push(socket.io.engine.id);
  });
  await connected(socket);
  if (transports.includes('websocket')) {
    await waitFor('the upgrade to websocket', () => socket.io.engine.transport.name === 'websocket');
  }
  for (let n = 1; n <= 20; n++) {
    socket.emit('message', `message ${n}`);
    await waitFor(`reply ${n}`, () => offsets.length >= n, 20000);
    if (n === killAt) {
      const engine = socket.io.engine.id;
      await step(`kill:${engine}`);
      const emitted = await fetch(`${SERVER}/api/emit`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ to: { sid: socket._pid }, event: 'notice', data: 'while away' }),
      });
      if (emitted.status !== 200) throw new Error(`the notice: ${emitted.status} ${await emitted.text()}`);
      await waitFor('the reconnect', () => connects.length >= 2, 20000);
      if (transports.includes('websocket')) {
        await waitFor('the upgrade again', () => socket.io.engine.transport.name === 'websocket');
      }
    }
  }
  if (killAt) await waitFor('the notice', () => notices.length >= 1);
  await sleep(300); // nothing more arrives
  const transport = socket.io.engine.transport.name;
  socket.disconnect();
  return { offsets, notices, connects, engines, transport };
}

const scenarios = { transports, rooms, recovery, acks, cluster };
result(await scenarios[process.env.SCENARIO]());
process.exit(0);

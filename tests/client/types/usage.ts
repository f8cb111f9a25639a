// The browser client as a classic script uses it: the global `switchyard` (no import).
// Every line must type-check under `strict`; each `@ts-expect-error` line must fail to.

const socket = switchyard.connect();
const nested = switchyard.io('https://host.example/realtime', {
  transports: ['websocket', 'polling'],
  reconnectionDelay: 250,
  reconnectionDelayMax: 5000,
  auth: (cb) => cb({ token: 'jwt' }),
  debug: (message, details) => console.debug(message, details),
});
const quiet = new switchyard.Socket({ autoConnect: false, token: () => 'jwt', path: '/realtime' });

socket.on('connect', ({ sid, transport, resumed }) => {
  const t: 'websocket' | 'sse' | 'polling' = transport;
  console.log('connected', sid.length, t, resumed);
});
socket.on('disconnect', ({ reason, willReconnect }) => console.log(reason, willReconnect));
socket.on('reconnect', ({ attempts, sid, resumed }) => console.log(attempts + 1, sid, resumed));
socket.on('transport', ({ from, to, reason, code }) => console.log(from ?? 'none', to, reason, code === 'ws_blocked'));
socket.on('connect_error', ({ reasons, message, attempts, retryIn }) => {
  console.log(reasons.join('; '), message, attempts, retryIn === null ? 'giving up' : retryIn * 2);
});
socket.once('reconnect_failed', ({ attempts }) => console.log(attempts));
socket.on('session', (hello, id) => {
  const limit: number = Math.min(hello.max_body, hello.max_batch);
  console.log(hello.sid, hello.transport, hello.received, hello.heartbeat ?? 'none', limit, id);
});
socket.on('gap', ({ reason, lost, previous }) => console.log(reason === 'overflow' ? lost : previous));
socket.on('error', (e) => console.log(e.error, e.event, e.reason, e.bytes, e.limit));
socket.on('response', (data: unknown, id) => console.log('Received response:', data, id));
socket.onAny(function (event, data, id) {
  console.log(event, data, id, this.id);
});

const chat = (text: string) => console.log(text);
socket.on('chat', chat).off('chat', chat).off('chat').off();
socket.offAny();

socket.emit('message', 'hello').emit('message', { n: 1 }).emit('ping');
socket.emitWithAck<number>('sum', [1, 2], { timeout: 5000 }).then(
  (sum: number) => console.log(sum + 1),
  (err: switchyard.AckError) => console.log(err.reason === 'gap' ? 'lost' : err.reason, err.data?.event),
);
const asked: Promise<unknown> = socket.emitWithAck('ping');
socket.on('question', (q: string) => ({ answer: q.length }));
socket.on('confirm', async () => true);
// @ts-expect-error: a lifecycle event's name cannot be sent
socket.emitWithAck('connect');
const ackTimeout: number = switchyard.defaults.ackTimeout;
console.log(asked, ackTimeout);
socket.close().open().disconnect().connect();

const id: string | null = socket.id;
const transport: switchyard.TransportName | null = socket.transport;
const connected: boolean = socket.connected;
const order: -1 | 0 | 1 | null = switchyard.compareCursors('a.1', 'a.1~');
const bytes: number = switchyard.utf8Bytes('héllo');
const version: string = switchyard.version;
const timeout: number = switchyard.defaults.wsTimeout;
console.log(nested, quiet, id, transport, connected, order, bytes, version, timeout);

// @ts-expect-error: lifecycle names are the client's own, `emit` refuses them.
socket.emit('connect', null);
// @ts-expect-error: the connect event has no such field.
socket.on('connect', (c) => c.nope);
// @ts-expect-error: not a transport.
switchyard.connect({ transports: ['carrier-pigeon'] });
// @ts-expect-error: options are checked.
switchyard.connect({ wsTimeout: 'soon' });
// @ts-expect-error: read-only.
socket.id = 'x';

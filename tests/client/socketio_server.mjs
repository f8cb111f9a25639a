// Node's socket.io 4.8 serving the seed's app (`message` answered with `response`), the
// reference of the `socketio` bench scenario (benches/gateway/socketio.rs): node
// socketio_server.mjs PORT, on 127.0.0.1.
import { createServer } from 'node:http';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { Server } = require('socket.io');

const http = createServer();
const io = new Server(http);
io.on('connection', (socket) => {
  socket.on('message', () => socket.emit('response', 'Message received!'));
});
http.listen(Number(process.argv[2]), '127.0.0.1');

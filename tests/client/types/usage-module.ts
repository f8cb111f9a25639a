// The browser client from a bundler or CommonJS: the module's export.
import switchyard, { connect, compareCursors, type Options, type SessionHello } from '../../../static/switchyard.js';

const options: Options = { transports: ['sse', 'polling'], maxBatchBytes: 32_000 };
const socket = connect('/', options);
socket.on('session', (hello: SessionHello) => console.log(hello.sid));
const same: boolean = compareCursors('s.1', 's.1') === 0 && switchyard.io === connect;
export { socket, same };

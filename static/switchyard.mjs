// ES module entry of the browser client: `import { connect } from '/switchyard.mjs'`.
// switchyard.js is written to run as a classic script and as a module; imported, it installs
// `globalThis.switchyard`, which this file re-exports.
import './switchyard.js';

const switchyard = globalThis.switchyard;
export const { connect, Socket, compareCursors } = switchyard;
export default switchyard;

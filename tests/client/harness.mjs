// Shared by the Node scenarios of static/switchyard.js. Each scenario is a script that
// tests/client.rs runs against a real gateway (and often a relay it controls):
//
// * `step(name)` asks the Rust side to act (`relay:cut`, `relay:stall`, `sessions`, ...) and
//   resolves with its one-line answer;
// * `result(value)` hands the scenario's findings to the Rust side, which asserts on them;
// * an exception fails the scenario (non-zero exit, the stack on stderr).
//
// Node has no page: the harness gives `globalThis` the page events the client listens to
// (`online`, `offline`, `pagehide`, ...) and a `document` with `visibilityState`, so a scenario
// can play them; and WebSocket comes from the `ws` package, which, like a browser, hides
// protocol pings from the page.
import { setMaxListeners } from 'node:events';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
globalThis.WebSocket = require('ws');

const pageEvents = new EventTarget();
globalThis.addEventListener = pageEvents.addEventListener.bind(pageEvents);
globalThis.removeEventListener = pageEvents.removeEventListener.bind(pageEvents);
class FakeDocument extends EventTarget {
  visibilityState = 'visible';
}
globalThis.document = new FakeDocument();
// Every socket listens to the page (`online`, `visibilitychange`, ...); a scenario may hold
// many sockets on one page (load.mjs).
setMaxListeners(1000, pageEvents, globalThis.document);

/** Fires a page event (`online`, `pagehide`, ...) as a browser would. */
export function pageEvent(name) {
  pageEvents.dispatchEvent(new Event(name));
}

/** Sets the document's visibility and fires `visibilitychange`. */
export function setVisibility(state) {
  document.visibilityState = state;
  document.dispatchEvent(new Event('visibilitychange'));
}

// SWITCHYARD_JS runs a scenario against another copy of the client (to see a test fail on an
// older one).
export const switchyard = require(process.env.SWITCHYARD_JS || '../../static/switchyard.js');
export const SERVER = process.env.SWITCHYARD_URL;
export const RELAY = process.env.RELAY_URL;

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Asks the Rust side to do `name`; resolves with its answer line. */
export function step(name) {
  return new Promise((resolve) => {
    process.stdin.ref?.();
    process.stdin.resume();
    process.stdin.setEncoding('utf8');
    let buffered = '';
    const onData = (chunk) => {
      buffered += chunk;
      const nl = buffered.indexOf('\n');
      if (nl < 0) return;
      process.stdin.off('data', onData);
      // Between steps stdin must not keep the process alive (the lifecycle scenario times the
      // exit after close()).
      process.stdin.pause();
      process.stdin.unref?.();
      resolve(buffered.slice(0, nl));
    };
    process.stdin.on('data', onData);
    process.stdout.write(`STEP ${name}\n`);
  });
}

export function result(value) {
  process.stdout.write(`RESULT ${JSON.stringify(value)}\n`);
}

/** Polls `condition` every 20 ms for at most `ms`; throws saying what was awaited. */
export async function waitFor(what, condition, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

const recorded = [];
// A failing scenario shows what its sockets saw.
process.on('uncaughtException', (err) => {
  for (const events of recorded) {
    process.stderr.write(`events: ${JSON.stringify(events.map((e) => [e.t, e.event, e.data]))}\n`);
  }
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});

/** Every event a socket hands the page, with its time: {event, data, id, t}. */
export function record(socket) {
  const events = [];
  recorded.push(events);
  const start = Date.now();
  socket.onAny((event, data, id) => {
    if (event.charAt(0) !== '_') events.push({ event, data, id: id ?? null, t: Date.now() - start });
  });
  events.named = (name) => events.filter((e) => e.event === name);
  return events;
}

/** Blocks the whole event loop for `ms`, as a frozen tab is: no timers, no I/O handled. */
export function freeze(ms) {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/*! TypeScript declarations of switchyard.js, the browser client of switchyard.
 *
 * Classic script (`<script src="/switchyard.js">`): the global `switchyard`.
 * CommonJS or a bundler: `import switchyard from './switchyard.js'`, or
 * `import { connect } from './switchyard.js'` (with `esModuleInterop`).
 *
 * docs/client.md is the reference; docs/protocol.md the wire protocol. Checked with
 * `tsc --strict` against tests/client/types/ by tests/docs.rs.
 */

export = switchyard;
export as namespace switchyard;

declare namespace switchyard {
  /** The transports, in the order the client tries them by default. */
  type TransportName = 'websocket' | 'sse' | 'polling';

  /** An event's position in its session (`SID.N`, or `SID.N~` for a notice). Opaque: compare
   *  two of one session with `compareCursors`, never build one. */
  type Cursor = string;

  /** Socket.IO's `auth`: an object, or a function handing one to its callback at once. */
  type Auth = { token?: string } | ((callback: (auth: { token?: string }) => void) => void);

  /** `debug: true` logs with `console.debug`; a function gets every message instead. */
  type DebugSink = (message: string, details?: unknown) => void;

  /** Options of `connect()`; every one is optional (see `defaults`). */
  interface Options {
    /** Which transports, best first. Default `['websocket', 'sse', 'polling']`. */
    transports?: TransportName[];
    /** Where the gateway is mounted (`'/realtime'` for a nested router). Default: the URL's
     *  path, or `''`. */
    path?: string | null;
    /** Connect at once (else call `open()`). Default `true`. */
    autoConnect?: boolean;
    /** Reconnect after a drop or a failed round. Default `true`. */
    reconnection?: boolean;
    /** Failed rounds in a row before `reconnect_failed`. Default `Infinity`. */
    reconnectionAttempts?: number;
    /** First reconnection delay, ms; doubles per failure. Default `500`. */
    backoffMin?: number;
    /** Socket.IO's name of `backoffMin`. */
    reconnectionDelay?: number;
    /** Largest reconnection delay, ms; each delay is times 0.5 to 1 at random. Default `10000`. */
    backoffMax?: number;
    /** Socket.IO's name of `backoffMax`. */
    reconnectionDelayMax?: number;
    /** A JWT for a gateway run with `--auth-secret`, or a function returning one (called for
     *  every attach, so it can be refreshed). */
    token?: string | (() => string | null | undefined) | null;
    /** Socket.IO's way to give the token. */
    auth?: Auth;
    /** ms for a WebSocket to open and deliver `session`, else fall back. Default `3000`. */
    wsTimeout?: number;
    /** ms for an SSE stream (or the first poll) to deliver `session`, else poll. Default `4000`. */
    sseTimeout?: number;
    /** ms of silence after which a stream is taken as dead. Default: from the hello. */
    sseIdleTimeout?: number | null;
    /** ms after which an unanswered poll is aborted. Default: from the hello. */
    pollTimeout?: number | null;
    /** Polls start at least this many ms apart when answers come at once. Default `100`. */
    pollMinInterval?: number;
    /** ms after which an unanswered POST is aborted and sent again. Default `10000`. */
    postTimeout?: number;
    /** Largest batch, in UTF-8 bytes; the hello's `max_body` lowers it. Default `60000`. */
    maxBatchBytes?: number;
    /** Older name of `maxBatchBytes`. */
    maxPostBytes?: number;
    /** Most events waiting to be sent; beyond it `emit` is refused with an `error` event.
     *  Default `1000`. */
    maxQueue?: number;
    /** `emitWithAck`: how long, ms, to wait for the answer unless the call says (`0`: no
     *  limit). Default `30000`. */
    ackTimeout?: number;
    /** While on a fallback, try WebSocket again about this often, ms (`0`: never). Default
     *  `30000`. */
    probeInterval?: number;
    /** ms a WebSocket failure is remembered (sessionStorage, per origin). Default `600000`. */
    rememberFailure?: number;
    /** Log transport decisions. Default `false`. */
    debug?: boolean | DebugSink;
  }

  /** The default options (`switchyard.defaults`); changing one changes later sockets'. */
  interface Defaults {
    transports: TransportName[];
    path: string | null;
    wsTimeout: number;
    sseTimeout: number;
    sseIdleTimeout: number | null;
    pollTimeout: number | null;
    pollMinInterval: number;
    postTimeout: number;
    backoffMin: number;
    backoffMax: number;
    reconnection: boolean;
    reconnectionAttempts: number;
    probeInterval: number;
    rememberFailure: number;
    maxBatchBytes: number;
    maxQueue: number;
    ackTimeout: number;
    token: string | (() => string | null | undefined) | null;
    autoConnect: boolean;
    debug: boolean | DebugSink;
  }

  // ----- lifecycle events (from the client itself; their `id` is null) -----

  /** A transport took the session after none had it. */
  interface ConnectEvent {
    sid: string;
    transport: TransportName;
    resumed: boolean;
  }

  /** The session lost its transport. */
  interface DisconnectEvent {
    reason: string;
    /** `false` after `close()`, when superseded, or with `reconnection: false`. */
    willReconnect: boolean;
  }

  /** After a drop, a transport took the session again. */
  interface ReconnectEvent {
    attempts: number;
    sid: string;
    resumed: boolean;
  }

  /** Why the client changed transport, as its attach request told the server
   *  (docs/protocol.md, section 2). */
  type TransportChangeCode =
    | 'ws_blocked'
    | 'ws_timeout'
    | 'ws_remembered'
    | 'sse_held_back'
    | 'sse_failed'
    | 'polling_failed'
    | 'probe'
    | 'reconnect'
    | 'other';

  /** The transport in use changed. */
  interface TransportEvent {
    from: TransportName | null;
    to: TransportName;
    /** In words, e.g. `websocket blocked: closed 1006 before open`. */
    reason: string;
    /** The same as a code, when the client came from another transport (`null` otherwise). */
    code: TransportChangeCode | null;
  }

  /** Every transport failed. */
  interface ConnectErrorEvent {
    reasons: string[];
    /** The server's own words when it gave some, else the last reason. */
    message: string;
    attempts: number;
    /** ms until the next round; `null` when no retry follows. */
    retryIn: number | null;
  }

  /** `reconnectionAttempts` rounds failed in a row: the client stopped trying. */
  interface ReconnectFailedEvent {
    attempts: number;
  }

  // ----- server events every page meets -----

  /** The hello of every transport (docs/protocol.md, section 4). */
  interface SessionHello {
    sid: string;
    transport: TransportName;
    resumed: boolean;
    /** The highest send number the server handled in this session. */
    received: number;
    /** Largest POST body or WebSocket message, bytes. */
    max_body: number;
    /** Most envelopes in one batch. */
    max_batch: number;
    /** Longest silence on this transport, ms (absent on a WebSocket without heartbeats). */
    heartbeat?: number;
  }

  /** The session, or events of it, were lost. */
  interface GapEvent {
    reason: 'expired' | 'invalid_sid' | 'bad_cursor' | 'overflow';
    message?: string;
    /** How many events were lost (`overflow`). */
    lost?: number;
    /** The lost session's sid, when the client had one. */
    previous?: string;
    /** `true` when the client reports the gap itself (the server sent none). */
    client?: boolean;
  }

  /** Something sent could not be handled, said by the server or by the client. */
  interface ErrorEvent {
    error: string;
    /** The event that failed, when there is one. */
    event?: string;
    /** The application protocol's failure reason (`--upstream`). */
    reason?: 'unavailable' | 'timeout' | 'status' | 'malformed' | 'busy';
    /** An event too large to send: its size and the limit, in bytes. */
    bytes?: number;
    limit?: number;
  }

  /** The events the client emits itself; `emit` refuses their names. */
  interface LifecycleEvents {
    connect: ConnectEvent;
    disconnect: DisconnectEvent;
    reconnect: ReconnectEvent;
    transport: TransportEvent;
    connect_error: ConnectErrorEvent;
    reconnect_failed: ReconnectFailedEvent;
  }

  /** Every event whose data has a known shape. */
  interface KnownEvents extends LifecycleEvents {
    session: SessionHello;
    gap: GapEvent;
    error: ErrorEvent;
  }

  type LifecycleEventName = keyof LifecycleEvents;

  /** A listener: the event's data, and its cursor (`null` for lifecycle events). When the
   *  server's event asks for an answer, the first listener's return value (or what its promise
   *  resolves to; `null` for nothing, a throw or a rejection) answers it. */
  type Listener<T = any> = (this: Socket, data: T, id: Cursor | null) => unknown;

  /** Why an `emitWithAck` promise was rejected. */
  type AckFailure = 'timeout' | 'gap' | 'error' | 'refused' | 'closed';

  /** The error an `emitWithAck` promise is rejected with. */
  interface AckError extends Error {
    /** `timeout`: no answer in time; `gap`: the session the request went to was lost;
     *  `error`: the server could not handle the event (`data` says why); `refused`: never sent
     *  (queue full, too large); `closed`: `close()` was called first. */
    reason: AckFailure;
    /** With `error`: the server's error object, `{error, event, reason?}`. */
    data?: ErrorEvent;
  }

  interface AckOptions {
    /** ms to wait for the answer (`0`: no limit). Default: the socket's `ackTimeout`. */
    timeout?: number;
  }

  /** A listener of every event (`onAny`). */
  type AnyListener = (this: Socket, event: string, data: any, id: Cursor | null) => void;

  class Socket {
    /** Prefer `connect()`. Connects at once unless `autoConnect: false`. */
    constructor(url?: string, options?: Options);
    constructor(options?: Options);

    /** The session id (sid); `null` before the first connect. */
    readonly id: string | null;
    /** The transport holding the session, `null` while none does. */
    readonly transport: TransportName | null;
    /** `true` while a transport holds the session. */
    readonly connected: boolean;

    on<E extends keyof KnownEvents>(event: E, fn: Listener<KnownEvents[E]>): this;
    on(event: string, fn: Listener): this;
    once<E extends keyof KnownEvents>(event: E, fn: Listener<KnownEvents[E]>): this;
    once(event: string, fn: Listener): this;
    /** Without `fn`, every listener of `event`; without either, every listener. */
    off<E extends keyof KnownEvents>(event: E, fn?: Listener<KnownEvents[E]>): this;
    off(event?: string, fn?: Listener): this;
    /** Every event, server or lifecycle (and debugging traces named `_...`). */
    onAny(fn: AnyListener): this;
    offAny(fn?: AnyListener): this;

    /** Sends an event; queued while disconnected and sent in order. Throws for a lifecycle
     *  event's name. */
    emit<E extends string>(event: E extends LifecycleEventName ? never : E, data?: unknown): this;
    /** Sends an event asking the server to answer; the promise resolves with the answer's data
     *  (the handler's return value, or the application's `ack` action), also when it comes after
     *  a resume or a fallback, and is rejected with an {@link AckError} otherwise. */
    emitWithAck<T = any, E extends string = string>(event: E extends LifecycleEventName ? never : E, data?: unknown, options?: AckOptions): Promise<T>;

    /** Connects, or resumes the same session after `close()`, a supersede or a give-up. */
    open(): this;
    /** Socket.IO's name of `open()`. */
    connect(): this;
    /** Ends the connection and everything the client started; keeps the sid and the queue. */
    close(): this;
    /** Socket.IO's name of `close()`. */
    disconnect(): this;
  }

  /** A new socket; connects at once unless `autoConnect: false`. */
  function connect(url?: string, options?: Options): Socket;
  function connect(options?: Options): Socket;

  /** Socket.IO's name of `connect`. */
  const io: typeof connect;

  const defaults: Defaults;

  /** `-1`, `0` or `1` for two cursors of one session; `null` when they cannot be compared. */
  function compareCursors(a: Cursor, b: Cursor): -1 | 0 | 1 | null;

  /** The length of a string in UTF-8 bytes, as the server's limits count it. */
  function utf8Bytes(text: string): number;

  /** The client's version string. */
  const version: string;
}

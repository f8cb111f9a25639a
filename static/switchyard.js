/*! switchyard.js: the browser client of switchyard (WebSocket, then SSE+POST, then long-polling).
 *
 * One dependency-free file, no build step.
 *
 *   Classic script:  <script src="/switchyard.js"></script>
 *                    const socket = switchyard.connect();
 *   ES module:       import { connect } from '/switchyard.mjs';   // a three-line wrapper
 *                    // or: import '/switchyard.js'; const { connect } = globalThis.switchyard;
 *   CommonJS:        const switchyard = require('./switchyard.js');
 *
 * API (modelled on Socket.IO's):
 *   const socket = switchyard.connect(url?, options?)
 *   socket.on(event, fn) / socket.once(event, fn) / socket.off(event, fn?) / socket.onAny(fn)
 *   socket.emit(event, data)        queued while disconnected, sent in order after the resume
 *   socket.close() / socket.open()
 *   socket.id                       the session id (sid), null before the first connect
 *   socket.transport                "websocket" | "sse" | "polling" | null
 *   socket.connected                true while a transport holds the session
 * Lifecycle events (emitted by the client, not the server):
 *   connect {sid, transport, resumed}    every time a transport takes the session after none had it
 *   disconnect {reason, willReconnect}   the session lost its transport
 *   reconnect {attempts, sid, resumed}   after a drop, a transport took the session again
 *   transport {from, to, reason}         the active transport changed (fallback, upgrade, first one)
 *   connect_error {reasons, attempts, retryIn}   every transport failed; the next try is in retryIn ms
 * Server events are passed on by name, including `session` and `gap` (the session was lost and a
 * fresh one started: the data says why). The server's `reconnect` event is a command, not passed
 * on: the client drops its transport and resumes at once.
 *
 * Why it is shaped so:
 * - Every event's `id` is a cursor; the client keeps the newest one it saw (of any kind, notices
 *   included) and resumes with `sid` + cursor, so nothing is lost or repeated across drops.
 *   Cursors look like `SID.N` / `SID.N~` and strictly increase; events at or before the newest
 *   cursor are dropped as duplicates (they arrive when a new transport replays what an old one
 *   had already delivered).
 * - SSE is read with fetch() and a stream parser rather than EventSource: EventSource cannot
 *   listen to every event name, reconnects on its own (two transports could then hold the
 *   session in turn), and hides whether the response headers ever arrived.
 * - A transport superseded by the server (WebSocket close 4000, a poll answered 409, an SSE
 *   stream ended because the client attached elsewhere) is never reconnected.
 */
(function (root, factory) {
  'use strict';
  var lib = factory();
  if (typeof module === 'object' && module && module.exports) module.exports = lib;
  if (root) root.switchyard = lib;
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  var DEFAULTS = {
    /** Transports to use, best first. */
    transports: ['websocket', 'sse', 'polling'],
    /** Where the gateway is mounted, e.g. '/realtime' (default: the url's path, or ''). */
    path: null,
    /** WebSocket: open and deliver the `session` event within this many ms, or fall back. */
    wsTimeout: 3000,
    /** SSE: the `session` event must arrive within this many ms, or the path holds streams back. */
    sseTimeout: 4000,
    /** SSE: a stream silent (not even a keep-alive) this long is taken as dead. */
    sseIdleTimeout: 45000,
    /** Polling: a poll unanswered this long is aborted (the server answers within 25 s). */
    pollTimeout: 40000,
    /** Reconnection delays: exponential from backoffMin to backoffMax, times 0.5..1 (jitter). */
    backoffMin: 500,
    backoffMax: 10000,
    /** While on a fallback, try WebSocket again about this often (ms; 0: never). */
    probeInterval: 30000,
    /** How long (ms) a WebSocket failure is remembered in sessionStorage for this origin. */
    rememberFailure: 10 * 60 * 1000,
    /** Largest POST body the client builds, in bytes (the server's default limit is 65,536). */
    maxPostBytes: 60000,
    /** With a gateway run with --auth-secret: the JWT that opens a session (`?token=`), or a
     *  function returning it (called for every attach, so it can be refreshed). */
    token: null,
    /** Connect at once (otherwise call socket.open()). */
    autoConnect: true,
  };

  var LIFECYCLE = { connect: 1, connect_error: 1, disconnect: 1, reconnect: 1, transport: 1 };

  // ----- cursors --------------------------------------------------------------------------

  function parseCursor(id) {
    var m = typeof id === 'string' ? /^(.+)\.(\d+)(~?)$/.exec(id) : null;
    return m ? { sid: m[1], n: Number(m[2]), notice: m[3] === '~' } : null;
  }

  /** -1, 0 or 1 for cursors of one session; null when they cannot be compared. */
  function compareCursors(a, b) {
    var x = parseCursor(a);
    var y = parseCursor(b);
    if (!x || !y || x.sid !== y.sid) return null;
    if (x.n !== y.n) return x.n < y.n ? -1 : 1;
    if (x.notice !== y.notice) return x.notice ? 1 : -1;
    return 0;
  }

  // ----- helpers --------------------------------------------------------------------------

  function query(params) {
    var parts = [];
    for (var k in params) {
      if (params[k] != null) parts.push(encodeURIComponent(k) + '=' + encodeURIComponent(params[k]));
    }
    return parts.length ? '?' + parts.join('&') : '';
  }

  function storage() {
    try {
      return typeof sessionStorage !== 'undefined' ? sessionStorage : null;
    } catch (e) {
      return null; // storage disabled
    }
  }

  // ----- transports -----------------------------------------------------------------------
  //
  // Each transport gets `hooks` from the socket: onSession(tr, env) for the session hello,
  // onEvent(tr, env) for every later event, onDrop(tr, info) when it ends after the hello.
  // open() returns a promise that resolves after the hello and rejects with a reason string
  // when the transport fails before it. close() ends it without calling onDrop.

  function WsTransport(socket, hooks, resume) {
    this.name = 'websocket';
    this.socket = socket;
    this.hooks = hooks;
    this.resume = resume;
    this.ws = null;
    this.attached = false;
    this.closed = false;
  }

  WsTransport.prototype.open = function () {
    var self = this;
    var opts = this.socket.options;
    return new Promise(function (resolve, reject) {
      var opened = false;
      var settled = false;
      function fail(reason) {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        self.close();
        reject(reason);
      }
      var ws;
      try {
        ws = new WebSocket(self.socket._url('ws', self.resume));
      } catch (e) {
        reject('websocket blocked: ' + e.message);
        return;
      }
      self.ws = ws;
      var timer = setTimeout(function () {
        fail('websocket blocked: no session event within ' + opts.wsTimeout + ' ms');
      }, opts.wsTimeout);
      ws.onopen = function () {
        opened = true;
      };
      ws.onmessage = function (msg) {
        if (self.closed) return;
        var envs;
        try {
          envs = JSON.parse(msg.data);
        } catch (e) {
          return;
        }
        if (!Array.isArray(envs)) envs = [envs];
        for (var i = 0; i < envs.length && !self.closed; i++) {
          var env = envs[i];
          if (!self.attached) {
            if (env.event !== 'session') continue;
            self.attached = true;
            settled = true;
            clearTimeout(timer);
            self.hooks.onSession(self, env);
            resolve();
          } else {
            self.hooks.onEvent(self, env);
          }
        }
      };
      ws.onclose = function (e) {
        if (self.closed) return;
        if (!self.attached) {
          fail('websocket blocked: closed ' + e.code + ' before ' + (opened ? 'session' : 'open'));
          return;
        }
        self.closed = true;
        self.hooks.onDrop(self, {
          reason: 'websocket closed ' + e.code + (e.reason ? ' ' + e.reason : ''),
          superseded: e.code === 4000,
        });
      };
      ws.onerror = function () {}; // a close event follows
    });
  };

  WsTransport.prototype.ready = function () {
    return !this.closed && this.ws && this.ws.readyState === 1;
  };

  WsTransport.prototype.send = function (envs) {
    this.ws.send(JSON.stringify(envs.length === 1 ? envs[0] : envs));
    return Promise.resolve({ ok: true });
  };

  WsTransport.prototype.close = function () {
    this.closed = true;
    if (this.ws) {
      try {
        this.ws.close(1000);
      } catch (e) {
        /* already closed */
      }
    }
  };

  /** The base of SSE and polling: events up over POST. */
  function post(socket, envs) {
    var body = JSON.stringify(envs);
    return fetch(socket._url('sse', { sid: socket.id }), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: body,
      cache: 'no-store',
    }).then(
      function (res) {
        return res.text().then(function (text) {
          return { ok: res.status === 202, status: res.status, body: text };
        });
      },
      function (err) {
        return { ok: false, status: 0, body: String(err) };
      }
    );
  }

  function SseTransport(socket, hooks, resume) {
    this.name = 'sse';
    this.socket = socket;
    this.hooks = hooks;
    this.resume = resume;
    this.abort = null;
    this.attached = false;
    this.closed = false;
  }

  SseTransport.prototype.open = function () {
    var self = this;
    var opts = this.socket.options;
    var controller = new AbortController();
    this.abort = controller;
    return new Promise(function (resolve, reject) {
      var settled = false;
      var idle = null;
      function fail(reason) {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        self.close();
        reject(reason);
      }
      function drop(reason) {
        clearTimeout(idle);
        if (self.closed) return;
        self.closed = true;
        controller.abort();
        self.hooks.onDrop(self, { reason: reason, superseded: false });
      }
      function alive() {
        clearTimeout(idle);
        if (self.attached && !self.closed) {
          idle = setTimeout(function () {
            drop('sse stream silent for ' + opts.sseIdleTimeout + ' ms');
          }, opts.sseIdleTimeout);
        }
      }
      var timer = setTimeout(function () {
        fail('sse held back: no session event within ' + opts.sseTimeout + ' ms');
      }, opts.sseTimeout);

      fetch(self.socket._url('sse', self.resume), {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: controller.signal,
      })
        .then(function (res) {
          if (res.status !== 200 || !res.body) {
            fail('sse failed: HTTP ' + res.status);
            return;
          }
          var type = res.headers.get('content-type') || '';
          if (type.indexOf('text/event-stream') !== 0) {
            fail('sse failed: content type ' + type);
            return;
          }
          var reader = res.body.getReader();
          var decoder = new TextDecoder();
          var parser = sseParser(function (env) {
            if (self.closed) return;
            if (!self.attached) {
              if (env.event !== 'session') return;
              self.attached = true;
              settled = true;
              clearTimeout(timer);
              alive();
              self.hooks.onSession(self, env);
              resolve();
            } else {
              self.hooks.onEvent(self, env);
            }
          });
          function pump() {
            return reader.read().then(function (chunk) {
              if (self.closed) return;
              if (chunk.done) {
                if (!self.attached) fail('sse failed: stream ended before session');
                else drop('sse stream ended');
                return;
              }
              alive();
              parser(decoder.decode(chunk.value, { stream: true }));
              return pump();
            });
          }
          return pump();
        })
        .catch(function (err) {
          if (self.closed) return;
          if (!self.attached) fail('sse failed: ' + (err && err.message ? err.message : err));
          else drop('sse stream broke: ' + (err && err.message ? err.message : err));
        });
    });
  };

  /** An incremental text/event-stream parser: feed it text, it calls `emit` per event. */
  function sseParser(emit) {
    var buffer = '';
    var data = [];
    var event = '';
    var id = null;
    return function (text) {
      buffer += text;
      var lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an incomplete line, kept for the next chunk
      // A '\r' at the very end may be the first half of '\r\n': keep it too.
      for (var i = 0; i < lines.length; i++) {
        var line = lines[i];
        if (line === '') {
          if (data.length) {
            var payload;
            try {
              payload = JSON.parse(data.join('\n'));
            } catch (e) {
              payload = data.join('\n');
            }
            emit({ event: event || 'message', data: payload, id: id });
          }
          data = [];
          event = '';
          continue;
        }
        if (line.charAt(0) === ':') continue;
        var colon = line.indexOf(':');
        var field = colon < 0 ? line : line.slice(0, colon);
        var value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.charAt(0) === ' ') value = value.slice(1);
        if (field === 'data') data.push(value);
        else if (field === 'event') event = value;
        else if (field === 'id') id = value;
      }
    };
  }

  SseTransport.prototype.ready = function () {
    return this.attached && !this.closed;
  };

  SseTransport.prototype.send = function (envs) {
    return post(this.socket, envs);
  };

  SseTransport.prototype.close = function () {
    this.closed = true;
    if (this.abort) this.abort.abort();
  };

  function PollTransport(socket, hooks, resume) {
    this.name = 'polling';
    this.socket = socket;
    this.hooks = hooks;
    this.resume = resume;
    this.abort = null;
    this.attached = false;
    this.closed = false;
  }

  PollTransport.prototype.open = function () {
    var self = this;
    var opts = this.socket.options;
    return new Promise(function (resolve, reject) {
      var settled = false;
      function fail(reason) {
        if (settled) return;
        settled = true;
        self.close();
        reject(reason);
      }
      function drop(reason, superseded) {
        if (self.closed) return;
        self.closed = true;
        self.hooks.onDrop(self, { reason: reason, superseded: superseded });
      }
      function once(params, limit) {
        var controller = new AbortController();
        self.abort = controller;
        var timer = setTimeout(function () {
          controller.abort();
        }, limit);
        return fetch(self.socket._url('poll', params), { cache: 'no-store', signal: controller.signal }).then(
          function (res) {
            return res.text().then(function (text) {
              clearTimeout(timer);
              return { status: res.status, text: text };
            });
          },
          function (err) {
            clearTimeout(timer);
            throw err;
          }
        );
      }
      function loop(params, first) {
        if (self.closed) return;
        once(params, first ? opts.sseTimeout : opts.pollTimeout).then(
          function (answer) {
            if (self.closed) return;
            if (answer.status === 409) {
              if (!self.attached) fail('polling failed: superseded before session');
              else drop('poll superseded', true);
              return;
            }
            var envs = null;
            try {
              envs = answer.status === 200 ? JSON.parse(answer.text) : null;
            } catch (e) {
              envs = null;
            }
            if (!Array.isArray(envs)) {
              if (!self.attached) fail('polling failed: HTTP ' + answer.status);
              else drop('poll failed: HTTP ' + answer.status, false);
              return;
            }
            for (var i = 0; i < envs.length && !self.closed; i++) {
              var env = envs[i];
              if (!self.attached) {
                if (env.event !== 'session') continue;
                self.attached = true;
                settled = true;
                self.hooks.onSession(self, env);
                resolve();
              } else {
                self.hooks.onEvent(self, env);
              }
            }
            if (!self.attached) {
              fail('polling failed: no session event');
              return;
            }
            // Continue from the socket's newest cursor: what this poll handed over is delivered.
            // While a WebSocket probe is out, wait for its verdict: a new poll would attach and
            // take the session back from the probe (newest wins).
            var cont = function () {
              loop({ sid: self.socket.id, last_event_id: self.socket._cursor }, false);
            };
            if (self.socket._probe) self.socket._probeWaiters.push(cont);
            else cont();
          },
          function (err) {
            if (self.closed) return;
            var why = err && err.name === 'AbortError' ? 'no answer in time' : (err && err.message) || String(err);
            if (!self.attached) fail('polling failed: ' + why);
            else drop('poll failed: ' + why, false);
          }
        );
      }
      loop(self.resume, true);
    });
  };

  PollTransport.prototype.ready = function () {
    return this.attached && !this.closed;
  };

  PollTransport.prototype.send = function (envs) {
    return post(this.socket, envs);
  };

  PollTransport.prototype.close = function () {
    this.closed = true;
    if (this.abort) this.abort.abort();
  };

  var TRANSPORTS = { websocket: WsTransport, sse: SseTransport, polling: PollTransport };

  // ----- the socket -----------------------------------------------------------------------

  function Socket(url, options) {
    if (url && typeof url === 'object') {
      options = url;
      url = undefined;
    }
    var opts = {};
    var k;
    for (k in DEFAULTS) opts[k] = DEFAULTS[k];
    for (k in options || {}) if (options[k] !== undefined && options[k] !== null) opts[k] = options[k];
    opts.transports = (opts.transports || []).filter(function (t) {
      return TRANSPORTS[t];
    });
    if (!opts.transports.length) throw new Error('switchyard: no usable transport in options.transports');
    this.options = opts;

    var here = typeof location !== 'undefined' ? location.href : 'http://127.0.0.1:3000/';
    var base = new URL(url || '/', here);
    var prefix = opts.path != null ? opts.path : url ? base.pathname : '';
    this._origin = base.origin;
    this._prefix = String(prefix).replace(/\/+$/, '');
    if (this._prefix && this._prefix.charAt(0) !== '/') this._prefix = '/' + this._prefix;

    this.id = null;
    this.transport = null;
    this.connected = false;
    this._cursor = null;
    this._handlers = {};
    this._any = [];
    this._outbox = []; // envelopes to send, each numbered with `seq`
    this._unacked = []; // sent, not yet known to be handled (a POST's 202 or a hello's `received` says so)
    this._sendSeq = 0; // the last `seq` given out in this session
    this._sending = false;
    this._current = null; // the transport holding the session
    this._probe = null; // a WebSocket trying to take over from a fallback
    this._dropWhileProbing = null; // the current transport ended while a probe was out
    this._probeWaiters = []; // run when the probe succeeds or fails (a paused poll loop)
    this._cycle = 0; // bumped to abandon a running connection cycle
    this._timers = {};
    this._attempts = 0; // failed cycles since the last connect
    this._everConnected = false;
    this._closed = true;

    if (opts.autoConnect) this.open();
  }

  Socket.prototype._url = function (route, params) {
    var origin = this._origin;
    if (route === 'ws') origin = origin.replace(/^http/, 'ws');
    return origin + this._prefix + '/' + route + query(params || {});
  };

  Socket.prototype._storageKey = function () {
    return 'switchyard:websocket-failed:' + this._origin + this._prefix;
  };

  Socket.prototype._wsRemembered = function () {
    var store = storage();
    var at = store ? Number(store.getItem(this._storageKey())) : 0;
    return at > 0 && Date.now() - at < this.options.rememberFailure;
  };

  Socket.prototype._rememberWs = function (failed) {
    var store = storage();
    if (!store) return;
    try {
      if (failed) store.setItem(this._storageKey(), String(Date.now()));
      else store.removeItem(this._storageKey());
    } catch (e) {
      /* quota or privacy mode: just don't remember */
    }
  };

  // --- events -----------------------------------------------------------------------------

  Socket.prototype.on = function (event, fn) {
    (this._handlers[event] = this._handlers[event] || []).push(fn);
    return this;
  };

  Socket.prototype.once = function (event, fn) {
    var self = this;
    function wrapper(data, id) {
      self.off(event, wrapper);
      fn.call(self, data, id);
    }
    wrapper.original = fn;
    return this.on(event, wrapper);
  };

  Socket.prototype.off = function (event, fn) {
    if (event === undefined) {
      this._handlers = {};
      return this;
    }
    if (!fn) {
      delete this._handlers[event];
      return this;
    }
    var list = this._handlers[event] || [];
    this._handlers[event] = list.filter(function (h) {
      return h !== fn && h.original !== fn;
    });
    return this;
  };

  /** fn(event, data, id) for every event, server or lifecycle (lifecycle ones have no id). */
  Socket.prototype.onAny = function (fn) {
    this._any.push(fn);
    return this;
  };

  Socket.prototype.offAny = function (fn) {
    this._any = fn
      ? this._any.filter(function (h) {
          return h !== fn;
        })
      : [];
    return this;
  };

  Socket.prototype._dispatch = function (event, data, id) {
    var i;
    var any = this._any.slice();
    for (i = 0; i < any.length; i++) this._call(any[i], [event, data, id]);
    var list = (this._handlers[event] || []).slice();
    for (i = 0; i < list.length; i++) this._call(list[i], [data, id]);
  };

  Socket.prototype._call = function (fn, args) {
    try {
      fn.apply(this, args);
    } catch (e) {
      // A failing handler must not break delivery to the others.
      setTimeout(function () {
        throw e;
      });
    }
  };

  // --- sending ----------------------------------------------------------------------------

  Socket.prototype.emit = function (event, data) {
    if (LIFECYCLE[event]) throw new Error('switchyard: `' + event + '` is a reserved event name');
    this._outbox.push({ event: String(event), data: data === undefined ? null : data, seq: ++this._sendSeq });
    this._flush();
    return this;
  };

  /** Sends what is queued over the current transport, in order, one batch at a time. */
  Socket.prototype._flush = function () {
    var self = this;
    var tr = this._current;
    // A POST still out (perhaps over the transport just replaced) finishes first: order.
    if (this._sending || !tr || !tr.ready() || !this._outbox.length) return;
    var batch = this._takeBatch(tr.name === 'websocket' ? Infinity : this.options.maxPostBytes);
    this._unacked = this._unacked.concat(batch);
    if (this._unacked.length > 1000) this._unacked.splice(0, this._unacked.length - 1000);
    if (tr.name === 'websocket') {
      try {
        tr.send(batch);
      } catch (e) {
        /* the socket is closing: the next hello says what to send again */
      }
      return;
    }
    this._sending = true;
    tr.send(batch).then(function (answer) {
      self._sending = false;
      self._unacked = self._unacked.filter(function (e) {
        return batch.indexOf(e) < 0;
      });
      if (answer.ok) {
        self._flush();
        return;
      }
      if (answer.status === 0 || answer.status >= 500 || answer.status === 429) {
        // The network or a proxy failed; the events may or may not have arrived. Send them
        // again (after the transport recovers, if it broke too): the server skips numbers it
        // already handled.
        self._outbox = batch.concat(self._outbox);
        self._later('flush', self._backoff(1), function () {
          self._flush();
        });
      } else if (answer.status === 404) {
        // The session expired: reconnect (a fresh session with a `gap` notice), then resend.
        self._outbox = batch.concat(self._outbox);
        if (self._current === tr) self._restart('session expired (POST 404)');
      } else {
        self._dispatch('error', { error: 'send refused: HTTP ' + answer.status, body: answer.body, events: batch }, null);
        self._flush();
      }
    });
  };

  Socket.prototype._takeBatch = function (maxBytes) {
    var size = 2;
    var n = 0;
    // The server takes at most 100 envelopes per batch.
    while (n < this._outbox.length && n < 100) {
      var s = JSON.stringify(this._outbox[n]).length + 1;
      if (n > 0 && size + s > maxBytes) break;
      size += s;
      n++;
    }
    return this._outbox.splice(0, n);
  };

  // --- connecting -------------------------------------------------------------------------

  Socket.prototype.open = function () {
    if (!this._closed) return this;
    this._closed = false;
    this._attempts = 0;
    this._connectCycle('connecting');
    return this;
  };

  Socket.prototype.close = function () {
    if (this._closed) return this;
    this._closed = true;
    this._cycle++;
    for (var k in this._timers) clearTimeout(this._timers[k]);
    this._timers = {};
    if (this._probe) this._probe.close();
    this._probe = null;
    if (this._opening) this._opening.close();
    this._opening = null;
    var had = this._current;
    if (had) had.close();
    this._current = null;
    var wasConnected = this.connected;
    this.connected = false;
    if (wasConnected) this._dispatch('disconnect', { reason: 'client closed', willReconnect: false }, null);
    return this;
  };

  Socket.prototype._later = function (name, ms, fn) {
    var self = this;
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(function () {
      delete self._timers[name];
      if (!self._closed) fn();
    }, ms);
  };

  Socket.prototype._backoff = function (attempt) {
    var o = this.options;
    var base = Math.min(o.backoffMax, o.backoffMin * Math.pow(2, Math.max(0, attempt - 1)));
    return Math.round(base * (0.5 + Math.random() * 0.5));
  };

  /** The query of an attaching request: where to resume, and the token if there is one. */
  Socket.prototype._resume = function () {
    var params = this.id ? { sid: this.id, last_event_id: this._cursor } : {};
    var token = typeof this.options.token === 'function' ? this.options.token() : this.options.token;
    if (token) params.token = token;
    return params;
  };

  Socket.prototype._hooks = function () {
    var self = this;
    return {
      onSession: function (tr, env) {
        self._onSession(tr, env);
      },
      onEvent: function (tr, env) {
        if (tr === self._current) self._receive(env);
      },
      onDrop: function (tr, info) {
        self._onDrop(tr, info);
      },
    };
  };

  /** Tries the transports best first; the first to deliver its `session` event takes over. */
  Socket.prototype._connectCycle = function (why) {
    var self = this;
    var cycle = ++this._cycle;
    var order = this.options.transports.slice();
    var reasons = [];
    if (order[0] === 'websocket' && order.length > 1 && this._wsRemembered()) {
      order.shift();
      reasons.push('websocket skipped: it failed on this origin recently');
    }
    var i = 0;
    (function next() {
      if (cycle !== self._cycle || self._closed) return;
      if (i >= order.length) {
        self._attempts++;
        var delay = self._backoff(self._attempts);
        self._dispatch('connect_error', { reasons: reasons, attempts: self._attempts, retryIn: delay }, null);
        self._later('reconnect', delay, function () {
          self._connectCycle('retry');
        });
        return;
      }
      var name = order[i++];
      var tr = new TRANSPORTS[name](self, self._hooks(), self._resume());
      tr.cycle = cycle;
      tr.reasons = reasons;
      tr.firstTried = order[0];
      self._opening = tr;
      tr.open().then(
        function () {
          if (name !== 'websocket' && reasons.some(isWsBlock)) self._rememberWs(true);
          if (name === 'websocket') self._rememberWs(false);
        },
        function (reason) {
          if (cycle !== self._cycle) return;
          reasons.push(reason);
          next();
        }
      );
    })();
    void why;
  };

  function isWsBlock(reason) {
    return reason.indexOf('websocket blocked') === 0;
  }

  /** Lifecycle-ish trace for debugging: only to onAny listeners, as `_retry` etc. */
  Socket.prototype._dispatchTrace = function (what, data) {
    var any = this._any.slice();
    for (var i = 0; i < any.length; i++) this._call(any[i], ['_' + what, data, null]);
  };

  Socket.prototype._onSession = function (tr, env) {
    var sid = env.data && env.data.sid;
    if (tr === this._probe) {
      // The probe took the session (the server closes the old transport: newest wins).
      var old = this._current;
      this._probe = null;
      this._dropWhileProbing = null;
      if (old) old.close();
      this._current = tr;
      this._acceptSession(env, sid);
      this._rememberWs(false);
      this._setTransport(tr.name, 'upgrade: ' + tr.name + ' works again');
      this._settleProbe();
      this._flush();
      return;
    }
    if (tr.cycle !== this._cycle || this._closed || this._current) {
      tr.close(); // a leftover of an abandoned cycle
      return;
    }
    this._opening = null;
    this._current = tr;
    var wasConnected = this._everConnected;
    var attempts = this._attempts;
    this._attempts = 0;
    this._acceptSession(env, sid);
    this.connected = true;
    this._everConnected = true;
    var reason = tr.reasons.length ? tr.reasons.join('; ') : wasConnected ? 'reconnected' : 'connected';
    this._setTransport(tr.name, reason, tr.firstTried);
    this._dispatch('connect', { sid: this.id, transport: tr.name, resumed: !!(env.data && env.data.resumed) }, null);
    if (wasConnected) {
      this._dispatch('reconnect', { attempts: attempts, sid: this.id, resumed: !!(env.data && env.data.resumed) }, null);
    }
    this._flush();
    this._scheduleProbe();
  };

  Socket.prototype._acceptSession = function (env, sid) {
    var received = env.data && typeof env.data.received === 'number' ? env.data.received : null;
    if (sid && sid !== this.id) {
      var fresh = this.id !== null;
      this.id = sid;
      this._cursor = env.id || null;
      // Sends are numbered per session. Those already sent to a lost session may or may not
      // have been handled there: they are not sent again. What was never sent goes to the new
      // session, renumbered.
      if (fresh) this._unacked = [];
      this._sendSeq = 0;
      for (var i = 0; i < this._outbox.length; i++) this._outbox[i].seq = ++this._sendSeq;
    } else {
      if (env.id && (this._cursor == null || compareCursors(env.id, this._cursor) > 0)) this._cursor = env.id;
      if (received !== null) {
        // The hello says which sends were handled: send the rest again, in order.
        var again = this._unacked.filter(function (e) {
          return e.seq > received;
        });
        this._unacked = [];
        if (again.length) {
          this._outbox = again.concat(
            this._outbox.filter(function (e) {
              return again.indexOf(e) < 0;
            })
          );
        }
      }
    }
    this._dispatch('session', env.data, env.id);
  };

  Socket.prototype._setTransport = function (name, reason, attempted) {
    var from = this.transport;
    if (from === name) return;
    this.transport = name;
    this._dispatch('transport', { from: from || (attempted !== name ? attempted : null) || null, to: name, reason: reason }, null);
  };

  /** One server event from the current transport: dedupe by cursor, then pass it on. */
  Socket.prototype._receive = function (env) {
    if (env.id != null) {
      var c = parseCursor(env.id);
      if (c && this.id && c.sid !== this.id) return; // another session's leftovers
      if (this._cursor != null) {
        var order = compareCursors(env.id, this._cursor);
        if (order !== null && order <= 0) return; // already delivered
      }
      this._cursor = env.id;
    }
    if (env.event === 'session') {
      // A poll that the server took as a new attachment starts with a hello of its own (and a
      // fresh session, if the old one expired).
      this._acceptSession(env, env.data && env.data.sid);
      return;
    }
    if (env.event === 'reconnect') {
      // The server asks to move (it is restarting): resume at once, elsewhere if need be.
      this._restart('server asked to reconnect');
      return;
    }
    this._dispatch(env.event, env.data, env.id);
  };

  Socket.prototype._onDrop = function (tr, info) {
    if (tr === this._probe) return; // a probe that had taken over is the current one
    if (tr !== this._current) return;
    if (this._probe) {
      // Probably the probe's own attach superseding this one: wait for its verdict.
      this._dropWhileProbing = info;
      return;
    }
    if (info.superseded) {
      // Another transport holds the session now: never fight it for the session.
      this._current = null;
      this.connected = false;
      this._dispatch('disconnect', { reason: 'superseded: ' + info.reason, willReconnect: false }, null);
      return;
    }
    this._restart(info.reason, true);
  };

  /** Drops the current transport and resumes, after a backoff delay when `delay` is set. */
  Socket.prototype._restart = function (reason, delay) {
    var self = this;
    var tr = this._current;
    this._current = null;
    if (tr) tr.close();
    if (this._probe) this._probe.close();
    this._probe = null;
    this._probeWaiters = [];
    this._dropWhileProbing = null;
    clearTimeout(this._timers.probe);
    this._cycle++;
    var wasConnected = this.connected;
    this.connected = false;
    if (wasConnected) this._dispatch('disconnect', { reason: reason, willReconnect: true }, null);
    this._attempts++;
    this._later('reconnect', delay ? this._backoff(this._attempts) : 0, function () {
      self._connectCycle(reason);
    });
  };

  // --- moving back up ---------------------------------------------------------------------

  Socket.prototype._scheduleProbe = function () {
    var self = this;
    var o = this.options;
    if (!o.probeInterval || !this._current || this._current.name === o.transports[0]) return;
    if (o.transports[0] !== 'websocket') return;
    this._later('probe', Math.round(o.probeInterval * (0.75 + Math.random() * 0.5)), function () {
      self._runProbe();
    });
  };

  Socket.prototype._runProbe = function () {
    var self = this;
    if (!this.connected || !this._current || this._probe) return;
    var tr = new WsTransport(this, this._hooks(), this._resume());
    this._probe = tr;
    tr.open().then(
      function () {},
      function (reason) {
        if (self._probe !== tr) return;
        self._probe = null;
        self._dispatchTrace('probe', { reason: reason });
        self._settleProbe();
        var dropped = self._dropWhileProbing;
        self._dropWhileProbing = null;
        if (dropped && self._current) {
          self._onDrop(self._current, dropped);
          return;
        }
        self._scheduleProbe();
      }
    );
  };

  Socket.prototype._settleProbe = function () {
    var waiters = this._probeWaiters;
    this._probeWaiters = [];
    for (var i = 0; i < waiters.length; i++) waiters[i]();
  };

  // ----- exports --------------------------------------------------------------------------

  function connect(url, options) {
    return new Socket(url, options);
  }

  return {
    connect: connect,
    Socket: Socket,
    defaults: DEFAULTS,
    compareCursors: compareCursors,
    version: '1',
  };
});

/*! switchyard.js: the browser client of switchyard (WebSocket, then SSE+POST, then long-polling).
 *
 * One dependency-free file, no build step. docs: docs/client.md; types: switchyard.d.ts.
 *
 *   Classic script:  <script src="/switchyard.js"></script>
 *                    const socket = switchyard.connect();        // or switchyard.io()
 *   ES module:       import { connect } from '/switchyard.mjs';   // a three-line wrapper
 *                    // or: import '/switchyard.js'; const { connect } = globalThis.switchyard;
 *   CommonJS:        const switchyard = require('./switchyard.js');
 *
 * API (modelled on Socket.IO's, whose names are accepted beside ours where they mean the same):
 *   const socket = switchyard.connect(url?, options?)          alias: switchyard.io()
 *   socket.on(event, fn) / socket.once(event, fn) / socket.off(event, fn?) / socket.onAny(fn)
 *   socket.emit(event, data)        queued while disconnected (at most maxQueue), sent in order
 *   socket.emitWithAck(event, data, {timeout}?)   the same, and a promise of the server's answer
 *   socket.on(event, fn)            fn's return value (or resolved promise) answers a server request
 *   socket.close() / socket.open()  aliases: socket.disconnect() / socket.connect()
 *   socket.id                       the session id (sid), null before the first connect
 *   socket.transport                "websocket" | "sse" | "polling" | null
 *   socket.connected                true while a transport holds the session
 * Lifecycle events (emitted by the client, not the server):
 *   connect {sid, transport, resumed}    every time a transport takes the session after none had it
 *   disconnect {reason, willReconnect}   the session lost its transport
 *   reconnect {attempts, sid, resumed}   after a drop, a transport took the session again
 *   transport {from, to, reason, code}   the active transport changed (fallback, upgrade, first one)
 *   connect_error {reasons, message, attempts, retryIn}   every transport failed; next try in retryIn ms
 *   reconnect_failed {attempts}          reconnectionAttempts ran out: the client stopped trying
 * Server events are passed on by name, including `session`, `error` and `gap` (the session was
 * lost and a fresh one started: the data says why; the client sends its own `gap` when it had to
 * start over and the server said nothing). The server's `reconnect` event is a command, not
 * passed on: the client drops its transport and resumes at once. `heartbeat` frames only prove
 * the path is alive and are not passed on either.
 *
 * Why it is shaped so:
 * - Every event's `id` is a cursor; the client keeps the newest one it saw (of any kind, notices
 *   included) and resumes with `sid` + cursor, so nothing is lost or repeated across drops.
 *   Cursors look like `SID.N` / `SID.N~` and strictly increase; events at or before the newest
 *   cursor are dropped as duplicates (they arrive when a new transport replays what an old one
 *   had already delivered). A `gap` shares its cursor with the `session` hello before it.
 * - A `session` hello naming another sid is adopted wherever it comes from (a WebSocket, a
 *   stream, a poll, a probe): the old session is gone, and sending or polling with its sid
 *   again would only make the server create session after session.
 * - SSE is read with fetch() and a stream parser rather than EventSource: EventSource cannot
 *   listen to every event name, reconnects on its own (two transports could then hold the
 *   session in turn), and hides whether the response headers ever arrived.
 * - A transport superseded by the server (WebSocket close 4000, a poll answered 409, an SSE
 *   stream ended because the client attached elsewhere) is never reconnected by itself.
 * - Every path is watched: the hello says how long the server stays silent at most on this
 *   transport (`heartbeat`: WebSocket heartbeat frames, SSE keep-alives, the poll timeout), and
 *   a path silent for about two of those is dropped and resumed. Browsers cannot see WebSocket
 *   protocol pings, hence the application-level heartbeat.
 * - Sends are measured in UTF-8 bytes against the limits the hello announces, so a batch never
 *   exceeds what the server takes; one event too large on its own is refused here with an
 *   `error` event rather than resent forever.
 * - Everything the client starts (timers, requests, sockets, page listeners) is tracked, so
 *   close() leaves nothing running.
 * - Acks ride on the session like any event: a request is a numbered send with `ack: N`, its
 *   answer an event of the session (with a cursor), so it arrives once across drops, resumes
 *   and fallbacks. A request already sent to a session that was lost can never be answered:
 *   its promise is rejected (`gap`) when the client adopts the fresh session.
 */
(function (root, factory) {
  'use strict';
  var lib = factory(root);
  if (typeof module === 'object' && module && module.exports) module.exports = lib;
  if (root) root.switchyard = lib;
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this, function (root) {
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
    /** SSE: a stream silent this long (ms) is taken as dead (default: from the hello, 2 keep-alives). */
    sseIdleTimeout: null,
    /** Polling: a poll unanswered this long (ms) is aborted (default: from the hello). */
    pollTimeout: null,
    /** Polling: polls start at least this many ms apart when the server answers at once. */
    pollMinInterval: 100,
    /** A POST unanswered this long (ms) is aborted and sent again. */
    postTimeout: 10000,
    /** Reconnection delays: exponential from backoffMin to backoffMax, times 0.5..1 (jitter). */
    backoffMin: 500,
    backoffMax: 10000,
    /** Reconnect after a drop or a failed round (false: stay down until open() is called). */
    reconnection: true,
    /** Failed rounds in a row after which the client stops (`reconnect_failed`). */
    reconnectionAttempts: Infinity,
    /** While on a fallback, try WebSocket again about this often (ms; 0: never). */
    probeInterval: 30000,
    /** How long (ms) a WebSocket failure is remembered in sessionStorage for this origin. */
    rememberFailure: 10 * 60 * 1000,
    /** Largest batch the client builds, in UTF-8 bytes (the hello's `max_body` lowers it). */
    maxBatchBytes: 60000,
    /** Most events waiting to be sent; emit() beyond it is refused with an `error` event. */
    maxQueue: 1000,
    /** emitWithAck(): how long (ms) to wait for the answer unless the call says (0: forever). */
    ackTimeout: 30000,
    /** With a gateway run with --auth-secret: the JWT that opens a session (`?token=`), or a
     *  function returning it (called for every attach, so it can be refreshed). */
    token: null,
    /** Connect at once (otherwise call socket.open()). */
    autoConnect: true,
    /** Log transport decisions: true (console.debug) or a function(message, details). */
    debug: false,
  };

  /** Socket.IO's option names, and ours they stand for. */
  var ALIASES = {
    reconnectionDelay: 'backoffMin',
    reconnectionDelayMax: 'backoffMax',
    maxPostBytes: 'maxBatchBytes',
  };

  var LIFECYCLE = { connect: 1, connect_error: 1, disconnect: 1, reconnect: 1, reconnect_failed: 1, transport: 1 };

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

  /** The length of a string in UTF-8 bytes (what the server's limits count). */
  function utf8Bytes(s) {
    var n = 0;
    for (var i = 0; i < s.length; i++) {
      var c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        n += 4;
        i++;
      } else n += 3;
    }
    return n;
  }

  /** The server's error text from a JSON error body (`{"error": "..."}`), if there is one. */
  function serverError(text) {
    try {
      var body = JSON.parse(text);
      return body && typeof body.error === 'string' ? body.error : null;
    } catch (e) {
      return null;
    }
  }

  /** How long a path may stay silent before it is taken as dead, from the hello's heartbeat. */
  function deadAfter(heartbeat) {
    return 2 * heartbeat + Math.min(heartbeat, 2000);
  }

  /** A fetch that is aborted after `ms` (or by the socket's close()), resolving to
   *  {status, text, headers} or rejecting with the reason. */
  function timedFetch(socket, url, init, ms) {
    var controller = new AbortController();
    init.signal = controller.signal;
    var timer = null;
    var entry = {
      abort: function () {
        clearTimeout(timer);
        controller.abort();
      },
    };
    socket._requests.push(entry);
    function done() {
      clearTimeout(timer);
      var i = socket._requests.indexOf(entry);
      if (i >= 0) socket._requests.splice(i, 1);
    }
    if (ms > 0) {
      timer = setTimeout(function () {
        entry.timedOut = true;
        controller.abort();
      }, ms);
    }
    var promise = fetch(url, init).then(
      function (res) {
        return res.text().then(function (text) {
          done();
          return { status: res.status, text: text, headers: res.headers };
        });
      },
      function (err) {
        done();
        throw entry.timedOut ? new Error('no answer in ' + ms + ' ms') : err;
      }
    );
    promise.entry = entry;
    return promise;
  }

  function errText(err) {
    return err && err.message ? err.message : String(err);
  }

  // ----- transports -----------------------------------------------------------------------
  //
  // Each transport gets `hooks` from the socket: onSession(tr, env) for the session hello,
  // onEvent(tr, env) for every later event, onDrop(tr, info) when it ends after the hello.
  // open() returns a promise that resolves after the hello and rejects with a reason string
  // when the transport fails before it. close() ends it (and every timer it set) without
  // calling onDrop. `heartbeat` is the hello's: the longest the server stays silent on it.

  var Base = {
    _timer: function (name, ms, fn) {
      var self = this;
      clearTimeout(this.timers[name]);
      this.timers[name] = setTimeout(function () {
        delete self.timers[name];
        if (!self.closed) fn();
      }, ms);
    },
    _clearTimers: function () {
      for (var k in this.timers) clearTimeout(this.timers[k]);
      this.timers = {};
    },
    /** Whether the path has been silent longer than its heartbeat allows (a tab that was
     *  frozen or hidden may not have run its timers). */
    stale: function (now) {
      return !!this.heartbeat && now - this.heard > this.silenceLimit();
    },
    _init: function (name, socket, hooks, resume) {
      this.name = name;
      this.socket = socket;
      this.hooks = hooks;
      this.resume = resume;
      this.attached = false;
      this.closed = false;
      this.timers = {};
      this.heartbeat = null;
      this.heard = Date.now();
      this.retryAfter = null;
    },
    /** Takes the hello's announcements. */
    _hello: function (env) {
      var hb = env.data && env.data.heartbeat;
      this.heartbeat = typeof hb === 'number' && hb > 0 ? hb : null;
    },
  };

  function mixin(proto) {
    for (var k in Base) proto[k] = Base[k];
  }

  function WsTransport(socket, hooks, resume) {
    this._init('websocket', socket, hooks, resume);
    this.ws = null;
  }
  mixin(WsTransport.prototype);

  WsTransport.prototype.silenceLimit = function () {
    return deadAfter(this.heartbeat);
  };

  WsTransport.prototype.open = function () {
    var self = this;
    var opts = this.socket.options;
    return new Promise(function (resolve, reject) {
      var opened = false;
      var settled = false;
      function fail(reason) {
        if (settled) return;
        settled = true;
        self.close();
        reject(reason);
      }
      function drop(info) {
        if (self.closed) return;
        self.close();
        self.hooks.onDrop(self, info);
      }
      // Any frame proves the path alive; the server sends one at least every heartbeat.
      function heard() {
        self.heard = Date.now();
        if (self.attached && self.heartbeat) {
          self._timer('silence', self.silenceLimit(), function () {
            drop({ reason: 'websocket silent for ' + self.silenceLimit() + ' ms', superseded: false });
          });
        }
      }
      var params = {};
      for (var k in self.resume) params[k] = self.resume[k];
      params.heartbeat = 1;
      var ws;
      try {
        ws = new WebSocket(self.socket._url('ws', params));
      } catch (e) {
        reject('websocket blocked: ' + errText(e));
        return;
      }
      self.ws = ws;
      self._timer('open', opts.wsTimeout, function () {
        fail('websocket blocked: no session event within ' + opts.wsTimeout + ' ms');
      });
      ws.onopen = function () {
        opened = true;
      };
      ws.onmessage = function (msg) {
        if (self.closed) return;
        heard();
        var envs;
        try {
          envs = JSON.parse(msg.data);
        } catch (e) {
          return;
        }
        if (!Array.isArray(envs)) envs = [envs];
        for (var i = 0; i < envs.length && !self.closed; i++) {
          var env = envs[i];
          if (!env || typeof env !== 'object') continue;
          if (!self.attached) {
            if (env.event !== 'session') continue;
            self.attached = true;
            settled = true;
            clearTimeout(self.timers.open);
            self._hello(env);
            heard();
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
        drop({
          reason: 'websocket closed ' + e.code + (e.reason ? ' ' + e.reason : ''),
          superseded: e.code === 4000,
          tooBig: e.code === 1009,
        });
      };
      ws.onerror = function () {}; // a close event follows
    });
  };

  WsTransport.prototype.ready = function () {
    return !this.closed && this.ws && this.ws.readyState === 1;
  };

  WsTransport.prototype.send = function (text) {
    this.ws.send(text);
  };

  WsTransport.prototype.close = function () {
    this.closed = true;
    this._clearTimers();
    if (this.ws) {
      var ws = this.ws;
      ws.onmessage = ws.onopen = null;
      ws.onclose = function () {};
      try {
        ws.close(1000);
      } catch (e) {
        /* already closed */
      }
    }
  };

  /** Sends a batch over POST (SSE and polling); resolves to {ok, status, error, retryAfter}. */
  function post(socket, text) {
    var url = socket._url('sse', { sid: socket.id });
    var init = { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: text, cache: 'no-store' };
    return timedFetch(socket, url, init, socket.options.postTimeout).then(
      function (a) {
        var error = a.status === 202 ? null : serverError(a.text) || 'HTTP ' + a.status;
        return { ok: a.status === 202, status: a.status, error: error, retryAfter: Number(a.headers.get('retry-after')) || null };
      },
      function (err) {
        return { ok: false, status: 0, error: errText(err), retryAfter: null };
      }
    );
  }

  /** Reads a failed attach answer: the reason, with the server's own words when it gave some. */
  function refusal(tr, what, status, text, headers) {
    var said = serverError(text);
    if (said) tr.serverMessage = said;
    var after = headers && Number(headers.get('retry-after'));
    if (after) tr.retryAfter = after;
    return what + ' failed: HTTP ' + status + (said ? ': ' + said : '');
  }

  function SseTransport(socket, hooks, resume) {
    this._init('sse', socket, hooks, resume);
    this.abort = null;
  }
  mixin(SseTransport.prototype);

  SseTransport.prototype.silenceLimit = function () {
    return this.socket.options.sseIdleTimeout || deadAfter(this.heartbeat || 15000);
  };

  SseTransport.prototype.open = function () {
    var self = this;
    var opts = this.socket.options;
    var controller = new AbortController();
    this.abort = controller;
    return new Promise(function (resolve, reject) {
      var settled = false;
      function fail(reason) {
        if (settled) return;
        settled = true;
        self.close();
        reject(reason);
      }
      function drop(reason) {
        if (self.closed) return;
        self.close();
        self.hooks.onDrop(self, { reason: reason, superseded: false });
      }
      function alive() {
        self.heard = Date.now();
        if (self.attached) {
          self._timer('idle', self.silenceLimit(), function () {
            drop('sse stream silent for ' + self.silenceLimit() + ' ms');
          });
        }
      }
      self._timer('open', opts.sseTimeout, function () {
        fail('sse held back: no session event within ' + opts.sseTimeout + ' ms');
      });

      fetch(self.socket._url('sse', self.resume), {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: controller.signal,
      })
        .then(function (res) {
          if (self.closed) return;
          if (res.status !== 200 || !res.body) {
            return res.text().then(function (text) {
              fail(refusal(self, 'sse', res.status, text, res.headers));
            });
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
              clearTimeout(self.timers.open);
              self._hello(env);
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
          if (!self.attached) fail('sse failed: ' + errText(err));
          else drop('sse stream broke: ' + errText(err));
        });
    });
  };

  /** An incremental text/event-stream parser: feed it text, it calls `emit` per event. Besides
   *  the standard fields it reads switchyard's `ack: N` and `ack-error: N` (an answer's or a
   *  request's number; for `ack-error` the data is the error), as the JSON envelope has them. */
  function sseParser(emit) {
    var buffer = '';
    var data = [];
    var event = '';
    var id = null;
    var ack = null;
    var ackError = false;
    return function (text) {
      buffer += text;
      var lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop(); // an incomplete line, kept for the next chunk
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
            var env = { event: event || 'message', id: id };
            if (ack !== null) env.ack = ack;
            env[ack !== null && ackError ? 'error' : 'data'] = payload;
            emit(env);
          }
          data = [];
          event = '';
          ack = null;
          ackError = false;
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
        else if (field === 'ack' || field === 'ack-error') {
          ack = /^[0-9]+$/.test(value) ? Number(value) : null;
          ackError = field === 'ack-error';
        }
      }
    };
  }

  SseTransport.prototype.ready = function () {
    return this.attached && !this.closed;
  };

  SseTransport.prototype.send = function (text) {
    return post(this.socket, text);
  };

  SseTransport.prototype.close = function () {
    this.closed = true;
    this._clearTimers();
    if (this.abort) this.abort.abort();
  };

  function PollTransport(socket, hooks, resume) {
    this._init('polling', socket, hooks, resume);
    this.request = null;
  }
  mixin(PollTransport.prototype);

  /** A poll is answered within the heartbeat (the server's poll timeout); allow some slack. */
  PollTransport.prototype.silenceLimit = function () {
    var hb = this.heartbeat;
    return this.socket.options.pollTimeout || (hb ? hb + Math.min(hb, 10000) : 40000);
  };

  PollTransport.prototype.open = function () {
    var self = this;
    var socket = this.socket;
    var opts = socket.options;
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
        self.close();
        self.hooks.onDrop(self, { reason: reason, superseded: superseded });
      }
      function loop(params, first) {
        if (self.closed) return;
        var started = Date.now();
        var req = timedFetch(socket, socket._url('poll', params), { cache: 'no-store' }, first ? opts.sseTimeout : self.silenceLimit());
        self.request = req.entry;
        req.then(
          function (answer) {
            self.request = null;
            if (self.closed) return;
            self.heard = Date.now();
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
              var why = refusal(self, 'polling', answer.status, answer.text, answer.headers);
              if (!self.attached) fail(why);
              else drop(why, false);
              return;
            }
            for (var i = 0; i < envs.length && !self.closed; i++) {
              var env = envs[i];
              if (!env || typeof env !== 'object') continue;
              if (!self.attached) {
                if (env.event !== 'session') continue;
                self.attached = true;
                settled = true;
                self._hello(env);
                self.hooks.onSession(self, env);
                resolve();
              } else {
                if (env.event === 'session') self._hello(env);
                self.hooks.onEvent(self, env);
              }
            }
            if (self.closed) return;
            if (!self.attached) {
              fail('polling failed: no session event');
              return;
            }
            // Continue from the socket's session and newest cursor: what this poll handed over
            // is delivered, and a fresh session it handed out has been adopted. A poll answered
            // at once waits out the rest of pollMinInterval, so no answer makes the client spin.
            // While a WebSocket probe is out, wait for its verdict: a new poll would attach and
            // take the session back from the probe (newest wins).
            var next = function () {
              loop({ sid: socket.id, last_event_id: socket._cursor }, false);
            };
            var wait = opts.pollMinInterval - (Date.now() - started);
            var cont = function () {
              if (wait > 0) self._timer('next', wait, next);
              else next();
            };
            if (socket._probe) socket._probeWaiters.push(cont);
            else cont();
          },
          function (err) {
            self.request = null;
            if (self.closed) return;
            if (!self.attached) fail('polling failed: ' + errText(err));
            else drop('poll failed: ' + errText(err), false);
          }
        );
      }
      loop(self.resume, true);
    });
  };

  PollTransport.prototype.ready = function () {
    return this.attached && !this.closed;
  };

  PollTransport.prototype.send = function (text) {
    return post(this.socket, text);
  };

  PollTransport.prototype.close = function () {
    this.closed = true;
    this._clearTimers();
    if (this.request) this.request.abort();
    this.request = null;
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
    for (k in options || {}) {
      if (options[k] === undefined || options[k] === null) continue;
      opts[ALIASES[k] || k] = options[k];
    }
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
    this._received = 0; // the highest `seq` the server said it handled, in this session
    this._limits = { maxBody: null, maxBatch: null }; // what the hello announced
    this._shrink = null; // a byte cap below the limits after a 413 or 1009, until a send gets through
    this._wsSent = []; // {count, bytes, seqs} of each WebSocket message since the last hello
    this._tooBigSent = null; // _wsSent of a WebSocket the server closed with 1009
    this._sending = false; // a POST is out
    this._sendFailures = 0; // POSTs in a row that failed on the way
    this._current = null; // the transport holding the session
    this._opening = null; // the transport being tried in a connection round
    this._probe = null; // a WebSocket trying to take over from a fallback
    this._dropWhileProbing = null; // the current transport ended while a probe was out
    this._probeWaiters = []; // run when the probe succeeds or fails (a paused poll loop)
    this._cycle = 0; // bumped to abandon a running connection round
    this._timers = {};
    this._requests = []; // fetches in flight, aborted by close()
    this._listeners = null; // page events listened to while open
    this._attempts = 0; // drives the backoff; reset only when a send got through (or none waits)
    this._tries = 0; // failed rounds and drops since the last connect
    this._gapDue = null; // a fresh session was adopted: the server's `gap` should follow
    this._acks = {}; // emitWithAck() requests waiting for their answer, by number
    this._ackSeq = 0; // the last request number given out
    this._everConnected = false;
    this._superseded = false; // another transport (or tab) took the session: stay down
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

  Socket.prototype._debug = function (message, details) {
    var d = this.options.debug;
    if (!d) return;
    if (typeof d === 'function') d(message, details);
    else if (typeof console !== 'undefined') console.debug('switchyard: ' + message, details === undefined ? '' : details);
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
      return fn.call(self, data, id); // the answer, when the event is a server request
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
    this._dispatchAny(event, data, id);
    var list = (this._handlers[event] || []).slice();
    for (var i = 0; i < list.length; i++) this._call(list[i], [data, id]);
  };

  Socket.prototype._dispatchAny = function (event, data, id) {
    var any = this._any.slice();
    for (var i = 0; i < any.length; i++) this._call(any[i], [event, data, id]);
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
    if (this._outbox.length >= this.options.maxQueue) {
      this._dispatch(
        'error',
        {
          error: 'send queue full: ' + this._outbox.length + ' events wait to be sent (maxQueue); `' + event + '` was dropped',
          event: String(event),
        },
        null
      );
      return this;
    }
    this._outbox.push({ event: String(event), data: data === undefined ? null : data, seq: ++this._sendSeq });
    this._flush();
    return this;
  };

  /** Emits like emit(), asking the server to answer: a promise of the answer's data. It is
   *  rejected with an Error whose `reason` is `timeout` (no answer within `timeout` ms,
   *  default options.ackTimeout), `gap` (the session the request went to was lost), `error`
   *  (the server could not handle the event: `data` holds the server's error object),
   *  `refused` (the event was never sent: queue full, too big) or `closed` (close() was
   *  called). */
  Socket.prototype.emitWithAck = function (event, data, options) {
    var self = this;
    if (LIFECYCLE[event]) return Promise.reject(new Error('switchyard: `' + event + '` is a reserved event name'));
    var timeout = options && typeof options.timeout === 'number' ? options.timeout : this.options.ackTimeout;
    var number = ++this._ackSeq;
    var env = { event: String(event), data: data === undefined ? null : data, seq: 0, ack: number };
    return new Promise(function (resolve, reject) {
      var pending = { env: env, resolve: resolve, reject: reject, timer: null };
      self._acks[number] = pending;
      if (timeout > 0) {
        pending.timer = setTimeout(function () {
          self._settleAck(number, ackError('timeout', 'no answer to `' + env.event + '` within ' + timeout + ' ms'));
        }, timeout);
      }
      if (self._outbox.length >= self.options.maxQueue) {
        self._settleAck(number, ackError('refused', 'send queue full: `' + env.event + '` was not sent'));
        return;
      }
      env.seq = ++self._sendSeq;
      self._outbox.push(env);
      self._flush();
    });
  };

  function ackError(reason, message, data) {
    var err = new Error('switchyard: ' + message);
    err.reason = reason;
    if (data !== undefined) err.data = data;
    return err;
  }

  /** Ends request `number`: rejected with `error`, or resolved with `data`. */
  Socket.prototype._settleAck = function (number, error, data) {
    var pending = this._acks[number];
    if (!pending) return false;
    delete this._acks[number];
    clearTimeout(pending.timer);
    if (error) pending.reject(error);
    else pending.resolve(data);
    return true;
  };

  /** Rejects the requests whose number `lost` says can no longer be answered. */
  Socket.prototype._rejectAcks = function (reason, message, lost) {
    for (var n in this._acks) {
      if (lost(Number(n))) this._settleAck(Number(n), ackError(reason, message + ' (`' + this._acks[n].env.event + '`)'));
    }
  };

  /** A server request (an event with `ack`): the first handler's return value, or the value
   *  its promise resolves to, is the answer; a handler that throws or rejects answers null.
   *  An event no handler listens to is not answered (the server's request times out). */
  Socket.prototype._answer = function (env) {
    var self = this;
    var list = this._handlers[env.event] || [];
    if (!list.length) return;
    var result;
    try {
      result = list[0].call(this, env.data, env.id);
    } catch (e) {
      result = null;
    }
    Promise.resolve(result).then(
      function (value) {
        return value === undefined ? null : value;
      },
      function () {
        return null;
      }
    ).then(function (value) {
      self._outbox.push({ event: 'ack', data: value, seq: ++self._sendSeq, ack: env.ack });
      self._flush();
    });
  };

  /** The largest message the server takes, in bytes, as far as the client knows. */
  Socket.prototype._maxBytes = function () {
    var max = this.options.maxBatchBytes;
    if (this._limits.maxBody) max = Math.min(max, this._limits.maxBody);
    return max;
  };

  /** Refuses an event too large to send on its own, with an `error` event naming it. */
  Socket.prototype._refuse = function (env, bytes, limit, why) {
    this._debug('refusing an oversize event', { event: env.event, bytes: bytes, limit: limit });
    if (env.ack && env.event !== 'ack') {
      this._settleAck(env.ack, ackError('refused', 'event `' + env.event + '` is too large to send'));
    }
    this._dispatch(
      'error',
      {
        error:
          why ||
          'event `' + env.event + '` is ' + bytes + ' bytes as JSON, more than the ' + limit + ' bytes the server takes in one message: not sent',
        event: env.event,
        bytes: bytes,
        limit: limit,
      },
      null
    );
  };

  /** Takes the next batch off the outbox: {envs, text, bytes}, within the byte and count
   *  limits, or null. Events too large on their own are refused on the way. */
  Socket.prototype._takeBatch = function () {
    var hard = this._maxBytes();
    var cap = this._shrink ? Math.min(this._shrink, hard) : hard;
    var maxCount = Math.min(100, this._limits.maxBatch || 100);
    var parts = [];
    var size = 2; // the brackets of an array
    while (this._outbox.length && parts.length < maxCount) {
      var json = JSON.stringify(this._outbox[0]);
      var bytes = utf8Bytes(json);
      if (bytes > hard) {
        this._refuse(this._outbox.shift(), bytes, hard);
        continue;
      }
      if (parts.length && size + bytes + 1 > cap) break;
      parts.push(json);
      size += bytes + (parts.length > 1 ? 1 : 0);
      this._outbox.shift();
      if (size > cap) break; // one event alone over a shrunken cap still goes, alone
    }
    if (!parts.length) return null;
    var envs = parts.map(function (p) {
      return JSON.parse(p);
    });
    var text = parts.length === 1 ? parts[0] : '[' + parts.join(',') + ']';
    return { envs: envs, text: text, bytes: parts.length === 1 ? size - 2 : size };
  };

  /** Sends what is queued over the current transport, in order, one batch at a time. */
  Socket.prototype._flush = function () {
    var self = this;
    var tr = this._current;
    // A POST still out (perhaps over the transport just replaced) finishes first: order.
    if (this._closed || this._sending || !tr || !tr.ready() || !this._outbox.length) return;
    var batch = this._takeBatch();
    if (!batch) return;
    var envs = batch.envs;
    this._unacked = this._unacked.concat(envs);
    if (this._unacked.length > 1000) this._unacked.splice(0, this._unacked.length - 1000);
    if (tr.name === 'websocket') {
      this._wsSent.push({ count: envs.length, bytes: batch.bytes, seqs: envs.map(seqOf) });
      if (this._wsSent.length > 1000) this._wsSent.shift();
      try {
        tr.send(batch.text);
      } catch (e) {
        /* the socket is closing: the next hello says what to send again */
      }
      // The server closes a WebSocket at once on a message it cannot take: one still open a
      // second after the last send has taken it, and the backoff may start over.
      this._later('sent', 1000, function () {
        if (self._current === tr && tr.ready()) self._attempts = 0;
      });
      if (this._outbox.length) this._flush();
      return;
    }
    this._sending = true;
    tr.send(batch.text).then(function (answer) {
      self._sending = false;
      var seqs = envs.map(seqOf);
      self._unacked = self._unacked.filter(function (e) {
        return seqs.indexOf(e.seq) < 0;
      });
      if (answer.ok) {
        self._shrink = null;
        self._attempts = 0;
        self._sendFailures = 0;
        self._flush();
        return;
      }
      var requeue = function () {
        // Numbers the server may already have handled are skipped there, so a resend is safe.
        self._outbox = envs.concat(self._outbox);
      };
      self._debug('POST answered ' + (answer.status || 'nothing') + ': ' + answer.error, { events: envs.length });
      if (answer.status === 0 || answer.status >= 500 || answer.status === 429) {
        requeue();
        self._sendFailures++;
        var wait = answer.retryAfter ? answer.retryAfter * 1000 : self._backoff(self._sendFailures);
        self._later('flush', wait, function () {
          self._flush();
        });
      } else if (answer.status === 404) {
        // The session expired: reconnect (a fresh session with a `gap` notice), then resend.
        requeue();
        if (self._current === tr) self._restart('session expired (POST 404)');
      } else if (answer.status === 413 && envs.length > 1) {
        // The server takes less than announced: halve the batches until one gets through.
        requeue();
        self._shrink = Math.max(1, Math.floor(batch.bytes / 2));
        self._flush();
      } else if (answer.status === 413) {
        self._refuse(envs[0], batch.bytes, self._maxBytes(), 'event `' + envs[0].event + '` refused by the server: ' + answer.error);
        self._flush();
      } else {
        self._dispatch('error', { error: 'send refused: ' + answer.error, status: answer.status, events: envs }, null);
        self._flush();
      }
    });
  };

  function seqOf(env) {
    return env.seq;
  }

  /** Sends what is queued as the page goes away: over the WebSocket, or a keepalive POST. */
  Socket.prototype._flushOnExit = function () {
    var tr = this._current;
    if (!this.id || !(this._outbox.length || this._unacked.length) || !tr || !tr.ready()) return;
    if (tr.name === 'websocket') {
      this._flush();
      return;
    }
    // A POST still out may never arrive: what it carries goes again, first (the server skips
    // numbers it already handled, so order holds either way).
    // (Unacknowledged events are never in the outbox: a send takes them out of it.)
    this._outbox = this._unacked.concat(this._outbox);
    var batch = this._takeBatch();
    if (!batch) return;
    this._unacked = batch.envs.slice();
    try {
      fetch(this._url('sse', { sid: this.id }), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: batch.text,
        keepalive: true,
      }).catch(function () {});
    } catch (e) {
      /* keepalive quota exceeded: the events stay unacknowledged and go again on resume */
    }
  };

  // --- connecting -------------------------------------------------------------------------

  /** Connects, or resumes the session after close(), a supersede or a give-up. */
  Socket.prototype.open = function () {
    if (!this._closed && (this.connected || this._opening)) return this;
    this._closed = false;
    this._superseded = false;
    this._listen();
    clearTimeout(this._timers.reconnect);
    delete this._timers.reconnect;
    this._tries = 0;
    this._connectCycle('open');
    return this;
  };

  /** Ends the connection and everything it started; the sid is kept for open(). */
  Socket.prototype.close = function () {
    var wasClosed = this._closed;
    this._closed = true;
    this._cycle++;
    for (var k in this._timers) clearTimeout(this._timers[k]);
    this._timers = {};
    var requests = this._requests;
    this._requests = [];
    for (var i = 0; i < requests.length; i++) requests[i].abort();
    if (this._probe) this._probe.close();
    this._probe = null;
    this._probeWaiters = [];
    if (this._opening) this._opening.close();
    this._opening = null;
    if (this._current) this._current.close();
    this._current = null;
    this._sending = false;
    this._unlisten();
    var wasConnected = this.connected;
    this.connected = false;
    if (wasConnected) this._dispatch('disconnect', { reason: 'client closed', willReconnect: false }, null);
    if (!wasClosed) this._debug('closed');
    // Nothing keeps running after close(): requests waiting for an answer are given up.
    this._rejectAcks('closed', 'closed before the answer came', function () {
      return true;
    });
    return this;
  };

  // Socket.IO's names.
  Socket.prototype.connect = Socket.prototype.open;
  Socket.prototype.disconnect = Socket.prototype.close;

  Socket.prototype._later = function (name, ms, fn) {
    var self = this;
    clearTimeout(this._timers[name]);
    if (this._closed) return;
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
    var o = this.options;
    var token = typeof o.token === 'function' ? o.token() : o.token;
    if (!token && o.auth) {
      // Socket.IO's `auth`: an object, or a function handing one to its callback (at once).
      var auth = o.auth;
      if (typeof auth === 'function') {
        var given = null;
        auth(function (value) {
          given = value;
        });
        auth = given;
      }
      if (auth && auth.token) token = auth.token;
    }
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

  // --- the page's own signals -------------------------------------------------------------

  /** Listens to the page while open: back online or visible again means resume at once (a
   *  backoff timer may be far off, or throttled in a hidden tab); leaving means flush. */
  Socket.prototype._listen = function () {
    if (this._listeners) return;
    var self = this;
    var list = [];
    var win = root && typeof root.addEventListener === 'function' ? root : null;
    var doc = typeof document !== 'undefined' && document && typeof document.addEventListener === 'function' ? document : null;
    function on(target, name, fn) {
      if (!target) return;
      target.addEventListener(name, fn);
      list.push([target, name, fn]);
    }
    on(win, 'online', function () {
      self._wake('the network is back');
    });
    on(win, 'offline', function () {
      self._debug('the network is gone');
    });
    on(doc, 'visibilitychange', function () {
      if (doc.visibilityState === 'visible') self._wake('the tab is visible again');
    });
    on(win, 'pageshow', function () {
      self._wake('the page is shown again');
    });
    on(win, 'pagehide', function () {
      self._flushOnExit();
    });
    this._listeners = list;
  };

  Socket.prototype._unlisten = function () {
    var list = this._listeners || [];
    this._listeners = null;
    for (var i = 0; i < list.length; i++) list[i][0].removeEventListener(list[i][1], list[i][2]);
  };

  /** Resumes at once if down; drops a path that went silent while timers could not run. */
  Socket.prototype._wake = function (why) {
    if (this._closed) return;
    if (this.connected && this._current) {
      if (this._current.stale(Date.now())) {
        this._debug(why + ': the ' + this._current.name + ' path went silent; resuming');
        this._restart(why + ': ' + this._current.name + ' went silent');
      }
      return;
    }
    // Only a pending retry is brought forward: a superseded or given-up socket stays down.
    if (this._timers.reconnect) {
      this._debug(why + ': reconnecting now');
      clearTimeout(this._timers.reconnect);
      delete this._timers.reconnect;
      this._connectCycle(why);
    }
  };

  // --- connection rounds ------------------------------------------------------------------

  /** Tries the transports best first; the first to deliver its `session` event takes over. */
  Socket.prototype._connectCycle = function (why) {
    var self = this;
    var cycle = ++this._cycle;
    var order = this.options.transports.slice();
    var best = order[0];
    var reasons = [];
    var failed = [];
    if (order[0] === 'websocket' && order.length > 1 && this._wsRemembered()) {
      order.shift();
      reasons.push('websocket skipped: it failed on this origin recently');
    }
    this._debug('connecting (' + why + '): trying ' + order.join(', '));
    var i = 0;
    (function next() {
      if (cycle !== self._cycle || self._closed) return;
      if (i >= order.length) {
        self._opening = null;
        self._roundFailed(reasons, failed);
        return;
      }
      var name = order[i++];
      // An attach that changes transport says from which and why (docs/protocol.md, section 2):
      // the server counts it for the operator page.
      var resume = self._resume();
      var change = self._change(name, best, reasons);
      if (change) {
        resume.from = change.from;
        resume.reason = change.code;
      }
      var tr = new TRANSPORTS[name](self, self._hooks(), resume);
      tr.change = change;
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
          self._debug(reason);
          reasons.push(reason);
          failed.push(tr);
          next();
        }
      );
    })();
  };

  /** Every transport failed: report it and try again later (or give up, if so configured). */
  Socket.prototype._roundFailed = function (reasons, failed) {
    var self = this;
    var o = this.options;
    this._attempts++;
    this._tries++;
    var message = null;
    var retryAfter = 0;
    for (var i = 0; i < failed.length; i++) {
      if (failed[i].serverMessage) message = failed[i].serverMessage;
      if (failed[i].retryAfter) retryAfter = Math.max(retryAfter, failed[i].retryAfter * 1000);
    }
    var stop = !o.reconnection || this._tries >= o.reconnectionAttempts;
    var delay = stop ? null : Math.max(this._backoff(this._attempts), retryAfter);
    this._dispatch(
      'connect_error',
      { reasons: reasons, message: message || reasons[reasons.length - 1] || 'no transport', attempts: this._tries, retryIn: delay },
      null
    );
    if (stop) {
      this._debug('giving up after ' + this._tries + ' failed round(s)');
      if (o.reconnection) this._dispatch('reconnect_failed', { attempts: this._tries }, null);
      return;
    }
    this._debug('every transport failed; next round in ' + delay + ' ms', reasons);
    this._later('reconnect', delay, function () {
      self._connectCycle('retry');
    });
  };

  function isWsBlock(reason) {
    return reason.indexOf('websocket blocked') === 0;
  }

  /** The code a transport's failure reports on the next attach (the texts are the transports'). */
  function failureCode(reason) {
    if (reason.indexOf('websocket blocked: no session event') === 0) return 'ws_timeout';
    if (reason.indexOf('websocket blocked') === 0) return 'ws_blocked';
    if (reason.indexOf('websocket skipped') === 0) return 'ws_remembered';
    if (reason.indexOf('sse held back') === 0) return 'sse_held_back';
    if (reason.indexOf('sse failed') === 0) return 'sse_failed';
    if (reason.indexOf('polling failed') === 0) return 'polling_failed';
    return 'other';
  }

  var LADDER = ['websocket', 'sse', 'polling'];

  /** The transport change an attach of `name` in a round reports, `{from, code}`, or null:
   *  from the transport last held (or, before any, the best one, when it was not this one);
   *  down the ladder, for the round's last failure; back up (after a drop), only when it is the
   *  round's first attempt, as `reconnect`: a later one, after better rungs failed again, is
   *  a guess the next rung down often undoes (an SSE stream a proxy holds back). */
  Socket.prototype._change = function (name, best, reasons) {
    var from = this.transport || (best !== name ? best : null);
    if (!from || from === name) return null;
    if (LADDER.indexOf(name) < LADDER.indexOf(from)) return reasons.length ? null : { from: from, code: 'reconnect' };
    return { from: from, code: reasons.length ? failureCode(reasons[reasons.length - 1]) : 'other' };
  };

  /** Lifecycle-ish trace for debugging: only to onAny listeners, as `_probe` etc. */
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
      this._debug('upgraded to ' + tr.name);
      this._setTransport(tr.name, 'upgrade: ' + tr.name + ' works again', null, 'probe');
      this._settleProbe();
      this._flush();
      return;
    }
    if (tr.cycle !== this._cycle || this._closed || this._current) {
      tr.close(); // a leftover of an abandoned round
      return;
    }
    this._opening = null;
    this._current = tr;
    var wasConnected = this._everConnected;
    var tries = this._tries;
    var before = this._received;
    var sameSession = !!sid && sid === this.id;
    this._acceptSession(env, sid);
    // The backoff starts over only once sends get through: a connect whose sends keep failing
    // (a batch the server refuses, a path that drops whatever is sent) keeps backing off.
    if (!this._outbox.length || (sameSession && this._received > before)) this._attempts = 0;
    this._tries = 0;
    this.connected = true;
    this._everConnected = true;
    var resumed = !!(env.data && env.data.resumed);
    var reason = tr.reasons.length ? tr.reasons.join('; ') : wasConnected ? 'reconnected' : 'connected';
    this._debug('connected over ' + tr.name + (resumed ? ' (resumed)' : ''), reason);
    this._setTransport(tr.name, reason, tr.firstTried, tr.change ? tr.change.code : null);
    this._dispatch('connect', { sid: this.id, transport: tr.name, resumed: resumed }, null);
    if (wasConnected) this._dispatch('reconnect', { attempts: tries, sid: this.id, resumed: resumed }, null);
    this._flush();
    this._scheduleProbe();
  };

  /** Takes a `session` hello: the session itself (a new sid is adopted, and the page hears
   *  `gap` about the old one), the limits it announces, and which sends to repeat. */
  Socket.prototype._acceptSession = function (env, sid) {
    var data = env.data || {};
    var received = typeof data.received === 'number' ? data.received : null;
    if (typeof data.max_body === 'number') this._limits.maxBody = data.max_body;
    if (typeof data.max_batch === 'number') this._limits.maxBatch = data.max_batch;
    if (sid && sid !== this.id) {
      var previous = this.id;
      this.id = sid;
      this._cursor = env.id || null;
      this._received = received || 0;
      // Sends are numbered per session. Those already sent to a lost session may or may not
      // have been handled there: they are not sent again. What was never sent goes to the new
      // session, renumbered.
      this._unacked = [];
      this._sendSeq = 0;
      // Requests sent to the lost session will not be answered; those never sent go to the
      // new one. Answers owed to the lost session's requests are no use to the new one.
      var unsent = {};
      this._outbox = this._outbox.filter(function (e) {
        if (e.ack && e.event !== 'ack') unsent[e.ack] = true;
        return !(e.ack && e.event === 'ack');
      });
      for (var i = 0; i < this._outbox.length; i++) this._outbox[i].seq = ++this._sendSeq;
      if (previous !== null) {
        this._rejectAcks('gap', 'the session was lost before the answer came', function (number) {
          return !unsent[number];
        });
      }
      if (previous !== null) {
        this._debug('session ' + previous + ' is gone; now ' + sid);
        this._gapDue = { previous: previous };
        // The server's `gap` follows its hello at once; if it does not come, say it ourselves.
        var self = this;
        this._later('gap', 1000, function () {
          self._settleGap();
        });
      }
    } else {
      if (env.id && (this._cursor == null || compareCursors(env.id, this._cursor) > 0)) this._cursor = env.id;
      if (received !== null) {
        if (received > this._received) this._received = received;
        // The hello says which sends were handled: send the rest again, in order.
        var again = this._unacked.filter(function (e) {
          return e.seq > received;
        });
        this._unacked = [];
        if (this._tooBigSent) again = this._afterTooBig(received, again);
        if (again.length) this._outbox = again.concat(this._outbox);
      }
    }
    this._wsSent = [];
    this._tooBigSent = null;
    this._dispatch('session', env.data, env.id);
  };

  /** A fresh session was adopted and the server sent no `gap`: the client reports it. */
  Socket.prototype._settleGap = function () {
    var due = this._gapDue;
    if (!due) return;
    this._gapDue = null;
    clearTimeout(this._timers.gap);
    delete this._timers.gap;
    this._dispatch(
      'gap',
      { reason: 'expired', message: 'the session ended while the client was away; a new one started', previous: due.previous, client: true },
      null
    );
  };

  Socket.prototype._setTransport = function (name, reason, attempted, code) {
    var from = this.transport;
    if (from === name) return;
    this.transport = name;
    var data = { from: from || (attempted !== name ? attempted : null) || null, to: name, reason: reason, code: code || null };
    this._dispatch('transport', data, null);
  };

  /** One server event from the current transport: hellos adopted, heartbeats swallowed,
   *  duplicates dropped by cursor, the rest passed on. */
  Socket.prototype._receive = function (env) {
    if (env.event === 'heartbeat' && env.id == null) return;
    if (env.event === 'session') {
      // A poll the server took as a new attachment starts with a hello of its own, and with a
      // fresh session if the old one expired: adopt it, or the next poll would go to the dead
      // sid and get yet another session.
      this._acceptSession(env, env.data && env.data.sid);
      return;
    }
    if (env.id != null) {
      var c = parseCursor(env.id);
      if (c && this.id && c.sid !== this.id) return; // another session's leftovers
      if (this._cursor != null) {
        var order = compareCursors(env.id, this._cursor);
        // A `gap` shares its cursor with the hello just before it.
        if (order !== null && (order < 0 || (order === 0 && env.event !== 'gap'))) return;
      }
      this._cursor = env.id;
    }
    if (env.event === 'gap') {
      var due = this._gapDue;
      this._gapDue = null;
      clearTimeout(this._timers.gap);
      delete this._timers.gap;
      var data = env.data;
      if (due && data && typeof data === 'object') {
        data = {};
        for (var k in env.data) data[k] = env.data[k];
        data.previous = due.previous;
      }
      this._dispatch('gap', data, env.id);
      return;
    }
    this._settleGap();
    if (env.event === 'reconnect') {
      // The server asks to move (it is restarting): resume at once, elsewhere if need be.
      this._restart('server asked to reconnect');
      return;
    }
    if (typeof env.ack === 'number') {
      if (env.event === 'ack') {
        // The answer to a request of emitWithAck().
        if ('error' in env) this._settleAck(env.ack, ackError('error', (env.error && env.error.error) || 'the server could not handle the event', env.error));
        else this._settleAck(env.ack, null, env.data);
        return;
      }
      this._answer(env);
      this._dispatchAny(env.event, env.data, env.id);
      for (var i = 1, list = (this._handlers[env.event] || []).slice(); i < list.length; i++) this._call(list[i], [env.data, env.id]);
      return;
    }
    this._dispatch(env.event, env.data, env.id);
  };

  Socket.prototype._onDrop = function (tr, info) {
    if (tr === this._probe) return; // a probe that had taken over is the current one
    if (tr !== this._current) return;
    if (info.tooBig) this._tooBigSent = this._wsSent;
    if (this._probe) {
      // Probably the probe's own attach superseding this one: wait for its verdict.
      this._dropWhileProbing = info;
      return;
    }
    if (info.superseded) {
      // Another transport holds the session now: never fight it for the session.
      this._debug('superseded: another transport holds the session');
      this._current = null;
      this.connected = false;
      this._superseded = true;
      clearTimeout(this._timers.probe);
      this._dispatch('disconnect', { reason: 'superseded: ' + info.reason, willReconnect: false }, null);
      return;
    }
    this._debug('dropped: ' + info.reason);
    this._restart(info.reason, true);
  };

  /** After a WebSocket closed with 1009 and the session was resumed: the first message the
   *  server did not handle (the one after `received`) was too big. Halve the batches, or, when
   *  that message held one event, refuse the event: it can never go through. */
  Socket.prototype._afterTooBig = function (received, again) {
    var sent = this._tooBigSent;
    this._tooBigSent = null;
    var culprit = null;
    for (var i = 0; i < sent.length && !culprit; i++) {
      if (sent[i].seqs.some(function (s) { return s > received; })) culprit = sent[i];
    }
    if (!culprit) return again;
    if (culprit.count > 1) {
      this._shrink = Math.max(1, Math.floor(culprit.bytes / 2));
      this._debug('the server refused a ' + culprit.bytes + '-byte message (1009); batches now up to ' + this._shrink + ' bytes');
      return again;
    }
    var seq = culprit.seqs[0];
    var self = this;
    return again.filter(function (e) {
      if (e.seq !== seq) return true;
      self._refuse(e, culprit.bytes, culprit.bytes - 1, 'event `' + e.event + '` refused by the server: message too big (close 1009)');
      return false;
    });
  };

  /** Drops the current transport and resumes, after a backoff delay when `delay` is set. */
  Socket.prototype._restart = function (reason, delay) {
    var self = this;
    var tr = this._current;
    this._current = null;
    if (tr) tr.close();
    if (this._probe) this._probe.close();
    this._probe = null;
    if (this._opening) this._opening.close();
    this._opening = null;
    this._probeWaiters = [];
    this._dropWhileProbing = null;
    clearTimeout(this._timers.probe);
    this._cycle++;
    var wasConnected = this.connected;
    this.connected = false;
    var again = this.options.reconnection;
    if (wasConnected) this._dispatch('disconnect', { reason: reason, willReconnect: again }, null);
    if (!again) return;
    this._attempts++;
    this._tries++;
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
    var resume = this._resume();
    resume.from = this._current.name;
    resume.reason = 'probe';
    var tr = new WsTransport(this, this._hooks(), resume);
    this._probe = tr;
    this._debug('probing websocket');
    tr.open().then(
      function () {},
      function (reason) {
        if (self._probe !== tr) return;
        self._probe = null;
        self._debug('probe failed: ' + reason);
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
    io: connect,
    Socket: Socket,
    defaults: DEFAULTS,
    compareCursors: compareCursors,
    utf8Bytes: utf8Bytes,
    version: '1',
  };
});

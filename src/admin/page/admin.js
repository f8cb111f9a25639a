// The operator page's script (src/admin/mod.rs serves it inlined into the page). It reads the
// gateway's own event stream, `<page>/stream`: `history` (the chart points of the last 15
// minutes) when it opens, then a `tick` every second with every figure shown here, taken from
// the counters `/metrics` renders. EventSource reconnects by itself; the stream then starts
// with `history` again. Nothing here keeps state the server does not send.
//
// For tests: `window.__admin` holds the last tick and the chart points, and every number on the
// page carries its raw value in `data-value`.
(function () {
  'use strict';

  var base = location.pathname.replace(/\/+$/, '');
  var LADDER = ['websocket', 'sse', 'polling'];
  var NAMES = { websocket: 'WebSocket', sse: 'SSE', polling: 'polling' };
  var REASONS = {
    ws_blocked: 'WebSocket failed before its hello: a proxy without upgrades, or CONNECT refused',
    ws_timeout: 'WebSocket opened, but no hello came through in time',
    ws_remembered: 'WebSocket skipped: it failed on this origin recently',
    sse_held_back: 'SSE stream held back: a buffering proxy',
    sse_failed: 'SSE request failed',
    polling_failed: 'the first long-poll failed',
    probe: 'a WebSocket probe got through',
    reconnect: 'reconnected onto a better transport',
    other: 'a reason this server does not know',
  };
  var css = getComputedStyle(document.documentElement);
  function color(name) {
    return css.getPropertyValue('--' + name).trim();
  }

  var state = (window.__admin = { tick: null, fields: [], points: [], ticks: 0, lastTickAt: 0, view: location.hash === '#all' ? 'all' : 'node' });
  // What a node's cluster report carries (src/admin/sampler.rs, `REPORTED`): in the "all nodes"
  // view, these figures are the cluster's sums; the charts and the changes stay this node's.
  var REPORTED = ['sessions', 'on', 'rate', 'minute', 'totals', 'gaps', 'errors', 'post', 'detaches'];

  // ----- formatting -------------------------------------------------------------------------

  function int(n) {
    return Math.round(n).toLocaleString('en-US');
  }
  function rate(n) {
    if (n >= 100) return int(n);
    return n >= 10 ? n.toFixed(0) : n.toFixed(1).replace(/\.0$/, '');
  }
  function bytes(n) {
    var units = ['B', 'KB', 'MB', 'GB', 'TB'];
    var i = 0;
    while (n >= 1000 && i < units.length - 1) {
      n /= 1000;
      i++;
    }
    return (i === 0 || n >= 100 ? Math.round(n) : n.toFixed(1)) + ' ' + units[i];
  }
  function duration(ms) {
    var s = Math.floor(ms / 1000);
    if (s < 60) return (ms < 10000 ? (ms / 1000).toFixed(1) : s) + ' s';
    var m = Math.floor(s / 60);
    if (m < 60) return m + ' min ' + (s % 60) + ' s';
    var h = Math.floor(m / 60);
    if (h < 48) return h + ' h ' + (m % 60) + ' min';
    return Math.floor(h / 24) + ' d ' + (h % 24) + ' h';
  }
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === 'text') node.textContent = attrs[k];
      else if (k === 'class') node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    }
    (children || []).forEach(function (child) {
      if (child != null) node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }
  function chip(transport) {
    return el('span', { class: 'chip ' + transport, text: NAMES[transport] || transport });
  }

  /** Shows `value` in every element marked `data-key="key"`, keeping the raw number. */
  function show(key, value) {
    var nodes = document.querySelectorAll('[data-key="' + key + '"]');
    for (var i = 0; i < nodes.length; i++) {
      var node = nodes[i];
      node.dataset.value = String(value);
      node.textContent = node.dataset.format === 'bytes' ? bytes(value) : key.indexOf('rate.') === 0 ? rate(value) : int(value);
    }
  }

  // ----- charts (uPlot) ---------------------------------------------------------------------

  var WINDOW = 15 * 60;

  function axis(extra) {
    var a = {
      stroke: color('muted'),
      grid: { stroke: '#1f252d', width: 1 },
      ticks: { stroke: '#2b323b', width: 1 },
      font: '12px system-ui, sans-serif',
    };
    for (var k in extra || {}) a[k] = extra[k];
    return a;
  }

  function line(label, stroke, options) {
    var s = { label: label, stroke: stroke, width: 2, points: { show: false } };
    for (var k in options || {}) s[k] = options[k];
    return s;
  }

  function fill(hex) {
    return hex + '22';
  }

  var charts = [];

  function clock(seconds) {
    var d = new Date(seconds * 1000);
    return String(d.getHours()).padStart(2, '0') + ':' + String(d.getMinutes()).padStart(2, '0');
  }

  /** A chart of the point fields `fields`, one series each; with `stack`, the fields after the
   *  first `stack.from` are drawn stacked, each band filled in its own colour. Series on the
   *  scale `r` get an axis of their own, on the right. */
  function chart(id, height, fields, series, stack) {
    var count = function (u, ticks) { return ticks.map(function (v) { return v >= 10000 ? Math.round(v / 1000) + 'k' : String(v); }); };
    var fromZero = { range: function (u, min, max) { return [0, Math.max(4, Math.ceil(max * 1.15))]; } };
    var node = document.getElementById(id);
    var opts = {
      width: Math.max(200, node.clientWidth),
      height: height,
      series: [{}].concat(series),
      bands: stack ? stack.bands : undefined,
      scales: {
        x: { time: true, range: function (u, min, max) { return [max - WINDOW, max]; } },
        y: fromZero,
        r: fromZero,
      },
      axes: [
        axis({ space: 80, values: function (u, ticks) { return ticks.map(clock); } }),
        axis({ size: 52, values: count }),
      ],
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    };
    var right = series.filter(function (s) { return s.scale === 'r'; })[0];
    if (right) opts.axes.push(axis({ scale: 'r', side: 1, size: 52, values: count, grid: { show: false }, stroke: right.stroke }));
    var u = new uPlot(opts, [[]].concat(series.map(function () { return []; })), node);
    var entry = { u: u, fields: fields, node: node, height: height, stack: stack };
    charts.push(entry);
    if (typeof ResizeObserver !== 'undefined') {
      new ResizeObserver(function () {
        var width = Math.max(200, node.clientWidth);
        if (width !== u.width) u.setSize({ width: width, height: height });
      }).observe(node);
    }
    return entry;
  }

  function redraw() {
    var index = {};
    state.fields.forEach(function (f, i) { index[f] = i; });
    var points = state.points;
    var xs = points.map(function (p) { return p[index.t] / 1000; });
    charts.forEach(function (c) {
      var columns = c.fields.map(function (f) {
        return points.map(function (p) { return p[index[f]]; });
      });
      if (c.stack) {
        for (var i = c.stack.from + 1; i < columns.length; i++) {
          columns[i] = columns[i].map(function (v, j) { return v + columns[i - 1][j]; });
        }
      }
      c.u.setData([xs].concat(columns));
    });
  }

  // ----- the tick ---------------------------------------------------------------------------

  /** The tick as the chosen view shows it: this node's, or with the cluster's sums. */
  function viewed(t) {
    var all = state.view === 'all' && t.cluster && t.cluster.totals;
    document.body.dataset.view = all ? 'all' : 'node';
    if (!all) return t;
    var v = {};
    for (var k in t) v[k] = t[k];
    REPORTED.forEach(function (key) { if (t.cluster.totals[key] != null) v[key] = t.cluster.totals[key]; });
    return v;
  }

  function render(tick) {
    var t = viewed(tick);
    var all = document.body.dataset.view === 'all';
    var scope = document.getElementById('scope');
    scope.innerHTML = '';
    if (t.node) {
      scope.appendChild(document.createTextNode('cluster node '));
      scope.appendChild(el('b', { text: t.node.slice(0, 8) }));
      scope.title = t.node;
      var count = tick.cluster && tick.cluster.nodes ? tick.cluster.nodes.length : 0;
      scope.appendChild(document.createTextNode(all ? ' · sums of ' + count + ' nodes' : " · this node's numbers"));
    } else {
      scope.appendChild(el('b', { text: 'single node' }));
    }
    renderCluster(tick);
    var when = new Date(t.t);
    document.getElementById('updated').textContent =
      'updated ' + when.toLocaleTimeString('en-GB') + ' · up ' + duration(t.uptime * 1000);
    show('sessions', t.sessions);
    if (t.recorder === 'external') {
      document.getElementById('updated').textContent += " · metrics go to the application's own recorder";
      return;
    }
    var on = t.on || {};
    show('on.none', on.none || 0);
    var transports = LADDER.reduce(function (sum, name) { return sum + (on[name] || 0); }, 0);
    LADDER.forEach(function (name) {
      show('on.' + name, on[name] || 0);
      var share = document.querySelector('[data-share="' + name + '"]');
      share.textContent = transports ? Math.round((100 * (on[name] || 0)) / transports) + ' %' : '–';
    });
    ['in', 'out', 'bytes'].forEach(function (k) { show('rate.' + k, t.rate[k]); });
    ['attaches', 'resumes', 'fallbacks', 'upgrades', 'created', 'expired'].forEach(function (k) { show('minute.' + k, t.minute[k]); });
    ['attaches', 'resumes', 'created', 'expired', 'in', 'out', 'bytes', 'fallbacks', 'upgrades'].forEach(function (k) { show('totals.' + k, t.totals[k]); });
    var quiet = !t.minute.fallbacks;
    document.querySelector('.tile.fallbacks').toggleAttribute('data-quiet', quiet);
    renderChanges(tick.changes || []);
    renderCounts('gaps', t.gaps, 'no gaps');
    renderCounts('errors', t.errors, 'no errors');
    renderCounts('post', t.post, 'no POSTs yet');
    renderCounts('detaches', t.detaches, 'none yet');
    renderRooms(tick.rooms, tick.cluster != null);
  }

  function renderCluster(t) {
    var clustered = t.cluster != null;
    document.getElementById('cluster').hidden = !clustered;
    document.getElementById('rooms-panel').hidden = clustered;
    document.getElementById('view').hidden = !clustered;
    if (!clustered) return;
    var nodes = t.cluster.nodes || [];
    document.getElementById('view-count').textContent = nodes.length ? '(' + nodes.length + ')' : '';
    document.getElementById('cluster-count').textContent = String(nodes.length);
    var body = document.getElementById('cluster-nodes');
    var foot = document.getElementById('cluster-totals');
    body.innerHTML = '';
    foot.innerHTML = '';
    if (t.cluster.error) {
      body.appendChild(el('tr', { class: 'empty' }, [el('td', { colspan: '8', class: 'error-text', text: t.cluster.error })]));
      return;
    }
    var row = function (attrs, first, second, r, age, old) {
      var on = r.on || {};
      var rt = r.rate || {};
      var cell = function (cls, value, text) {
        return el('td', { class: 'n ' + cls + (value ? '' : ' zero'), 'data-value': String(value || 0), text: text });
      };
      return el('tr', attrs, [
        el('td', {}, [first]),
        el('td', { class: 'addr', title: second, text: second }),
        cell('ws', on.websocket, int(on.websocket || 0)),
        cell('sse', on.sse, int(on.sse || 0)),
        cell('polling', on.polling, int(on.polling || 0)),
        cell('events', (rt.in || 0) + (rt.out || 0), rate(rt.in || 0) + ' · ' + rate(rt.out || 0)),
        cell('fallbacks', (r.minute || {}).fallbacks, int((r.minute || {}).fallbacks || 0)),
        el('td', { class: 'n age' + (old ? ' old' : ''), text: age }),
      ]);
    };
    nodes.forEach(function (n) {
      var self = n.node === t.node;
      body.appendChild(row({ class: self ? 'self' : '', 'data-node': n.node }, el('code', { title: n.node, text: n.node.slice(0, 8) }),
        n.addr || '–', n, duration(n.age_ms || 0), (n.age_ms || 0) > 2500));
    });
    if (t.cluster.totals) {
      foot.appendChild(row({ 'data-node': 'all' }, el('span', { text: 'all ' + nodes.length }), int(t.cluster.totals.sessions || 0) + ' sessions', t.cluster.totals, '', false));
    }
  }

  function setView(view) {
    state.view = view;
    window.history.replaceState(null, '', view === 'all' ? '#all' : location.pathname + location.search);
    var buttons = document.querySelectorAll('#view button');
    for (var i = 0; i < buttons.length; i++) buttons[i].setAttribute('aria-pressed', String(buttons[i].dataset.view === view));
    if (state.tick) render(state.tick);
  }
  (function () {
    var buttons = document.querySelectorAll('#view button');
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener('click', function (e) { setView(e.currentTarget.dataset.view); });
    }
    if (state.view === 'all') setView('all');
  })();

  function renderChanges(changes) {
    var body = document.getElementById('changes');
    body.innerHTML = '';
    if (!changes.length) {
      body.appendChild(el('tr', { class: 'empty' }, [el('td', { colspan: '4', text: 'no client has changed transport yet' })]));
      return;
    }
    changes.forEach(function (c) {
      var down = LADDER.indexOf(c.to) > LADDER.indexOf(c.from);
      var row = el('tr', { 'data-from': c.from, 'data-to': c.to, 'data-reason': c.reason, class: c.minute ? 'hot' : '' }, [
        el('td', {}, [chip(c.from), el('span', { class: 'arrow ' + (down ? 'down' : 'up'), text: down ? '↘' : '↗' }), chip(c.to)]),
        el('td', { class: 'reason' }, [el('code', { text: c.reason }), el('div', { text: REASONS[c.reason] || '' })]),
        el('td', { class: 'n minute' + (c.minute ? '' : ' zero'), 'data-value': String(c.minute), text: int(c.minute) }),
        el('td', { class: 'n total', 'data-value': String(c.total), text: int(c.total) }),
      ]);
      body.appendChild(row);
    });
  }

  function renderCounts(id, counts, empty) {
    var body = document.getElementById(id);
    body.innerHTML = '';
    var keys = Object.keys(counts || {}).sort(function (a, b) { return counts[b][0] - counts[a][0]; });
    if (!keys.length) {
      body.appendChild(el('tr', { class: 'empty' }, [el('td', { colspan: '3', text: empty })]));
      return;
    }
    keys.forEach(function (key) {
      var total = counts[key][0];
      var minute = counts[key][1];
      body.appendChild(el('tr', { 'data-key': key }, [
        el('td', { text: key }),
        el('td', { class: 'n total', 'data-value': String(total), text: int(total) }),
        el('td', { class: 'n minute' + (minute ? '' : ' zero'), 'data-value': String(minute), text: int(minute) }),
      ]));
    });
  }

  // In cluster mode the rooms are the cluster's (from Redis), listed in the cluster panel, the
  // five largest; otherwise this node's, in their own panel.
  function renderRooms(rooms, clustered) {
    var list = document.getElementById(clustered ? 'cluster-rooms' : 'rooms');
    var key = clustered ? 'cluster-rooms.count' : 'rooms.count';
    list.innerHTML = '';
    if (!rooms) {
      show(key, 0);
      list.appendChild(el('li', { class: 'empty', text: 'Redis did not answer in time' }));
      return;
    }
    show(key, rooms.count);
    if (clustered) rooms = { count: rooms.count, top: rooms.top.slice(0, 5) };
    if (!rooms.top.length) {
      list.appendChild(el('li', { class: 'empty', text: 'no rooms' }));
      return;
    }
    var most = rooms.top[0][1] || 1;
    rooms.top.forEach(function (room) {
      var bar = el('i');
      bar.style.width = Math.max(2, (100 * room[1]) / most) + '%';
      list.appendChild(el('li', { 'data-room': room[0], 'data-value': String(room[1]) }, [
        el('span', { class: 'name', text: room[0] }),
        el('span', { class: 'count', text: int(room[1]) + (room[1] === 1 ? ' member' : ' members') }),
        el('span', { class: 'bar' }, [bar]),
      ]));
    });
  }

  // ----- the sid lookup ---------------------------------------------------------------------

  function lookup(sid) {
    var result = document.getElementById('lookup-result');
    result.innerHTML = '';
    result.appendChild(el('p', { class: 'muted', text: 'looking up…' }));
    fetch(base + '/sessions/' + encodeURIComponent(sid), { cache: 'no-store' })
      .then(function (res) {
        return res.json().then(function (body) { return { status: res.status, body: body }; });
      })
      .then(function (answer) {
        result.innerHTML = '';
        state.lookup = answer.body;
        if (answer.status !== 200) {
          result.appendChild(el('p', { class: 'error-text', text: answer.body.error || 'HTTP ' + answer.status }));
          return;
        }
        showSession(result, answer.body);
      })
      .catch(function (err) {
        result.innerHTML = '';
        result.appendChild(el('p', { class: 'error-text', text: String(err) }));
      });
  }

  function showSession(result, s) {
    var rows = [
      ['session', el('code', { text: s.sid })],
      ['transport', s.transport ? chip(s.transport)
        : s.on ? el('span', {}, [chip(s.on), el('span', { class: 'muted', text: ' between two polls' })])
        : el('span', { class: 'muted', text: 'none: between transports' + (s.detached_for_ms != null ? ' for ' + duration(s.detached_for_ms) : '') })],
      ['attached since', s.attached_since ? new Date(s.attached_since).toLocaleString('en-GB') : '–'],
      ['buffer', s.buffered == null ? '–' : int(s.buffered) + ' events kept'],
      ['last event', s.last_cursor ? el('code', { text: s.last_cursor }) : '–'],
      ['handed out up to', s.delivered_cursor ? el('code', { text: s.delivered_cursor }) : '–'],
      ['rooms', s.rooms.length ? s.rooms.join(', ') : 'none'],
    ];
    if (s.node) rows.push(['seen from', 'cluster node ' + s.node]);
    var facts = el('dl');
    rows.forEach(function (r) {
      facts.appendChild(el('dt', { text: r[0] }));
      facts.appendChild(el('dd', {}, [r[1]]));
    });
    var timeline = el('ol', { class: 'timeline', id: 'lookup-history' });
    var moments = s.history.slice();
    var last = moments[moments.length - 1];
    // Between two polls: the detach of the last poll is not news (the next one folds it away).
    if (!s.transport && s.on === 'polling' && last && last.what === 'detached' && last.transport === 'polling') moments.pop();
    moments.reverse().forEach(function (m) {
      var what = m.what + (m.what === 'detached' ? ' from ' : ' over ') + (NAMES[m.transport] || m.transport);
      if (m.from) what += ', coming from ' + (NAMES[m.from] || m.from);
      if (m.detail) what += ' (' + m.detail + ')';
      timeline.appendChild(el('li', { class: m.what }, [el('span', { class: 'ago', text: duration(m.ago_ms) + ' ago' }), what]));
    });
    if (!s.history.length) timeline.appendChild(el('li', { class: 'muted', text: 'nothing recorded on this node' }));
    var asOf = 'as of ' + new Date().toLocaleTimeString('en-GB') + ', latest first';
    result.appendChild(el('div', { class: 'found' }, [facts, el('div', {}, [el('h3', { text: asOf }), timeline])]));
  }

  document.getElementById('lookup-form').addEventListener('submit', function (e) {
    e.preventDefault();
    var sid = document.getElementById('lookup-sid').value.trim();
    if (sid) lookup(sid);
  });

  // ----- the stream -------------------------------------------------------------------------

  function setStatus(live, text) {
    var status = document.getElementById('status');
    status.dataset.state = live ? 'live' : 'down';
    status.querySelector('span').textContent = text;
  }

  function connect() {
    var stream = new EventSource(base + '/stream');
    stream.addEventListener('history', function (e) {
      var history = JSON.parse(e.data);
      state.fields = history.fields;
      state.points = history.points;
      redraw();
    });
    stream.addEventListener('tick', function (e) {
      var tick = JSON.parse(e.data);
      state.tick = tick;
      state.ticks++;
      state.lastTickAt = Date.now();
      if (tick.point) {
        var last = state.points[state.points.length - 1];
        if (!last || last[0] !== tick.point[0]) state.points.push(tick.point);
        while (state.points.length > WINDOW) state.points.shift();
        redraw();
      }
      render(tick);
      setStatus(true, 'live');
    });
    stream.onerror = function () {
      setStatus(false, stream.readyState === EventSource.CLOSED ? 'disconnected' : 'reconnecting');
      if (stream.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
    };
  }

  document.getElementById('host').textContent = location.host;

  setInterval(function () {
    if (state.lastTickAt && Date.now() - state.lastTickAt > 3500) setStatus(false, 'stale');
  }, 1000);

  // Transports stacked (WebSocket at the bottom), under the session count: the gap between
  // the top band and the dashed line is the sessions between transports.
  chart('chart-sessions', 250, ['sessions', 'websocket', 'sse', 'polling'], [
    line('all sessions', color('total'), { dash: [6, 4], width: 1.5 }),
    line('WebSocket', color('websocket'), { fill: color('websocket') + '55' }),
    line('SSE', color('sse')),
    line('polling', color('polling')),
  ], { from: 1, bands: [{ series: [3, 2], fill: color('sse') + '55' }, { series: [4, 3], fill: color('polling') + '55' }] });
  chart('chart-minute', 160, ['attaches_per_min', 'resumes_per_min', 'fallbacks_per_min', 'upgrades_per_min'], [
    line('attaches (right axis)', color('attach'), { scale: 'r', width: 1.5 }),
    line('resumes', color('sse')),
    line('fallbacks', color('down')),
    line('upgrades', color('up')),
  ]);
  chart('chart-events', 160, ['in_per_s', 'out_per_s'], [
    line('in', color('websocket'), { fill: fill(color('websocket')) }),
    line('out', color('attach'), { fill: fill(color('attach')) }),
  ]);
  connect();
})();

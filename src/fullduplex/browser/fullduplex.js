// fullduplex.js: a browser client for fullduplex's pub/sub transports that never loses a message.
//
// No build step, nothing from a CDN. This file is the single source: loaded as a classic script
// (<script src="/fullduplex.js">) it defines `window.fullduplex`; `fullduplex.mjs` imports it and
// re-exports the same objects as an ES module; `fullduplex.d.ts` declares the types.
//
//   const client = new fullduplex.Client("", { token: "..." });   // "" = this page's server
//   client.subscribe("ticker", { onMessage: (m) => show(m.seq, m.data), onGap: (g) => warn(g) });
//   client.on("state", (s) => badge(s.state, s.transport));
//   const ack = await client.publish("chat", { text: "hi" });       // {topic, seq, time}
//
// What it does (protocol: docs/transports.md; this library: docs/clients.md):
//
// * Transports, best first: WebSocket (/pubsub), Server-Sent Events (/sse, read with fetch so
//   the library sees heartbeats and sends its token in a header), long polling (/longpoll), short
//   polling (/poll). A transport that fails to open (an upgrade refused by a proxy, a stream that
//   never delivers its first bytes within `openTimeout`) makes the client try the next one at
//   once; the one that failed is skipped for `upgradeInterval`, after which the client probes it
//   in the background and moves back up when it opens.
// * Every topic keeps a cursor: the seq of the last message, or first_available - 1 after a gap.
//   Every (re)connection resumes every topic from its cursor, on whatever transport. A message
//   at or below the cursor is a duplicate and is dropped, so switching transports never shows a
//   message twice. Gaps (history trimmed, a slow consumer's dropped messages, a topic reset) go
//   to the application as "gap" events.
// * Reconnection: exponential backoff with full jitter (delay = random(0, min(maxDelay,
//   minDelay * 2^attempt)), the AWS Architecture Blog's "Exponential Backoff And Jitter", also
//   centrifuge-js's choice). A server that says it is restarting (close code 1012, RFC 6455 7.4.1
//   via the IANA registry "Service Restart"; or an event stream that ends cleanly) is retried
//   after random(0, restartJitter): a restart brings every client back, spread out.
// * Heartbeat: on WebSocket a {"op":"ping"} after `heartbeatInterval` of silence; no answer
//   within `heartbeatTimeout` means the connection is dead (a NAT or proxy dropped it silently).
//   An event stream gets the server's ":" comment every 15 s: `sseTimeout` of silence is dead.
//   Polls have a request timeout.
// * Dropped for slowness: a page too busy to read falls behind the server's feed, and a topic
//   with the "disconnect" policy drops it (a reset: the close frame would wait behind what it did
//   not read). The WebSocket and the event stream say hello when they open, with the id of the
//   previous connection; the server's answer names the new one and, if it dropped the previous
//   one, says why: a "drop" event {reason: "slow consumer", code, topic, time, transport} and
//   client.lastDrop. A network failure never fires it.
// * Publishing: publish() resolves with the message's {topic, seq, time} once the server
//   acknowledged it. Each publish carries an idempotency key; until it is acknowledged it is
//   sent again on every reconnection (or HTTP retry), and the server publishes a key once.
//
// The state machine (client.state; every change fires a "state" event {state, transport, ...}):
//
//   idle --connect()--> connecting --a transport opened--> open
//    ^                  |    ^  |                           |
//    |                  |    |  +-all transports failed--+  +--connection lost--+
//    |                  |    |                           v                      v
//    |                  |    +------backoff timer------ reconnecting <----------+
//    |                  +--close()--> closed <--close()--+ (from any state)
//
//   connecting: trying the transports in order (skipping those failed recently), one at a time.
//   open: one transport carries every topic; `client.transport` names it.
//   reconnecting: waiting out the backoff delay before the next connecting round.
//   closed: close() was called; nothing runs any more.
(function (root) {
  "use strict";

  var TRANSPORTS = ["websocket", "sse", "longpoll", "poll"];
  // RFC 6455 7.4.1 and the IANA WebSocket Close Code Number Registry: 1012 Service Restart,
  // 1013 Try Again Later. Both ask the client to come back.
  var SERVICE_RESTART = 1012;
  var TRY_AGAIN_LATER = 1013;

  var DEFAULTS = {
    transports: TRANSPORTS,
    minDelay: 500, // ms: the backoff base
    maxDelay: 20000, // ms: the backoff cap
    restartJitter: 5000, // ms: spread of reconnections after a server restart
    openTimeout: 10000, // ms: a transport that does not open in this time failed
    upgradeInterval: 30000, // ms: how long a failed transport is skipped before a probe
    heartbeatInterval: 15000, // ms of WebSocket silence before a ping
    heartbeatTimeout: 10000, // ms to wait for the pong
    sseTimeout: 40000, // ms of event-stream silence (the server's heartbeat is 15 s)
    longpollTimeout: 40000, // ms: the server holds a long poll 30 s
    pollInterval: 1000, // ms between short polls
    token: null, // a string, or a function returning one (or a promise of one)
    autoConnect: true,
    // Traffic accounting, off by default (null): a function called with {transport, kind, ...}:
    // kind "request" {url} for every HTTP request and WebSocket opened, kind "data" {bytes} for
    // every WebSocket message (UTF-8 bytes of its text) and event-stream chunk (body bytes).
    onWire: null,
  };

  // -- small helpers ------------------------------------------------------------------------

  function fullJitter(attempt, min, max) {
    var ceiling = Math.min(max, min * Math.pow(2, Math.min(attempt, 30)));
    return Math.random() * ceiling;
  }

  function randomKey() {
    var bytes = new Uint8Array(16);
    root.crypto.getRandomValues(bytes);
    var hex = "";
    for (var i = 0; i < bytes.length; i++) hex += (bytes[i] + 256).toString(16).slice(1);
    return hex;
  }

  function sleep(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function httpBase(base) {
    var href = root.location ? root.location.href : "http://localhost/";
    return new URL(base.replace(/\/+$/, "") + "/", href);
  }

  var utf8 = typeof TextEncoder !== "undefined" ? new TextEncoder() : null;

  // The onWire hook (see DEFAULTS): nothing is measured unless the page asked for it.
  function wire(client, transport, kind, value) {
    var hook = client.options.onWire;
    if (!hook) return;
    var event = { transport: transport, kind: kind };
    if (kind === "request") event.url = String(value);
    else event.bytes = typeof value === "string" ? (utf8 ? utf8.encode(value).length : value.length) : value;
    try { hook(event); } catch (err) { setTimeout(function () { throw err; }); }
  }

  // A failure to open: the client tries the next transport at once.
  function OpenError(message) { this.message = message; }
  OpenError.prototype = Object.create(Error.prototype);
  OpenError.prototype.name = "OpenError";

  // -- the transports -------------------------------------------------------------------------
  // Each has start(): a promise that resolves once it is open and rejects if it fails to open;
  // then it calls client._receive(item) per item and client._lost(transport, info) once when it
  // ends; stop() ends it silently. Topic changes: add(topic) / remove(topic).

  function WebSocketTransport(client, url) {
    this.name = "websocket";
    this.client = client;
    this.url = url;
    this.ws = null;
    this.stopped = false;
    this.lastSeen = 0;
    this.timer = null;
  }

  WebSocketTransport.prototype.start = function () {
    var self = this, client = this.client;
    return new Promise(function (resolve, reject) {
      var opened = false;
      var ws;
      try { ws = new WebSocket(self.url); } catch (err) { reject(new OpenError(String(err))); return; }
      self.ws = ws;
      wire(client, "websocket", "request", self.url);
      var deadline = setTimeout(function () {
        if (!opened) { ws.close(); reject(new OpenError("websocket: open timeout")); }
      }, client.options.openTimeout);
      ws.onopen = function () {
        opened = true;
        clearTimeout(deadline);
        self.lastSeen = Date.now();
        // First, so that its answer comes before any message: was the last connection dropped?
        var hello = client._helloRequest();
        if (hello) self.send(hello);
        client._ready().forEach(function (topic) { self.add(topic); });
        client._flushPublishes(self);
        self.beat();
        resolve();
      };
      ws.onmessage = function (ev) {
        self.lastSeen = Date.now();
        wire(client, "websocket", "data", ev.data);
        var item;
        try { item = JSON.parse(ev.data); } catch (err) { return; }
        if (item.pong !== undefined) return;
        if (item.hello !== undefined) { client._hello(item, self); return; }
        client._receive(item, self);
      };
      ws.onclose = function (ev) {
        clearTimeout(deadline);
        clearTimeout(self.timer);
        if (!opened) { reject(new OpenError("websocket: closed before open (" + ev.code + ")")); return; }
        if (!self.stopped) client._lost(self, { code: ev.code, reason: ev.reason });
      };
    });
  };

  // The application-level heartbeat: a ping after heartbeatInterval of silence.
  WebSocketTransport.prototype.beat = function () {
    var self = this, opts = this.client.options;
    this.timer = setTimeout(function check() {
      var quiet = Date.now() - self.lastSeen;
      if (quiet >= opts.heartbeatInterval + opts.heartbeatTimeout) {
        // Dead: report it now (a close handshake on a dead connection would wait for a timeout).
        self.stopped = true;
        self.ws.close(4000, "heartbeat timeout");
        self.client._lost(self, { reason: "heartbeat timeout" });
        return;
      }
      if (quiet >= opts.heartbeatInterval) self.send({ op: "ping" });
      var wait = quiet >= opts.heartbeatInterval ? opts.heartbeatTimeout : opts.heartbeatInterval - quiet;
      self.timer = setTimeout(check, Math.max(50, wait));
    }, opts.heartbeatInterval);
  };

  WebSocketTransport.prototype.send = function (obj) {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(obj));
  };

  WebSocketTransport.prototype.add = function (topic) {
    this.send({ op: "subscribe", topic: topic, since: this.client.topics[topic].cursor });
  };

  WebSocketTransport.prototype.remove = function (topic) {
    this.send({ op: "unsubscribe", topic: topic });
  };

  WebSocketTransport.prototype.publish = function (entry) {
    this.send({ op: "publish", topic: entry.topic, data: entry.data, id: entry.id, key: entry.key });
  };

  WebSocketTransport.prototype.stop = function () {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
  };

  // Server-Sent Events, read with fetch: the library sees the heartbeat comments, sends its token
  // in a header, and reopens the stream itself when the topics change.
  function EventStreamTransport(client, base) {
    this.name = "sse";
    this.client = client;
    this.base = base;
    this.abort = null;
    this.stopped = false;
    this.retryHint = 0;
    this.run = null;
  }

  EventStreamTransport.prototype.url = function () {
    var url = new URL("sse", this.base), topics = this.client.topics;
    var ready = this.client._ready();
    var ids = ready.map(function (topic) {
      url.searchParams.append("topic", topic);
      return topic + ":" + topics[topic].cursor;
    });
    url.searchParams.set("since", ids.join(",")); // every topic's cursor: "t1:17,t2:42"
    var hello = this.client._helloRequest();
    if (hello) {
      url.searchParams.set("hello", "1"); // the stream starts with a "hello" event
      if (hello.previous) url.searchParams.set("previous", hello.previous);
    }
    return url;
  };

  EventStreamTransport.prototype.start = function () {
    var self = this, client = this.client, opts = client.options;
    if (!client._ready().length) return Promise.resolve(); // nothing to stream yet
    var controller = new AbortController();
    var run = this.run = {};
    this.abort = controller;
    return new Promise(function (resolve, reject) {
      var opened = false;
      var watchdog = setTimeout(function () { controller.abort(); }, opts.openTimeout);
      var fail = function (why) {
        clearTimeout(watchdog);
        if (!opened) reject(new OpenError("sse: " + why));
        else if (!self.stopped && self.run === run) client._lost(self, { reason: why, restart: why === "ended" });
      };
      client._headers().then(function (headers) {
        headers.Accept = "text/event-stream";
        var url = self.url();
        wire(client, "sse", "request", url);
        return fetch(url, { headers: headers, cache: "no-store", signal: controller.signal });
      }).then(function (response) {
        if (response.status >= 400) {
          client._httpError(response.status);
          throw new OpenError("HTTP " + response.status);
        }
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var parser = new SSEParser(function (event) { if (self.run === run) self.event(event); });
        var pump = function () {
          return reader.read().then(function (chunk) {
            if (chunk.done) { fail("ended"); return; }
            clearTimeout(watchdog);
            wire(client, "sse", "data", chunk.value.length);
            if (!opened) { opened = true; resolve(); }
            watchdog = setTimeout(function () { controller.abort(); }, opts.sseTimeout);
            parser.feed(decoder.decode(chunk.value, { stream: true }));
            if (parser.retry !== null) self.retryHint = parser.retry;
            return pump();
          });
        };
        return pump();
      }).catch(function (err) { fail(err && err.name === "AbortError" ? "timeout" : String(err && err.message || err)); });
    });
  };

  EventStreamTransport.prototype.event = function (event) {
    var topics = this.client.topics;
    if (event.type === "hello") {
      var greeting;
      try { greeting = JSON.parse(event.data); } catch (err) { return; }
      this.client._hello(greeting, this);
      return;
    }
    if (event.data === "") {
      // The id-only block at the start: "now" as a cursor, for the topics that had none.
      var parts = event.id.split(",");
      for (var i = 0; i < parts.length; i++) {
        var kv = parts[i].split(":");
        var topic = kv.length === 2 ? kv[0] : Object.keys(topics)[0];
        var seq = Number(kv[kv.length - 1]);
        if (topics[topic] && topics[topic].cursor === null && Number.isFinite(seq)) topics[topic].cursor = seq;
      }
      return;
    }
    var item;
    try { item = JSON.parse(event.data); } catch (err) { return; }
    this.client._receive(item, this);
  };

  EventStreamTransport.prototype.restart = function () {
    // A topic was added or removed: reopen the stream with every cursor (the old stream's
    // late events and end are ignored: they belong to an old run).
    var self = this;
    this.run = null;
    if (this.abort) this.abort.abort();
    this.start().catch(function (err) { if (!self.stopped) self.client._lost(self, { reason: err.message }); });
  };
  EventStreamTransport.prototype.add = EventStreamTransport.prototype.restart;
  EventStreamTransport.prototype.remove = EventStreamTransport.prototype.restart;

  EventStreamTransport.prototype.stop = function () {
    this.stopped = true;
    if (this.abort) this.abort.abort();
  };

  // The text/event-stream format (WHATWG HTML 9.2.6): lines end with CRLF, LF or CR; a blank
  // line dispatches; "field: value"; lines starting with ":" are comments.
  function SSEParser(dispatch) {
    this.dispatch = dispatch;
    this.buffer = "";
    this.data = [];
    this.id = "";
    this.type = "";
    this.retry = null;
    this.seen = false; // a data or id line in this block
  }

  SSEParser.prototype.feed = function (text) {
    var buffer = this.buffer + text;
    var lines = buffer.split(/\r\n|\r|\n/);
    // A trailing CR could be the first half of CRLF: keep it with the incomplete last line.
    this.buffer = lines.pop();
    if (buffer.charAt(buffer.length - 1) === "\r") { lines.pop(); this.buffer = "\r"; }
    for (var i = 0; i < lines.length; i++) this.line(lines[i]);
  };

  SSEParser.prototype.line = function (line) {
    if (line === "" || line === "\r") {
      if (this.seen) this.dispatch({ type: this.type || "message", id: this.id, data: this.data.join("\n") });
      this.data = [];
      this.type = "";
      this.seen = false;
      return;
    }
    if (line.charAt(0) === ":") return;
    var colon = line.indexOf(":");
    var field = colon < 0 ? line : line.slice(0, colon);
    var value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.charAt(0) === " ") value = value.slice(1);
    if (field === "data") { this.data.push(value); this.seen = true; }
    else if (field === "id") { this.id = value; this.seen = true; }
    else if (field === "event") this.type = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  };

  // Long and short polling: one request loop per topic. The first request of every topic is a
  // short poll, which answers at once: it opens the transport (or fails it) and gives topics
  // without a cursor the current one.
  function PollingTransport(client, base, name) {
    this.name = name;
    this.client = client;
    this.base = base;
    this.loops = {};
    this.stopped = false;
  }

  PollingTransport.prototype.request = function (path, topic, since, timeout) {
    var client = this.client, url = new URL(path, this.base), name = this.name;
    url.searchParams.set("topic", topic);
    if (since !== null) url.searchParams.set("since", String(since));
    wire(client, name, "request", url);
    var controller = new AbortController();
    var timer = setTimeout(function () { controller.abort(); }, timeout);
    return client._headers().then(function (headers) {
      return fetch(url, { headers: headers, cache: "no-store", signal: controller.signal });
    }).then(function (response) {
      if (response.status >= 400) {
        client._httpError(response.status);
        throw new OpenError("HTTP " + response.status);
      }
      return response.json();
    }).finally(function () { clearTimeout(timer); });
  };

  PollingTransport.prototype.deliver = function (topic, reply) {
    var entry = this.client.topics[topic];
    if (!entry) return;
    for (var i = 0; i < reply.messages.length; i++) this.client._receive(reply.messages[i], this);
    if (entry.cursor === null || reply.cursor > entry.cursor) entry.cursor = reply.cursor;
  };

  PollingTransport.prototype.start = function () {
    var self = this, opts = this.client.options, topics = this.client._ready();
    var first = topics.map(function (topic) {
      return self.request("poll", topic, self.client.topics[topic].cursor, opts.openTimeout)
        .then(function (reply) { self.deliver(topic, reply); });
    });
    return Promise.all(first).then(function () {
      for (var i = 0; i < topics.length; i++) self.loop(topics[i]);
    }, function (err) { throw new OpenError(self.name + ": " + (err && err.message || err)); });
  };

  PollingTransport.prototype.loop = function (topic) {
    var self = this, opts = this.client.options, token = {};
    this.loops[topic] = token;
    var long = this.name === "longpoll";
    var next = function () {
      if (self.stopped || self.loops[topic] !== token) return;
      var entry = self.client.topics[topic];
      if (!entry) return;
      var path = long ? "longpoll" : "poll";
      var timeout = long ? opts.longpollTimeout : opts.openTimeout;
      self.request(path, topic, entry.cursor, timeout).then(function (reply) {
        if (self.stopped || self.loops[topic] !== token) return;
        self.deliver(topic, reply);
        return long ? null : sleep(opts.pollInterval);
      }).then(next, function (err) {
        if (!self.stopped && self.loops[topic] === token) self.client._lost(self, { reason: String(err && err.message || err) });
      });
    };
    if (long) next(); else sleep(opts.pollInterval).then(next);
  };

  PollingTransport.prototype.add = function (topic) {
    var self = this;
    this.request("poll", topic, this.client.topics[topic].cursor, this.client.options.openTimeout)
      .then(function (reply) { self.deliver(topic, reply); self.loop(topic); },
        function (err) { if (!self.stopped) self.client._lost(self, { reason: String(err && err.message || err) }); });
  };

  PollingTransport.prototype.remove = function (topic) { delete this.loops[topic]; };

  PollingTransport.prototype.stop = function () { this.stopped = true; this.loops = {}; };

  // -- the client -----------------------------------------------------------------------------

  /**
   * A client of one server's transports (see fullduplex.d.ts for the full documentation).
   * @param {string} [base] where the transports are mounted: "" for this page's server, or a
   *     prefix ("/rt") or an absolute URL ("https://example.com/rt").
   * @param {object} [options] see DEFAULTS above.
   */
  function Client(base, options) {
    this.options = Object.assign({}, DEFAULTS, options || {});
    this.base = httpBase(base || "");
    this.state = "idle";
    this.transport = null; // the name of the open transport
    this.topics = {}; // topic -> {cursor, subscriptions: [handlers]}
    this.listeners = {}; // event -> [functions]
    this.attempt = 0; // failed connecting rounds in a row (the backoff exponent)
    this.skipUntil = {}; // transport -> time before which it is not tried (it failed to open)
    this.current = null; // the open (or opening) transport object
    this.pending = []; // publishes not yet acknowledged: {id, key, topic, data, resolve, reject}
    this.nextId = 1;
    this.timer = null; // the reconnection or probe timer
    this.generation = 0; // bumped by every connecting round: late callbacks of old rounds are ignored
    this.connectionId = null; // the server's name of the current (or last) connection: its hello
    this.lastDrop = null; // why the server last dropped this client, from the next connection's hello
    var self = this;
    if (this.options.autoConnect) Promise.resolve().then(function () { if (self.state === "idle") self.connect(); });
  }

  Client.prototype.on = function (event, fn) {
    (this.listeners[event] = this.listeners[event] || []).push(fn);
    var list = this.listeners[event];
    return function off() { var i = list.indexOf(fn); if (i >= 0) list.splice(i, 1); };
  };

  Client.prototype._emit = function (event, value) {
    var list = (this.listeners[event] || []).slice();
    for (var i = 0; i < list.length; i++) {
      try { list[i](value); } catch (err) { setTimeout(function () { throw err; }); }
    }
  };

  Client.prototype._setState = function (state, extra) {
    this.state = state;
    this._emit("state", Object.assign({ state: state, transport: this.transport, attempt: this.attempt }, extra || {}));
  };

  /** Subscribe to a topic; `since` resumes after that seq (0: all the history kept). */
  Client.prototype.subscribe = function (topic, handlers) {
    handlers = handlers || {};
    var entry = this.topics[topic];
    var fresh = !entry;
    if (fresh) {
      var since = handlers.since === undefined ? null : handlers.since;
      entry = this.topics[topic] = { cursor: since, subscriptions: [] };
    }
    entry.subscriptions.push(handlers);
    if (fresh && entry.cursor === null) this._resolve(topic);
    else if (fresh && this.current && this.state === "open") this.current.add(topic);
    var self = this;
    return {
      topic: topic,
      get cursor() { return self.topics[topic] ? self.topics[topic].cursor : null; },
      unsubscribe: function () { self._unsubscribe(topic, handlers); },
    };
  };

  Client.prototype._unsubscribe = function (topic, handlers) {
    var entry = this.topics[topic];
    if (!entry) return;
    entry.subscriptions = entry.subscriptions.filter(function (h) { return h !== handlers; });
    if (entry.subscriptions.length) return;
    delete this.topics[topic];
    if (this.current && this.state === "open") this.current.remove(topic);
  };

  // The topics with a cursor: the transports carry those. A topic subscribed "from now" gets
  // its cursor first (a short poll answers with the topic's last seq), so that even a
  // reconnection before its first message resumes it exactly.
  Client.prototype._ready = function () {
    var topics = this.topics;
    return Object.keys(topics).filter(function (topic) { return topics[topic].cursor !== null; });
  };

  Client.prototype._resolve = function (topic) {
    var self = this, entry = this.topics[topic];
    if (!entry || entry.cursor !== null || entry.resolving) return;
    entry.resolving = true;
    var url = new URL("poll", this.base);
    url.searchParams.set("topic", topic);
    this._headers().then(function (headers) {
      return fetch(url, { headers: headers, cache: "no-store" });
    }).then(function (response) {
      if (!response.ok) { self._httpError(response.status); throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (reply) {
      entry.resolving = false;
      if (self.topics[topic] !== entry || entry.cursor !== null) return;
      entry.cursor = reply.cursor;
      if (self.current && self.state === "open") self.current.add(topic);
    }, function () {
      entry.resolving = false; // tried again when a transport opens
    });
  };

  // The hello a WebSocket sends (an event stream puts it in its URL): the previous connection's
  // id, for the server to say whether it dropped it.
  Client.prototype._helloRequest = function () {
    return this.connectionId ? { op: "hello", previous: this.connectionId } : { op: "hello" };
  };

  // The answer: this connection's id, and "dropped" if the server dropped the previous one.
  Client.prototype._hello = function (item, transport) {
    if (transport !== this.current || !item.hello) return;
    this.connectionId = item.hello.id;
    if (item.dropped) {
      this.lastDrop = item.dropped;
      this._emit("drop", item.dropped);
    }
  };

  /** The cursor of every topic: {topic: seq}. */
  Client.prototype.cursors = function () {
    var out = {};
    for (var topic in this.topics) out[topic] = this.topics[topic].cursor;
    return out;
  };

  // One item from any transport: a message, a gap, an acknowledgement or an error.
  Client.prototype._receive = function (item, transport) {
    if (transport !== this.current) return; // a transport being replaced
    if (item.ack !== undefined || (item.error !== undefined && item.id !== undefined)) { this._acknowledged(item); return; }
    if (item.error !== undefined) { this._emit("error", item); return; }
    var entry = this.topics[item.topic];
    if (!entry) return;
    var cursor = entry.cursor;
    if (item.gap) {
      var gap = item.gap, after = gap.first_available - 1;
      // A gap at or below the cursor was seen already, unless the topic was reset (numbered
      // from 1 again: the server says so with reason "reset").
      if (cursor !== null && after <= cursor && gap.reason !== "reset") return;
      entry.cursor = after;
      var event = { topic: item.topic, since: gap.since, first_available: gap.first_available, reason: gap.reason || "trimmed" };
      this._dispatch(entry, "onGap", event);
      this._emit("gap", event);
      return;
    }
    if (cursor !== null && item.seq <= cursor) return; // a duplicate after a switch or a resume
    entry.cursor = item.seq;
    this._dispatch(entry, "onMessage", item);
    this._emit("message", item);
  };

  Client.prototype._dispatch = function (entry, name, value) {
    var subs = entry.subscriptions.slice();
    for (var i = 0; i < subs.length; i++) {
      if (!subs[i][name]) continue;
      try { subs[i][name](value); } catch (err) { setTimeout(function () { throw err; }); }
    }
  };

  Client.prototype._headers = function () {
    var token = this.options.token;
    var value = typeof token === "function" ? token() : token;
    return Promise.resolve(value).then(function (t) {
      return t ? { Authorization: "Bearer " + t } : {};
    });
  };

  Client.prototype._httpError = function (status) {
    this._emit("error", { error: "HTTP " + status, status: status });
  };

  Client.prototype._make = function (name, token) {
    if (name === "websocket") {
      var url = new URL("pubsub", this.base);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      if (token) url.searchParams.set("token", token); // browsers cannot set WebSocket headers
      return new WebSocketTransport(this, url.href);
    }
    if (name === "sse") return new EventStreamTransport(this, this.base);
    return new PollingTransport(this, this.base, name);
  };

  // -- the state machine --------------------------------------------------------------------

  /** Start (or restart) connecting. Called on construction unless autoConnect is false. */
  Client.prototype.connect = function () {
    if (this.state === "closed") throw new Error("fullduplex: the client is closed");
    if (this.state === "connecting" || this.state === "open") return;
    clearTimeout(this.timer);
    this._round();
  };

  // connecting: try the transports best first, skipping those that failed to open recently.
  Client.prototype._round = function () {
    var self = this, gen = ++this.generation, now = Date.now();
    var ladder = this.options.transports.filter(function (name) { return !(self.skipUntil[name] > now); });
    if (!ladder.length) ladder = this.options.transports.slice(-1);
    var failed = [];
    this.transport = null;
    this._setState("connecting");
    var tokenValue = typeof this.options.token === "function" ? this.options.token() : this.options.token;
    Promise.resolve(tokenValue).then(function (token) {
      var tryAt = function (i) {
        if (gen !== self.generation) return;
        if (i >= ladder.length) { self._roundFailed(failed); return; }
        var transport = self._make(ladder[i], token);
        self.current = transport;
        transport.start().then(function () {
          if (gen !== self.generation) { transport.stop(); return; }
          self._opened(transport, failed);
        }, function (err) {
          transport.stop();
          if (gen !== self.generation) return;
          failed.push(transport.name);
          self._emit("error", { error: err && err.message || String(err), transport: transport.name });
          tryAt(i + 1);
        });
      };
      tryAt(0);
    });
  };

  // connecting -> open. The transports that failed before this one are skipped for a while,
  // then probed.
  Client.prototype._opened = function (transport, failed) {
    var now = Date.now(), opts = this.options;
    for (var i = 0; i < failed.length; i++) this.skipUntil[failed[i]] = now + opts.upgradeInterval;
    delete this.skipUntil[transport.name];
    this.attempt = 0;
    this.transport = transport.name;
    this._setState("open");
    if (transport.name !== "websocket") this._flushPublishes(transport);
    for (var topic in this.topics) this._resolve(topic);
    this._scheduleProbe();
  };

  // connecting -> reconnecting: nothing opened. The server is probably down, not a transport
  // blocked: forget the skips of this round (the next round starts from the best again).
  Client.prototype._roundFailed = function () {
    this.current = null;
    this.skipUntil = {};
    this._backoff(fullJitter(this.attempt, this.options.minDelay, this.options.maxDelay), {});
  };

  // open -> reconnecting: the open transport ended.
  Client.prototype._lost = function (transport, info) {
    if (transport !== this.current || this.state === "closed") return;
    transport.stop();
    this.current = null;
    this.transport = null;
    var restart = info.code === SERVICE_RESTART || info.code === TRY_AGAIN_LATER || info.restart;
    var delay;
    if (restart) {
      // The server asked us back: spread the reconnections over restartJitter (or the
      // event stream's retry hint, if larger) so a restart is not a storm.
      var window = Math.max(this.options.restartJitter, transport.retryHint || 0);
      delay = Math.random() * window;
    } else {
      delay = fullJitter(this.attempt, this.options.minDelay, this.options.maxDelay);
    }
    this._backoff(delay, info);
  };

  Client.prototype._backoff = function (delay, info) {
    var self = this;
    this.generation++;
    this.attempt++;
    clearTimeout(this.timer);
    this._setState("reconnecting", { delay: delay, code: info.code, reason: info.reason });
    this.timer = setTimeout(function () { self._round(); }, delay);
  };

  // open on a fallback transport: after upgradeInterval, probe the best skipped transport; if it
  // opens, move to it (the cursors make the switch exact).
  Client.prototype._scheduleProbe = function () {
    var self = this, opts = this.options;
    var better = opts.transports.slice(0, opts.transports.indexOf(this.transport));
    if (!better.length) return;
    var when = Math.min.apply(null, better.map(function (n) { return self.skipUntil[n] || 0; }));
    var gen = this.generation;
    clearTimeout(this.timer);
    this.timer = setTimeout(function () {
      if (gen !== self.generation || self.state !== "open") return;
      self._probe(better, gen);
    }, Math.max(0, when - Date.now()));
  };

  Client.prototype._probe = function (better, gen) {
    var self = this, token = typeof this.options.token === "function" ? this.options.token() : this.options.token;
    Promise.resolve(token).then(function (t) {
      var candidate = self._make(better[0], t);
      var probeClient = Object.create(self); // a probe sees no topics and delivers nothing
      probeClient.topics = {};
      probeClient._receive = function () {};
      probeClient._lost = function () {};
      probeClient._flushPublishes = function () {};
      probeClient._helloRequest = function () { return null; }; // nor takes the client's drop
      probeClient._hello = function () {};
      candidate.client = probeClient;
      var probe = candidate.name === "sse" ? self._probeHttp("sse") : candidate.start();
      probe.then(function () {
        candidate.stop();
        if (gen !== self.generation || self.state !== "open") return;
        // The better transport works: switch by a new round from the top.
        delete self.skipUntil[better[0]];
        self.current.stop();
        self.current = null;
        self.transport = null;
        self._round();
      }, function () {
        candidate.stop();
        if (gen !== self.generation) return;
        self.skipUntil[better[0]] = Date.now() + self.options.upgradeInterval;
        self._scheduleProbe();
      });
    });
  };

  // An event stream probe: the response must start within openTimeout.
  Client.prototype._probeHttp = function (path) {
    var opts = this.options, controller = new AbortController(), self = this;
    var topic = Object.keys(this.topics)[0] || "probe";
    var url = new URL(path, this.base);
    url.searchParams.set("topic", topic);
    var timer = setTimeout(function () { controller.abort(); }, opts.openTimeout);
    return this._headers().then(function (headers) {
      return fetch(url, { headers: headers, cache: "no-store", signal: controller.signal });
    }).then(function (response) {
      if (response.status >= 400) throw new OpenError("HTTP " + response.status);
      return response.body.getReader().read();
    }).then(function (chunk) {
      clearTimeout(timer);
      controller.abort();
      if (chunk.done) throw new OpenError("ended");
      return self;
    }, function (err) { clearTimeout(timer); throw err; });
  };

  /** Close for good: every transport and timer stops; pending publishes are rejected. */
  Client.prototype.close = function () {
    if (this.state === "closed") return;
    this.generation++;
    clearTimeout(this.timer);
    if (this.current) this.current.stop();
    this.current = null;
    this.transport = null;
    var pending = this.pending;
    this.pending = [];
    for (var i = 0; i < pending.length; i++) pending[i].reject(new Error("fullduplex: client closed"));
    this._setState("closed");
  };

  // -- publishing -----------------------------------------------------------------------------

  /**
   * Publish `data` to `topic`; resolves with {topic, seq, time} once the server acknowledged it.
   * Sent again after every reconnection until acknowledged; its idempotency key makes the server
   * publish it once.
   */
  Client.prototype.publish = function (topic, data) {
    var self = this;
    if (this.state === "closed") return Promise.reject(new Error("fullduplex: the client is closed"));
    return new Promise(function (resolve, reject) {
      var entry = { id: self.nextId++, key: randomKey(), topic: topic, data: data, resolve: resolve, reject: reject, sending: false };
      self.pending.push(entry);
      if (self.current && self.state === "open") self._send(entry, self.current);
    });
  };

  Client.prototype._flushPublishes = function (transport) {
    for (var i = 0; i < this.pending.length; i++) this._send(this.pending[i], transport);
  };

  Client.prototype._send = function (entry, transport) {
    if (transport.name === "websocket") { transport.publish(entry); return; }
    if (entry.sending) return;
    entry.sending = true;
    var self = this;
    this._headers().then(function (headers) {
      headers["Content-Type"] = "application/json";
      return fetch(new URL("publish", self.base), {
        method: "POST", headers: headers, cache: "no-store",
        body: JSON.stringify({ topic: entry.topic, data: entry.data, key: entry.key }),
      });
    }).then(function (response) {
      return response.json().then(function (body) {
        entry.sending = false;
        if (response.ok) { self._settle(entry, null, body); return; }
        if (response.status === 503) throw new Error("HTTP 503");
        self._settle(entry, new Error(body.error || "HTTP " + response.status), null);
      });
    }).catch(function () {
      // Not answered: send it again once a transport is open (same key: published once).
      entry.sending = false;
      var delay = fullJitter(1, self.options.minDelay, self.options.maxDelay);
      setTimeout(function () {
        if (self.pending.indexOf(entry) >= 0 && self.current && self.state === "open") self._send(entry, self.current);
      }, delay);
    });
  };

  Client.prototype._acknowledged = function (item) {
    for (var i = 0; i < this.pending.length; i++) {
      if (this.pending[i].id === item.id || this.pending[i].id === item.ack) {
        var entry = this.pending[i];
        if (item.error !== undefined) this._settle(entry, new Error(item.error), null);
        else this._settle(entry, null, { topic: item.topic, seq: item.seq, time: item.time });
        return;
      }
    }
  };

  Client.prototype._settle = function (entry, error, ack) {
    var i = this.pending.indexOf(entry);
    if (i < 0) return;
    this.pending.splice(i, 1);
    if (error) entry.reject(error); else entry.resolve(ack);
  };

  var api = {
    Client: Client,
    TRANSPORTS: TRANSPORTS.slice(),
    DEFAULTS: DEFAULTS,
    fullJitter: fullJitter,
    SSEParser: SSEParser,
    version: "1",
  };
  root.fullduplex = api;
})(typeof globalThis !== "undefined" ? globalThis : this);

/**
 * herald.js: the browser client of Herald. One file, no dependencies, no build step.
 *
 * Load it as a classic script (`<script src="/herald.js">` defines `Herald`) or as an ES module
 * (`import Herald from "/herald.mjs"`). Types are in `/herald.d.ts`.
 *
 *     const h = Herald.connect("https://push.example.com");
 *     h.subscribe("orders", (event) => console.log(event.offset, event.data));
 *     const check = await h.createCheck({kind: "delay", params: {ms: 500}});
 *     h.on("transport", (name) => console.log("now on", name));
 *
 * How it connects (docs/client.md has the diagram): the transports race, the best at once and
 * the next ones after short delays; one counts as working only when a message reaches the
 * page (a WebSocket pong, a stream's `herald.welcome`, a poll's answer), so a proxy that
 * swallows frames or buffers a stream loses the race. The winner is remembered per origin in
 * localStorage, tried first next time and re-verified; a fallback is upgraded when WebSocket
 * works again. Every channel resumes from its last `(epoch, offset)` across switches and
 * reconnects: no gap, no duplicate; a lost position is one `gap` event with the fresh
 * snapshot. Tabs of one origin share one connection (Web Locks + BroadcastChannel).
 */
(function (root) {
  "use strict";

  /** Every transport, best first. */
  const TRANSPORTS = ["websocket", "sse", "xhr_streaming", "iframe", "xhr_polling", "jsonp_polling", "polling"];

  const DEFAULTS = {
    transports: TRANSPORTS,
    raceDelay: 300, // ms between starting one candidate and the next
    verifyTimeout: 5000, // ms a candidate has to show a message, else it is dropped
    heartbeat: 15, // s: the server's heartbeat; silence for 2x + 5 s means the connection is dead
    pollWait: 25, // s a long poll is held
    pollInterval: 2000, // ms between plain polls
    backoffInitial: 250, // ms before the first reconnect
    backoffMax: 10000, // ms, the cap of the exponential backoff (never given up)
    cacheTTL: 3600, // s the remembered transport stays valid
    upgradeDelay: 3000, // ms after connecting on a fallback before WebSocket is re-tried
    upgradeInterval: 60000, // ms between further upgrade attempts
    streamMaxBytes: 1 << 20, // bytes an XHR stream or an iframe may grow before it is reopened
    share: true, // one connection for all tabs of the origin
    storage: null, // a Storage for the transport cache; default localStorage
  };

  const now = () => Date.now();
  const jitter = (ms) => Math.round(ms * (0.5 + Math.random() / 2));

  function baseURL(url) {
    const base = new URL(url || "/", root.location ? root.location.href : undefined);
    return base.origin + base.pathname.replace(/\/+$/, "");
  }

  function channelURL(base, channel, query) {
    const search = Object.keys(query)
      .filter((key) => query[key] !== undefined && query[key] !== null)
      .map((key) => key + "=" + encodeURIComponent(query[key]))
      .join("&");
    return base + "/api/v1/channels/" + encodeURIComponent(channel) + "/events" + (search ? "?" + search : "");
  }

  /** The stream position query of a channel: `since`/`epoch`, or none (from now). */
  function positionQuery(position) {
    return position && position.offset !== null ? { since: position.offset, epoch: position.epoch || undefined } : {};
  }

  class Emitter {
    constructor() {
      this._listeners = {};
    }
    on(name, fn) {
      (this._listeners[name] = this._listeners[name] || new Set()).add(fn);
      return () => this._listeners[name].delete(fn);
    }
    _emit(name, value) {
      for (const fn of this._listeners[name] || []) {
        try {
          fn(value);
        } catch (error) {
          setTimeout(() => {
            throw error;
          });
        }
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Transports. Each reports through `link`: `message(transport, msg)` for events and markers
  // (`herald.welcome`, `herald.reset`, `herald.heartbeat`), `closed(transport, reason)` once.
  // ---------------------------------------------------------------------------------------

  class Transport {
    constructor(name, link) {
      this.name = name;
      this.link = link;
      this.closedFlag = false;
    }
    deliver(msg) {
      if (!this.closedFlag) this.link.message(this, msg);
    }
    fail(reason) {
      if (this.closedFlag) return;
      this.close();
      this.link.closed(this, reason);
    }
    count(bytes) {
      this.link.stats.bytes += bytes;
    }
    request() {
      this.link.stats.requests += 1;
    }
  }

  class WebSocketTransport extends Transport {
    open(channels) {
      const url = this.link.base.replace(/^http/, "ws") + "/api/v1/ws";
      const Socket = this.link.available("websocket");
      if (!Socket) return this.fail("WebSocket is not available");
      this.request();
      const socket = (this.socket = new Socket(url));
      this.pending = channels;
      this.nextID = 1;
      socket.onopen = () => this.send({ op: "ping", id: 0 });
      socket.onmessage = (message) => this.receive(message.data);
      socket.onerror = () => this.fail("WebSocket error");
      socket.onclose = (close) => this.fail("WebSocket closed (" + close.code + ")");
    }
    send(frame) {
      if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(frame));
    }
    receive(text) {
      this.count(text.length);
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (error) {
        return;
      }
      switch (frame.op) {
        case "pong":
          if (frame.id === 0) {
            // The first message proves frames flow both ways; now subscribe.
            this.deliver({ type: "herald.welcome", channel: null });
            const channels = [...this.pending.keys()];
            this.pending = null;
            // From where the link is now: another transport may have moved it on meanwhile.
            for (const channel of channels) this.subscribe(channel, this.link.position(channel));
          } else {
            this.deliver({ type: "herald.heartbeat", channel: null });
          }
          break;
        case "subscribed":
        case "reset": // the loss signal on a live subscription
          this.deliver({
            type: frame.recovered ? "herald.welcome" : "herald.reset",
            channel: frame.channel,
            epoch: frame.epoch,
            next: frame.offset,
            recovered: frame.recovered,
          });
          break;
        case "event":
          delete frame.op;
          this.deliver(frame);
          break;
        case "error":
          this.link.error(this, frame);
          break;
      }
    }
    subscribe(channel, position) {
      if (this.pending) return this.pending.set(channel, position);
      this.send(Object.assign({ op: "subscribe", channel: channel, id: this.nextID++ }, positionQuery(position)));
    }
    unsubscribe(channel) {
      if (this.pending) return this.pending.delete(channel);
      this.send({ op: "unsubscribe", channel: channel, id: this.nextID++ });
    }
    ping() {
      this.send({ op: "ping", id: this.nextID++ });
    }
    close() {
      this.closedFlag = true;
      if (this.socket) {
        this.socket.onopen = this.socket.onmessage = this.socket.onerror = this.socket.onclose = null;
        try {
          this.socket.close();
        } catch (error) {}
      }
    }
  }

  /** A transport with one request or stream per channel. */
  class PerChannelTransport extends Transport {
    open(channels) {
      this.channels = new Map();
      if (channels.size === 0) {
        // Nothing to prove flow with yet: count as open and wait for a subscription.
        this.deliver({ type: "herald.welcome", channel: null });
      }
      for (const [channel, position] of channels) this.subscribe(channel, position);
    }
    subscribe(channel, position) {
      if (this.closedFlag || this.channels.has(channel)) return;
      const lane = { channel: channel, stopped: false };
      this.channels.set(channel, lane);
      this.start(lane, position);
    }
    unsubscribe(channel) {
      const lane = this.channels.get(channel);
      if (!lane) return;
      this.channels.delete(channel);
      lane.stopped = true;
      this.stop(lane);
    }
    close() {
      this.closedFlag = true;
      for (const lane of this.channels ? this.channels.values() : []) {
        lane.stopped = true;
        this.stop(lane);
      }
    }
    /** The stream query: the position, `welcome=1`, and a heartbeat short enough for the path. */
    streamQuery(format, position) {
      return Object.assign({ format: format, welcome: 1, heartbeat: this.link.heartbeatSeconds() }, positionQuery(position));
    }
    /** Reopens a lane from its channel's current position (a stream grew too large). */
    restart(lane) {
      this.stop(lane);
      if (this.closedFlag || lane.stopped) return;
      this.start(lane, this.link.position(lane.channel));
    }
  }

  class SSETransport extends PerChannelTransport {
    start(lane, position) {
      const Source = this.link.available("sse");
      if (!Source) return this.fail("EventSource is not available");
      this.request();
      const source = (lane.source = new Source(channelURL(this.link.base, lane.channel, this.streamQuery("sse", position))));
      // With welcome=1 every message is a plain `message` whose JSON carries its type.
      source.onmessage = (message) => {
        this.count(message.data.length);
        this.deliver(JSON.parse(message.data));
      };
      // A check's stream ends after its terminal event; that is no failure.
      source.onerror = () => (this.link.ended(lane.channel) ? this.stop(lane) : this.fail("EventSource error"));
    }
    stop(lane) {
      if (lane.source) {
        lane.source.onmessage = lane.source.onerror = null;
        lane.source.close();
      }
    }
  }

  class XHRStreamingTransport extends PerChannelTransport {
    start(lane, position) {
      this.request();
      const xhr = (lane.xhr = new XMLHttpRequest());
      let seen = 0;
      const read = () => {
        const text = xhr.responseText;
        let end;
        while ((end = text.indexOf("\n", seen)) >= 0) {
          const line = text.slice(seen, end);
          seen = end + 1;
          this.count(line.length + 1);
          // A blank line is the heartbeat of streams opened without welcome=1.
          if (line.trim()) this.deliver(JSON.parse(line));
          if (lane.stopped) return;
        }
        // responseText only grows: reopen from the position before it holds too much.
        if (seen > this.link.options.streamMaxBytes) this.restart(lane);
      };
      xhr.open("GET", channelURL(this.link.base, lane.channel, this.streamQuery("ndjson", position)));
      xhr.setRequestHeader("Accept", "application/x-ndjson");
      xhr.onprogress = read;
      xhr.onload = () => {
        read();
        // A check's stream ends after its terminal event; anything else ending is a cut.
        if (!lane.stopped && !this.link.ended(lane.channel)) this.fail("stream ended (" + xhr.status + ")");
      };
      xhr.onerror = () => this.fail("XHR stream error");
      xhr.send();
    }
    stop(lane) {
      if (lane.xhr) {
        lane.xhr.onprogress = lane.xhr.onload = lane.xhr.onerror = null;
        lane.xhr.abort();
      }
    }
  }

  /** Forever-iframe: a hidden iframe whose document is the stream; its scripts call `parent.heraldEvent(msg, tag)`. */
  class IFrameTransport extends PerChannelTransport {
    start(lane, position) {
      const document = root.document;
      if (!document || !document.body) return this.fail("no document to hold an iframe");
      installFrameDispatcher();
      this.request();
      lane.tag = "h" + Math.random().toString(36).slice(2);
      lane.bytes = 0;
      frames.set(lane.tag, (msg) => {
        const size = JSON.stringify(msg).length;
        this.count(size);
        lane.bytes += size;
        this.deliver(msg);
        if (lane.bytes > this.link.options.streamMaxBytes) this.restart(lane);
      });
      const frame = (lane.frame = document.createElement("iframe"));
      frame.style.display = "none";
      frame.src = channelURL(this.link.base, lane.channel, Object.assign(this.streamQuery("html", position), { tag: lane.tag }));
      // The document loads completely only when the stream ends (or an error page arrives).
      frame.onload = () => {
        if (!lane.stopped && !this.link.ended(lane.channel)) this.fail("iframe stream ended");
      };
      document.body.appendChild(frame);
    }
    stop(lane) {
      if (lane.tag) frames.delete(lane.tag);
      if (lane.frame) {
        lane.frame.onload = null;
        lane.frame.src = "about:blank";
        lane.frame.remove();
      }
    }
  }

  const frames = new Map();
  function installFrameDispatcher() {
    if (root.heraldEvent && root.heraldEvent.isHeraldDispatcher) return;
    const previous = root.heraldEvent;
    const dispatch = (msg, tag) => {
      const handler = frames.get(tag);
      if (handler) handler(msg);
      else if (typeof previous === "function" && tag === undefined) previous(msg);
    };
    dispatch.isHeraldDispatcher = true;
    root.heraldEvent = dispatch;
  }

  /**
   * Polling, held (long polling over XHR or JSONP) or not (plain polling). The first answer of
   * a lane is its welcome. A request a proxy cuts while it was held shortens the wait, so a path
   * that kills idle connections still works.
   */
  class PollingTransport extends PerChannelTransport {
    constructor(name, link, fetcher, held) {
      super(name, link);
      this.fetcher = fetcher;
      this.held = held;
    }
    start(lane, position) {
      lane.position = position;
      lane.first = true;
      this.poll(lane);
    }
    poll(lane) {
      if (lane.stopped || this.closedFlag) return;
      const wait = lane.first || !this.held ? 0 : this.link.pollWait;
      const query = Object.assign({ wait: wait || undefined }, positionQuery(lane.position));
      const started = now();
      this.request();
      lane.pending = this.fetcher(channelURL(this.link.base, lane.channel, query), wait * 1000 + 10000, (size) => this.count(size));
      lane.pending.promise.then(
        (answer) => {
          if (lane.stopped) return;
          const marker = { channel: lane.channel, epoch: answer.epoch, next: answer.next, recovered: answer.recovered };
          if (lane.first) {
            const before = answer.events.length ? answer.events[0].offset - 1 : answer.next;
            this.deliver(Object.assign({}, marker, { type: "herald.welcome", next: before }));
          }
          if (!answer.recovered && lane.position) this.deliver(Object.assign({}, marker, { type: "herald.reset" }));
          for (const event of answer.events) this.deliver(event);
          lane.first = false;
          lane.position = { epoch: answer.epoch, offset: answer.next };
          if (this.held) this.poll(lane);
          else lane.timer = setTimeout(() => this.poll(lane), this.link.options.pollInterval);
        },
        (error) => {
          if (lane.stopped) return;
          const held = now() - started;
          if (wait > 0 && held > 1000 && held < wait * 1000) {
            // Cut while held: something on the path drops idle requests. Hold shorter.
            this.link.pollWait = Math.max(1, Math.floor((held / 1000) * 0.5));
            return this.poll(lane);
          }
          this.fail(error.message || String(error));
        },
      );
    }
    stop(lane) {
      clearTimeout(lane.timer);
      if (lane.pending) lane.pending.cancel();
    }
  }

  /** GET `url` as JSON with XHR. */
  function xhrJSON(url, timeout, count) {
    const xhr = new XMLHttpRequest();
    const promise = new Promise((resolve, reject) => {
      xhr.open("GET", url);
      xhr.timeout = timeout;
      xhr.onload = () => {
        count(xhr.responseText.length);
        if (xhr.status === 200) {
          try {
            return resolve(JSON.parse(xhr.responseText));
          } catch (error) {
            return reject(new Error("not JSON"));
          }
        }
        reject(new Error("HTTP " + xhr.status));
      };
      xhr.onerror = () => reject(new Error("network error"));
      xhr.ontimeout = () => reject(new Error("timeout"));
      xhr.send();
    });
    return { promise: promise, cancel: () => xhr.abort() };
  }

  let jsonpCounter = 0;
  /** GET `url` as JSONP: a `<script>` calling a one-off global callback. */
  function jsonp(url, timeout, count) {
    const name = "__heraldJSONP" + ++jsonpCounter;
    const script = root.document.createElement("script");
    let timer;
    const cleanup = () => {
      clearTimeout(timer);
      delete root[name];
      script.onerror = null;
      script.remove();
    };
    const promise = new Promise((resolve, reject) => {
      root[name] = (answer) => {
        cleanup();
        count(JSON.stringify(answer).length);
        resolve(answer);
      };
      script.onerror = () => {
        cleanup();
        reject(new Error("JSONP load error"));
      };
      timer = setTimeout(() => {
        cleanup();
        // A late answer must not throw: leave a no-op behind.
        root[name] = () => {};
        reject(new Error("timeout"));
      }, timeout);
      script.src = url + (url.indexOf("?") >= 0 ? "&" : "?") + "callback=" + name;
      root.document.head.appendChild(script);
    });
    return {
      promise: promise,
      cancel: () => {
        cleanup();
        root[name] = () => {};
      },
    };
  }

  function createTransport(name, link) {
    switch (name) {
      case "websocket":
        return new WebSocketTransport(name, link);
      case "sse":
        return new SSETransport(name, link);
      case "xhr_streaming":
        return new XHRStreamingTransport(name, link);
      case "iframe":
        return new IFrameTransport(name, link);
      case "xhr_polling":
        return new PollingTransport(name, link, xhrJSON, true);
      case "jsonp_polling":
        return new PollingTransport(name, link, jsonp, true);
      case "polling":
        return new PollingTransport(name, link, xhrJSON, false);
    }
    throw new Error("unknown transport " + name);
  }

  // ---------------------------------------------------------------------------------------
  // Link: one live connection to Herald over the best transport that works, for a set of
  // channels, each followed from its own position.
  // ---------------------------------------------------------------------------------------

  class Link {
    constructor(base, options, sink) {
      this.base = base;
      this.options = options;
      this.sink = sink; // {message(msg), state(state, transport), error(error)}
      this.channels = new Map(); // channel -> {epoch, offset} | null (from now)
      this.endedChannels = new Set();
      this.candidates = new Set();
      this.active = null;
      this.attempt = 0;
      this.blocked = new Set(options.blocked || []);
      this.stats = { requests: 0, bytes: 0 };
      this.attempts = []; // every candidate started, in order: for pages and tests
      this.pollWait = options.pollWait;
      this.heartbeat = options.heartbeat;
      this.state = "idle";
    }

    heartbeatSeconds() {
      return Math.max(1, Math.round(this.heartbeat));
    }

    /** The constructor of a browser API a transport needs, or null when missing or blocked. */
    available(name) {
      if (this.blocked.has(name)) return null;
      if (name === "websocket") return root.WebSocket || null;
      if (name === "sse") return root.EventSource || null;
      return null;
    }

    position(channel) {
      return this.channels.get(channel) || null;
    }

    ended(channel) {
      return this.endedChannels.has(channel);
    }

    subscribe(channel, position) {
      if (this.channels.has(channel)) return;
      this.channels.set(channel, position);
      for (const transport of this.transports()) transport.subscribe(channel, position);
      if (this.state === "idle") this.connect();
    }

    unsubscribe(channel) {
      if (!this.channels.delete(channel)) return;
      for (const transport of this.transports()) transport.unsubscribe(channel);
    }

    transports() {
      return [...this.candidates, ...(this.active ? [this.active] : [])];
    }

    setState(state) {
      if (this.state === state) return;
      this.state = state;
      this.sink.state(state, this.active ? this.active.name : null);
    }

    /** The order of this race: the remembered winner first, then the rest, best first. */
    order() {
      const wanted = this.options.transports.filter((name) => !this.blocked.has(name));
      const cached = readCache(this.options, this.base);
      if (cached && wanted.indexOf(cached) > 0) return [cached].concat(wanted.filter((name) => name !== cached));
      return wanted;
    }

    /** Starts candidates one after another, `raceDelay` apart (at once when all running ones failed). */
    connect() {
      if (this.state === "closed") return;
      clearTimeout(this.retryTimer);
      this.setState("connecting");
      const queue = this.order();
      const race = (this.race = { queue: queue, cached: readCache(this.options, this.base) });
      const next = () => {
        clearTimeout(race.timer);
        if (this.race !== race || this.active) return;
        const name = race.queue.shift();
        if (!name) {
          if (this.candidates.size === 0) this.retry();
          return;
        }
        this.start(name, race);
        race.timer = setTimeout(next, this.options.raceDelay);
      };
      race.next = next;
      next();
    }

    start(name, race) {
      const transport = createTransport(name, this);
      transport.race = race;
      transport.verifyTimer = setTimeout(() => transport.fail("no message within " + this.options.verifyTimeout + " ms"), this.options.verifyTimeout);
      this.candidates.add(transport);
      this.attempts.push(name);
      transport.open(new Map(this.channels));
    }

    /** Reconnects after a capped, jittered exponential backoff; never gives up. */
    retry() {
      if (this.state === "closed") return;
      this.setState("unavailable");
      const delay = jitter(Math.min(this.options.backoffMax, this.options.backoffInitial * Math.pow(2, this.attempt)));
      this.attempt += 1;
      this.retryTimer = setTimeout(() => this.connect(), delay);
    }

    message(transport, msg) {
      if (transport !== this.active) {
        if (!this.candidates.has(transport)) return;
        if (msg.type !== "herald.welcome") return;
        this.win(transport);
      }
      this.lastMessageAt = now();
      if (msg.type === "herald.heartbeat") return;
      if (msg.type === "herald.welcome" || msg.type === "herald.reset") {
        if (msg.channel === null) return;
        const position = this.channels.get(msg.channel);
        if (position === undefined) return;
        if (msg.type === "herald.reset") {
          // What is still kept follows, up to `next`: let it through.
          this.channels.set(msg.channel, { epoch: msg.epoch, offset: msg.next, keptUntil: msg.next });
        } else if (position === null || position.offset === null) {
          this.channels.set(msg.channel, { epoch: msg.epoch, offset: msg.next });
        }
        return this.sink.message(msg);
      }
      // An event: the link's position only moves forward; a duplicate stops here.
      const position = this.channels.get(msg.channel);
      if (position === undefined) return;
      const kept = position && position.keptUntil !== undefined && msg.offset <= position.keptUntil;
      if (!kept && position && position.epoch === msg.epoch && position.offset !== null && msg.offset <= position.offset) return;
      const keptUntil = kept && msg.offset < position.keptUntil ? position.keptUntil : undefined;
      this.channels.set(msg.channel, { epoch: msg.epoch, offset: Math.max(msg.offset, keptUntil || 0), keptUntil: keptUntil });
      if (isTerminal(msg)) this.endedChannels.add(msg.channel);
      this.sink.message(msg);
    }

    win(transport) {
      clearTimeout(transport.verifyTimer);
      this.candidates.delete(transport);
      const previous = this.active;
      for (const other of this.candidates) other.close();
      this.candidates.clear();
      if (previous) previous.close();
      if (transport.race) clearTimeout(transport.race.timer);
      this.race = null;
      this.active = transport;
      this.attempt = 0;
      this.lastMessageAt = now();
      writeCache(this.options, this.base, transport.name);
      this.setState("connected");
      this.sink.transport(transport.name);
      this.watch();
      this.planUpgrade();
    }

    closed(transport, reason) {
      clearTimeout(transport.verifyTimer);
      if (this.candidates.delete(transport)) {
        const race = transport.race;
        // The remembered transport failed its re-verification: forget it.
        if (race && race.cached === transport.name) forgetCache(this.options, this.base);
        if (race && race.next && this.candidates.size === 0) race.next();
        return;
      }
      if (transport !== this.active) return;
      this.active = null;
      this.noteCut();
      this.sink.error({ transport: transport.name, reason: reason });
      this.retry();
    }

    /** A connection cut while idle: ask for heartbeats (and hold polls) shorter than that idle time. */
    noteCut() {
      const idle = now() - this.lastMessageAt;
      if (idle >= 1000 && idle < this.heartbeat * 1000) this.heartbeat = Math.max(1, (idle / 1000) * 0.5);
    }

    error(transport, frame) {
      this.sink.error({ transport: transport.name, code: frame.code, message: frame.message });
    }

    /** Liveness: a connection silent for twice the heartbeat (plus slack) is dead. */
    watch() {
      clearInterval(this.watchTimer);
      this.watchTimer = setInterval(() => {
        const active = this.active;
        if (!active) return;
        const silence = now() - this.lastMessageAt;
        if (active.ping && silence > this.heartbeat * 1000) active.ping();
        const polls = active instanceof PollingTransport;
        const limit = polls ? (this.pollWait + 15) * 1000 : (this.heartbeat * 2 + 5) * 1000;
        if (silence > limit && !(polls && active.channels.size === 0)) active.fail("silent for " + silence + " ms");
      }, 1000);
    }

    /** On a fallback, re-try WebSocket now and then; it takes over once it shows a message. */
    planUpgrade() {
      clearTimeout(this.upgradeTimer);
      const best = this.options.transports.filter((name) => !this.blocked.has(name))[0];
      if (!this.active || this.active.name === best) return;
      const attempt = (delay) => {
        this.upgradeTimer = setTimeout(() => {
          if (!this.active || this.state !== "connected" || this.candidates.size > 0) return attempt(this.options.upgradeInterval);
          this.start(best, null); // outside any race: it wins by showing a message, like a racer
          attempt(this.options.upgradeInterval);
        }, delay);
      };
      attempt(this.options.upgradeDelay);
    }

    /** Wake, `online` or visibility: make sure the connection is alive, at once. */
    healthCheck() {
      if (this.state === "closed" || this.state === "idle") return;
      if (this.state === "unavailable") return this.connect();
      const active = this.active;
      if (!active) return;
      if (active.ping) {
        const before = this.lastMessageAt;
        active.ping();
        setTimeout(() => {
          if (this.active === active && this.lastMessageAt === before) active.fail("no answer to a health check");
        }, 5000);
      } else if (now() - this.lastMessageAt > (this.heartbeat + 5) * 1000 && !(active instanceof PollingTransport)) {
        active.fail("stale after wake");
      }
    }

    /** Drops the active transport and keeps it from being used again by this link (the lab's "break" buttons). */
    block(name) {
      this.blocked.add(name);
      if (this.active && this.active.name === name) this.active.fail("blocked by the page");
    }

    close() {
      this.setState("closed");
      clearTimeout(this.retryTimer);
      clearTimeout(this.upgradeTimer);
      clearInterval(this.watchTimer);
      for (const transport of this.transports()) transport.close();
      this.candidates.clear();
      this.active = null;
    }
  }

  function isTerminal(event) {
    return /^check:/.test(event.channel) && /^check\.(done|failed|canceled)$/.test(event.type);
  }

  // The remembered transport, per origin, with its age.
  function cacheKey(base) {
    return "herald.transport:" + base;
  }
  function storage(options) {
    try {
      return options.storage || root.localStorage || null;
    } catch (error) {
      return null; // storage disabled
    }
  }
  function readCache(options, base) {
    const store = storage(options);
    if (!store) return null;
    try {
      const entry = JSON.parse(store.getItem(cacheKey(base)) || "null");
      if (entry && now() - entry.at < options.cacheTTL * 1000) return entry.transport;
    } catch (error) {}
    return null;
  }
  function writeCache(options, base, transport) {
    const store = storage(options);
    try {
      if (store) store.setItem(cacheKey(base), JSON.stringify({ transport: transport, at: now() }));
    } catch (error) {}
  }
  function forgetCache(options, base) {
    const store = storage(options);
    try {
      if (store) store.removeItem(cacheKey(base));
    } catch (error) {}
  }

  // ---------------------------------------------------------------------------------------
  // Subscription: one channel in one tab, with its own position. Everything reaching it goes
  // through accept(): duplicates are dropped, a hole is filled by paging polls, a lost
  // position becomes one `gap`.
  // ---------------------------------------------------------------------------------------

  class Subscription {
    constructor(herald, channel, handler, position) {
      this.herald = herald;
      this.channel = channel;
      this.handlers = new Set([handler]);
      this.epoch = position.epoch || null;
      this.offset = position.offset === undefined ? null : position.offset;
      this.buffer = null; // events held while a catch-up runs
      this.gap = null; // a lost position being collected into one gap event
    }

    get position() {
      return this.offset === null ? null : { epoch: this.epoch, offset: this.offset };
    }

    marker(msg) {
      if (msg.type === "herald.reset") {
        const hadPosition = this.epoch !== null || (this.offset !== null && this.offset > 0);
        this.epoch = msg.epoch;
        this.offset = null;
        if (hadPosition) this.startGap(msg);
        return;
      }
      if (msg.type === "herald.welcome" && this.offset === null && !this.gap) {
        this.epoch = msg.epoch;
        this.offset = msg.next;
      }
    }

    startGap(msg) {
      clearTimeout(this.gap && this.gap.timer);
      const gap = (this.gap = { epoch: msg.epoch, next: msg.next, events: [] });
      if (msg.next === 0) return this.endGap();
      // The kept events follow the reset at once; give them a moment to arrive.
      gap.timer = setTimeout(() => this.endGap(), 250);
    }

    endGap() {
      const gap = this.gap;
      if (!gap) return;
      clearTimeout(gap.timer);
      this.gap = null;
      this.herald._emit("gap", { channel: this.channel, epoch: gap.epoch, events: gap.events.slice() });
      this.epoch = gap.epoch;
      this.offset = gap.events.length ? gap.events[0].offset - 1 : gap.next;
      for (const event of gap.events) this.accept(event);
    }

    accept(event, caughtUp) {
      if (this.gap) {
        if (event.epoch === this.gap.epoch) this.gap.events.push(event);
        if (event.offset >= this.gap.next) this.endGap();
        return;
      }
      if (this.buffer) return this.buffer.push(event);
      if (this.offset === null) {
        // No position yet (from now): the first event sets it.
        return this.deliver(event);
      }
      // No epoch yet (a position given without one, or a channel that had no event): offsets decide.
      const sameEpoch = !this.epoch || event.epoch === this.epoch;
      if (sameEpoch && event.offset <= this.offset) return; // a duplicate
      if (sameEpoch && event.offset === this.offset + 1) return this.deliver(event);
      // A hole, or another epoch: read what is missing first. If a catch-up just ran and the
      // hole is still there, the server does not have it: say so once, and go on.
      if (!caughtUp) return this.catchUp(event);
      this.herald._emit("gap", { channel: this.channel, epoch: event.epoch, events: [event] });
      this.deliver(event);
    }

    deliver(event) {
      this.epoch = event.epoch;
      this.offset = event.offset;
      for (const handler of this.handlers) {
        try {
          handler(event);
        } catch (error) {
          setTimeout(() => {
            throw error;
          });
        }
      }
    }

    /**
     * A hole before `event` (or another epoch): read what is missing, page after page (an
     * answer holds at most the server's poll-max-events), then go on with what arrived live
     * meanwhile. Only what the server no longer has becomes a gap.
     */
    catchUp(event) {
      this.buffer = [event];
      this.herald._stats.catchUps += 1;
      const attempt = (delay) => {
        const url = channelURL(this.herald.base, this.channel, { since: this.offset, epoch: this.epoch || undefined });
        fetchJSON(url).then(
          (answer) => {
            const held = this.buffer;
            this.buffer = null;
            if (!answer.recovered) {
              this.startGap({ epoch: answer.epoch, next: answer.next });
            }
            for (const kept of answer.events) this.accept(kept);
            const first = held[0];
            const stillMissing = !this.gap && first.epoch === this.epoch && first.offset > this.offset + 1;
            if (answer.events.length > 0 && stillMissing) {
              this.buffer = held; // more pages: the live events keep waiting
              return attempt(500);
            }
            for (const live of held) this.accept(live, true);
          },
          () => setTimeout(() => attempt(Math.min(delay * 2, 10000)), jitter(delay)),
        );
      };
      attempt(500);
    }
  }

  function fetchJSON(url, init) {
    return fetch(url, init).then((response) =>
      response.json().then((body) => {
        if (!response.ok) {
          const error = new Error(body.detail || body.title || "HTTP " + response.status);
          error.status = response.status;
          error.problem = body;
          throw error;
        }
        return body;
      }),
    );
  }

  // ---------------------------------------------------------------------------------------
  // Herald: what a page holds. It owns a Link (as the leader tab, or alone) or follows the
  // leader tab's link through a BroadcastChannel.
  // ---------------------------------------------------------------------------------------

  class Herald extends Emitter {
    constructor(url, options) {
      super();
      this.base = baseURL(url);
      this.options = Object.assign({}, DEFAULTS, options || {});
      this.subscriptions = new Map(); // channel -> Subscription
      this.tab = Math.random().toString(36).slice(2);
      this.role = "alone"; // alone | leader | follower
      this.transport = null;
      this.state = "idle";
      this._stats = { catchUps: 0 };
      const shared = this.options.share && root.BroadcastChannel && root.navigator && root.navigator.locks;
      if (shared) this.joinTabs();
      else this.lead();
      this.watchPage();
    }

    /** Requests, bytes and catch-ups of this tab's connection (a follower tab has none of its own). */
    get stats() {
      const link = this.link ? this.link.stats : { requests: 0, bytes: 0 };
      return { requests: link.requests, bytes: link.bytes, catchUps: this._stats.catchUps };
    }

    /** The transports this tab's connection started, in order. */
    get attempts() {
      return this.link ? this.link.attempts.slice() : [];
    }

    get isLeader() {
      return this.role !== "follower";
    }

    subscribe(channel, onEvent, position) {
      position = position || {};
      let subscription = this.subscriptions.get(channel);
      if (subscription) {
        subscription.handlers.add(onEvent);
      } else {
        // A check's few events are all kept: follow it from its start unless told otherwise.
        if (position.since === undefined && /^check:/.test(channel)) position = { since: 0 };
        subscription = new Subscription(this, channel, onEvent, { epoch: position.epoch, offset: position.since });
        this.subscriptions.set(channel, subscription);
        this.follow(channel, subscription.position);
      }
      return () => this.unsubscribe(channel, onEvent);
    }

    unsubscribe(channel, onEvent) {
      const subscription = this.subscriptions.get(channel);
      if (!subscription) return;
      if (onEvent) subscription.handlers.delete(onEvent);
      if (onEvent && subscription.handlers.size > 0) return;
      this.subscriptions.delete(channel);
      this.unfollow(channel);
    }

    /** Follows a check until it ends; resolves with the ended check. */
    watchCheck(id, onChange) {
      return new Promise((resolve) => {
        const channel = "check:" + id;
        const handler = (event) => {
          if (onChange) onChange(event.data, event);
          if (isTerminal(event)) {
            this.unsubscribe(channel, handler);
            resolve(event.data);
          }
        };
        this.subscribe(channel, handler);
      });
    }

    /** Creates a check and resolves with it once it has ended (done, failed or canceled). */
    createCheck(spec, options) {
      const headers = { "Content-Type": "application/json" };
      if (options && options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
      return fetchJSON(this.base + "/api/v1/checks", { method: "POST", headers: headers, body: JSON.stringify(spec) }).then(
        (check) => {
          if (options && options.onCreated) options.onCreated(check);
          return check.state === "processing" ? this.watchCheck(check.id, options && options.onChange) : check;
        },
      );
    }

    close() {
      if (this.bus) {
        this.post({ t: "bye", tab: this.tab });
        this.bus.close();
      }
      this.closed = true;
      if (this.link) this.link.close();
      if (this.releaseLock) this.releaseLock();
      clearInterval(this.aliveTimer);
      for (const [event, fn] of this.pageListeners || []) root.removeEventListener(event, fn);
      if (root.document && this.onVisible) root.document.removeEventListener("visibilitychange", this.onVisible);
      clearInterval(this.wakeTimer);
      this.setState("closed", this.transport);
    }

    /** Drops a transport in this tab's connection and falls back (the lab's "break" buttons). */
    breakTransport(name) {
      if (this.link) this.link.block(name);
    }

    // -- what the link reports ---------------------------------------------------------------

    receive(msg) {
      const subscription = this.subscriptions.get(msg.channel);
      if (!subscription) return;
      if (msg.type === "herald.welcome" || msg.type === "herald.reset") subscription.marker(msg);
      else subscription.accept(msg);
    }

    setState(state, transport) {
      const changed = transport !== this.transport && transport;
      this.transport = transport || this.transport;
      if (changed) this._emit("transport", transport);
      if (state !== this.state) {
        this.state = state;
        this._emit("state", state);
      }
    }

    // -- alone or leader: this tab holds the link ----------------------------------------------

    lead() {
      const remote = this.remote;
      this.link = new Link(this.base, this.options, {
        message: (msg) => {
          this.receive(msg);
          this.post({ t: "msg", msg: msg });
        },
        state: (state, transport) => {
          this.setState(state, transport);
          this.post({ t: "state", state: state, transport: transport });
        },
        transport: (transport) => {
          this.setState(this.link.state, transport);
          this.post({ t: "state", state: this.link.state, transport: transport });
        },
        error: (error) => this._emit("error", error),
      });
      for (const [channel, subscription] of this.subscriptions) this.link.subscribe(channel, subscription.position);
      for (const [channel, entry] of remote || []) this.link.subscribe(channel, entry.position);
    }

    follow(channel, position) {
      if (this.role === "follower") this.post({ t: "sub", tab: this.tab, channel: channel, position: position });
      else if (this.link) this.link.subscribe(channel, position);
    }

    unfollow(channel) {
      if (this.role === "follower") return this.post({ t: "unsub", tab: this.tab, channel: channel });
      if (this.link && !this.remoteWants(channel)) this.link.unsubscribe(channel);
    }

    remoteWants(channel) {
      const entry = this.remote && this.remote.get(channel);
      return Boolean(entry && entry.tabs.size > 0);
    }

    // -- tabs: one leader holds the link, the others listen ------------------------------------

    joinTabs() {
      this.role = "follower";
      this.remote = new Map(); // channel -> {tabs: Map(tab -> seen), position}
      this.bus = new root.BroadcastChannel("herald:" + this.base);
      this.bus.onmessage = (message) => this.onBus(message.data);
      this.post({ t: "hello", tab: this.tab });
      // Held until this tab closes: the lock's holder is the leader.
      root.navigator.locks.request("herald:" + this.base, () => {
        if (this.closed) return;
        return new Promise((release) => {
          this.releaseLock = release;
          this.becomeLeader();
        });
      });
      this.aliveTimer = setInterval(() => this.tick(), 5000);
    }

    becomeLeader() {
      this.role = "leader";
      this.lead();
      this.post({ t: "leader", tab: this.tab });
    }

    post(message) {
      if (this.bus && !this.closed) this.bus.postMessage(message);
    }

    onBus(message) {
      if (this.role === "leader") {
        switch (message.t) {
          case "sub":
            return this.addRemote(message.tab, message.channel, message.position);
          case "unsub":
            return this.dropRemote(message.tab, message.channel);
          case "alive":
            for (const entry of this.remote.values()) if (entry.tabs.has(message.tab)) entry.tabs.set(message.tab, now());
            return;
          case "bye":
            for (const channel of [...this.remote.keys()]) this.dropRemote(message.tab, channel);
            return;
          case "hello":
            return this.post({ t: "leader", tab: this.tab, state: this.state, transport: this.transport });
        }
        return;
      }
      if (this.role !== "follower") return;
      switch (message.t) {
        case "msg":
          return this.receive(message.msg);
        case "state":
          return this.setState(message.state, message.transport);
        case "leader":
          // A new leader knows nothing of this tab yet: tell it what to follow, from where.
          if (message.state) this.setState(message.state, message.transport);
          for (const [channel, subscription] of this.subscriptions) {
            this.post({ t: "sub", tab: this.tab, channel: channel, position: subscription.position });
          }
          return;
      }
    }

    addRemote(tab, channel, position) {
      let entry = this.remote.get(channel);
      if (!entry) this.remote.set(channel, (entry = { tabs: new Map(), position: position }));
      entry.tabs.set(tab, now());
      // A channel the link follows already goes on from where it is; the tab fills any hole itself.
      this.link.subscribe(channel, position);
    }

    dropRemote(tab, channel) {
      const entry = this.remote.get(channel);
      if (!entry || !entry.tabs.delete(tab)) return;
      if (entry.tabs.size === 0) {
        this.remote.delete(channel);
        if (!this.subscriptions.has(channel)) this.link.unsubscribe(channel);
      }
    }

    /** Followers say they are alive; the leader forgets tabs that vanished without a word. */
    tick() {
      if (this.role === "follower") return this.post({ t: "alive", tab: this.tab });
      for (const [channel, entry] of this.remote) {
        for (const [tab, seen] of entry.tabs) if (now() - seen > 20000) this.dropRemote(tab, channel);
      }
    }

    // -- sleep, wake, network and visibility --------------------------------------------------

    watchPage() {
      if (!root.addEventListener) return;
      const check = () => this.link && this.link.healthCheck();
      this.pageListeners = [
        ["online", check],
        ["pagehide", () => this.post({ t: "bye", tab: this.tab })],
      ];
      for (const [event, fn] of this.pageListeners) root.addEventListener(event, fn);
      if (root.document) {
        this.onVisible = () => root.document.visibilityState === "visible" && check();
        root.document.addEventListener("visibilitychange", this.onVisible);
      }
      // A timer that fires far later than asked means the machine slept.
      let last = now();
      this.wakeTimer = setInterval(() => {
        const time = now();
        if (time - last > 10000) check();
        last = time;
      }, 2000);
    }
  }

  /**
   * Connects to Herald at `url` (default: this page's origin).
   * @param {string} [url]
   * @param {object} [options] see DEFAULTS
   * @returns {Herald}
   */
  function connect(url, options) {
    return new Herald(url, options);
  }

  root.Herald = { connect: connect, transports: TRANSPORTS.slice(), defaults: Object.assign({}, DEFAULTS), version: "1" };
})(typeof globalThis !== "undefined" ? globalThis : this);

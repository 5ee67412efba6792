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
 *
 * Private channels take a client token (`token`, or `getToken` for fresh ones): sent as
 * `Authorization: Bearer` where a transport can set headers, as `?access_token=` where it
 * cannot (EventSource, `<script>`, iframes, the WebSocket URL), and as an `auth` op on a
 * WebSocket. It is renewed before its `exp`; a stream that ends with `herald.expired` (or a
 * WebSocket's `expired`) is resumed with a fresh one from its position. A refusal
 * (token-required, token-invalid, channel-forbidden) stops that channel with one `error`.
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
    token: null, // a client token (JWT) for private channels, publishing and creating checks
    getToken: null, // async () => a fresh client token; called before the token expires
  };

  /** Refusals a retry cannot fix (until the page gives another token). */
  const REFUSALS = ["token-required", "token-invalid", "channel-forbidden"];

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

  /** `query` with the token as `access_token`, for requests that cannot carry a header. */
  function withToken(query, token) {
    return token ? Object.assign(query, { access_token: token }) : query;
  }

  /** A JWT's `exp` in ms (the middle part is base64url JSON; nothing is verified), or null. */
  function tokenExpiry(token) {
    try {
      const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(root.atob(part + "===".slice((part.length + 3) % 4)));
      return typeof claims.exp === "number" ? claims.exp * 1000 : null;
    } catch (error) {
      return null;
    }
  }

  /** `Retry-After` in seconds (a number of seconds or an HTTP date), or undefined. */
  function parseRetryAfter(value) {
    if (!value) return undefined;
    if (/^\s*\d+\s*$/.test(value)) return Number(value);
    const date = Date.parse(value);
    return isNaN(date) ? undefined : Math.max(0, Math.ceil((date - now()) / 1000));
  }

  /** The error of an HTTP answer: its problem document's detail, `status`, `code`, and `retryAfter` (429, 503). */
  function problemError(status, body, retryAfter) {
    const problem = body && typeof body === "object" ? body : {};
    const error = new Error(problem.detail || problem.title || "HTTP " + status);
    error.status = status;
    error.problem = problem;
    error.code = problem.code;
    if (status === 429 || status === 503) error.retryAfter = parseRetryAfter(retryAfter);
    return error;
  }

  /** An error of a WebSocket `error` op, its code spelled as over HTTP (`channel_forbidden` is `channel-forbidden`). */
  function opError(frame) {
    const error = new Error(frame.message || frame.code);
    error.code = String(frame.code || "").replace(/_/g, "-");
    return error;
  }

  /** The seconds an `error` op says to wait: `retry_after`, or "retry after N s" in its message; else 1. */
  function retryAfterOf(frame) {
    if (typeof frame.retry_after === "number") return frame.retry_after;
    const match = /retry after (\d+(?:\.\d+)?) ?s/i.exec(frame.message || "");
    return match ? Number(match[1]) : 1;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
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
  // Tokens: the page's client token, renewed before its `exp` (with `getToken`), and on demand
  // when the server says it expired. Listeners hear each new token (a WebSocket re-auths).
  // ---------------------------------------------------------------------------------------

  class Tokens {
    constructor(options, report) {
      this.source = typeof options.getToken === "function" ? options.getToken : null;
      this.report = report; // (error) => void: a renewal ahead of expiry failed
      this.listeners = new Set();
      this.token = null;
      this.exp = null;
      this.pending = null;
      this.forced = { streak: 0, at: 0 };
      if (options.token) this.set(options.token);
    }

    /** Whether there is a token to send at all. */
    get enabled() {
      return Boolean(this.source || this.token);
    }

    set(token) {
      const changed = token !== this.token;
      this.token = token;
      this.exp = tokenExpiry(token);
      // Expired already by this clock (it disagrees with the issuer's, or getToken hands out
      // what it cached): this clock cannot tell when, so only the server's word renews it.
      if (this.exp !== null && this.exp - now() <= 1000) this.exp = null;
      this.plan();
      if (changed) for (const fn of this.listeners) fn(token);
    }

    /** The token, if it is not about to expire by this clock (a given `token` without getToken: always; the server judges). */
    usable() {
      if (!this.source) return this.token;
      return this.token && (this.exp === null || this.exp - now() > 1000) ? this.token : null;
    }

    /** A token to send now: the current one, or a fresh one. */
    get() {
      const token = this.usable();
      return token ? Promise.resolve(token) : this.fetch(false);
    }

    /** The server said `used` expired: a newer token if there is one, else a fresh one. */
    renew(used) {
      const token = this.usable();
      return token && token !== used ? Promise.resolve(token) : this.fetch(true);
    }

    fetch(forced) {
      if (this.pending) return this.pending;
      if (!this.source) {
        const error = new Error(this.token ? "the token expired and no getToken was given" : "no token was given");
        error.code = this.token ? "token-expired" : "token-required";
        return Promise.reject(error);
      }
      // Renewals forced again right after one (a getToken handing out stale tokens, a server
      // clock far ahead): slow down rather than spin.
      const streak = forced && now() - this.forced.at < 2000 ? this.forced.streak + 1 : 0;
      if (forced) this.forced.streak = streak;
      const pending = (this.pending = sleep(streak ? Math.min(10000, 250 * Math.pow(2, streak)) : 0)
        .then(() => this.source())
        .then((token) => {
          if (typeof token !== "string" || !token) throw new Error("getToken gave no token");
          return token;
        })
        .then(
          (token) => {
            this.pending = null;
            if (forced) this.forced.at = now();
            if (!this.closed) this.set(token);
            return token;
          },
          (error) => {
            this.pending = null;
            throw error;
          },
        ));
      return pending;
    }

    /** Renews at 80% of the token's remaining life or 30 s before its exp, whichever is sooner (at half its life at the earliest). */
    plan() {
      clearTimeout(this.timer);
      if (!this.source || this.exp === null || this.closed) return;
      const left = this.exp - now();
      if (left <= 0) return;
      this.schedule(Math.max(1000, Math.min(0.8 * left, left - 30000), 0.5 * left));
    }

    schedule(delay) {
      this.timer = setTimeout(() => {
        this.fetch(false).catch((error) => {
          this.report({ code: "token-unavailable", message: "getToken failed: " + (error && error.message ? error.message : error) });
          // Try again while the current token lasts; once it has expired, the next use asks.
          const rest = this.exp - now();
          if (rest > 1000 && !this.closed) this.schedule(Math.min(5000, rest / 2));
        });
      }, delay);
    }

    close() {
      this.closed = true;
      clearTimeout(this.timer);
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
    /** Ends this transport; `retryAfter` (s): the server asked not to come back sooner. */
    fail(reason, retryAfter) {
      if (this.closedFlag) return;
      this.close();
      this.link.closed(this, reason, retryAfter);
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
      const Socket = this.link.available("websocket");
      if (!Socket) return this.fail("WebSocket is not available");
      this.pending = channels;
      this.nextID = 1;
      this.authID = null; // the `auth` op awaiting its answer
      this.anonymous = false; // the server holds no valid token of ours (it expired, or was refused)
      this.waiting = new Set(); // channels to (re)subscribe once the server has taken a fresh token
      this.publishes = new Map(); // id -> the promise of a `publish` op
      this.sent = new Map(); // id -> {op, channel} of a subscribe, unsubscribe or auth awaiting its answer
      this.link.authorize(
        (token) => {
          if (this.closedFlag) return;
          // The token goes in the `auth` op only, never in the URL, where logs keep it.
          this.request();
          const socket = (this.socket = new Socket(this.link.base.replace(/^http/, "ws") + "/api/v1/ws"));
          socket.onopen = () => {
            // With a token, `auth` goes first: its answer (`authed`, or why not) comes before the pong.
            if (token) this.authenticate(this.link.auth.usable() || token);
            this.send({ op: "ping", id: 0 });
          };
          socket.onmessage = (message) => this.receive(message.data);
          socket.onerror = () => this.fail("WebSocket error");
          socket.onclose = (close) => this.fail("WebSocket closed (" + close.code + ")");
        },
        (error) => this.fail("no token: " + error.message),
      );
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
      const sent = frame.id !== undefined && frame.op !== "event" ? this.sent.get(frame.id) : undefined;
      if (sent) this.sent.delete(frame.id);
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
        case "authed":
          if (frame.id === this.authID) {
            this.authID = null;
            this.anonymous = false;
            this.authFailure = null;
            const waiting = [...this.waiting];
            this.waiting.clear();
            for (const channel of waiting) if (this.link.follows(channel)) this.subscribe(channel, this.link.position(channel));
          }
          this.deliver({ type: "herald.heartbeat", channel: null });
          break;
        case "expired":
          // The token expired before a fresh one was sent: these subscriptions stopped. Send a
          // fresh token, then subscribe them again from their positions.
          this.anonymous = true;
          for (const channel of frame.channels || []) if (this.link.follows(channel)) this.waiting.add(channel);
          this.renew();
          break;
        case "published": {
          const publish = this.publishes.get(frame.id);
          if (publish) {
            this.publishes.delete(frame.id);
            publish.resolve(frame);
          }
          break;
        }
        case "error":
          this.refusal(frame, sent);
          break;
      }
    }
    /** An `error` op: a publish's, the `auth` op's, a subscription's refusal, or anything else. */
    refusal(frame, sent) {
      const error = opError(frame);
      const publish = frame.id !== undefined && this.publishes.get(frame.id);
      if (publish) {
        this.publishes.delete(frame.id);
        if (error.code === "rate-limited") error.retryAfter = retryAfterOf(frame);
        return publish.reject(error);
      }
      // An op the server had no room for (over `rate-limit-ws-ops`, or overloaded): not carried
      // out, so send it again once the server said it may be.
      if (sent && (error.code === "rate-limited" || error.code === "overloaded")) {
        setTimeout(() => this.again(sent), Math.max(250, retryAfterOf(frame) * 1000));
        return this.link.error(this, frame);
      }
      if (frame.id !== undefined && frame.id === this.authID) {
        this.authID = null;
        this.anonymous = true;
        if (error.code === "token-expired") return this.renew();
        // A token the server will not take: what waits for it is refused, for that reason.
        this.authFailure = error;
        this.link.sink.error({ transport: this.name, code: error.code, message: error.message });
        for (const channel of this.waiting) this.link.refuse(channel, error, this.name);
        this.waiting.clear();
        return;
      }
      if (frame.channel && (error.code === "token-expired" || REFUSALS.indexOf(error.code) >= 0)) {
        if (!this.link.follows(frame.channel)) return;
        // Without a token of ours on the server (it expired just now), wait for a fresh one.
        const renewable = error.code === "token-expired" || (error.code === "token-required" && !this.authFailure);
        if (renewable && this.link.auth.enabled) {
          this.anonymous = true;
          this.waiting.add(frame.channel);
          return this.renew();
        }
        return this.link.refuse(frame.channel, this.authFailure || error, this.name);
      }
      // The URL's `access_token` refused: the `auth` op sent with it answers for it.
      if (!frame.channel && frame.id === undefined && /^token_/.test(frame.code)) return;
      this.link.error(this, frame);
    }
    /** The server has no valid token of ours: send a newer or fresh one. */
    renew() {
      if (this.renewing || this.closedFlag) return;
      this.renewing = true;
      this.link.auth.renew(this.authToken).then(
        (token) => {
          this.renewing = false;
          if (!this.closedFlag) this.authenticate(token);
        },
        (error) => {
          this.renewing = false;
          if (this.closedFlag) return;
          for (const channel of this.waiting) this.link.refuse(channel, error, this.name);
          this.waiting.clear();
        },
      );
    }
    authenticate(token) {
      this.authToken = token;
      this.authID = this.nextID++;
      this.sent.set(this.authID, { op: "auth" });
      this.send({ op: "auth", token: token, id: this.authID });
    }
    /** Sends again an op the server did not carry out, if it is still wanted. */
    again(sent) {
      if (this.closedFlag) return;
      const channel = sent.channel;
      if (sent.op === "subscribe" && this.link.follows(channel)) this.subscribe(channel, this.link.position(channel));
      else if (sent.op === "unsubscribe" && !this.link.follows(channel)) this.unsubscribe(channel);
      else if (sent.op === "auth" && this.authID !== null) this.authenticate(this.link.auth.usable() || this.authToken);
    }
    /** A fresh token from the page: the open socket takes it before the old one expires. */
    reauth(token) {
      if (this.socket && this.socket.readyState === 1) this.authenticate(token);
    }
    subscribe(channel, position) {
      if (this.pending) return this.pending.set(channel, position);
      if (this.anonymous && this.link.auth.enabled && !this.authFailure) return this.waiting.add(channel);
      const id = this.nextID++;
      this.sent.set(id, { op: "subscribe", channel: channel });
      this.send(Object.assign({ op: "subscribe", channel: channel, id: id }, positionQuery(position)));
    }
    /** `refused`: the server refused the channel, so there is nothing to unsubscribe. */
    unsubscribe(channel, refused) {
      if (this.pending) return this.pending.delete(channel);
      if (this.waiting.delete(channel) || refused) return;
      const id = this.nextID++;
      this.sent.set(id, { op: "unsubscribe", channel: channel });
      this.send({ op: "unsubscribe", channel: channel, id: id });
    }
    /** Whether a `publish` op can be sent now. */
    ready() {
      return Boolean(!this.closedFlag && !this.pending && this.socket && this.socket.readyState === 1);
    }
    publish(channel, type, data) {
      return new Promise((resolve, reject) => {
        const id = this.nextID++;
        this.publishes.set(id, {
          resolve: (frame) => resolve({ channel: frame.channel, offset: frame.offset, epoch: frame.epoch, type: type, data: data }),
          reject: reject,
        });
        this.send({ op: "publish", channel: channel, type: type, data: data, id: id });
      });
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
      for (const publish of this.publishes ? this.publishes.values() : []) {
        const error = new Error("the WebSocket closed before the publish was answered: it may or may not have been published");
        error.code = "disconnected";
        publish.reject(error);
      }
      if (this.publishes) this.publishes.clear();
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
    /** `refused`: the server refused the channel. */
    unsubscribe(channel, refused) {
      const lane = this.channels.get(channel);
      if (!lane) return;
      this.channels.delete(channel);
      lane.stopped = true;
      this.stop(lane);
      // A candidate left with nothing to show a message on counts as open, as one opened with no channel.
      if (refused && this.channels.size === 0) this.deliver({ type: "herald.welcome", channel: null });
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
    /**
     * Opens a lane once its token is at hand: `open(token, position)`, at once when it is
     * (from `position`), else once a fresh one came (from where the link is then).
     */
    authorized(lane, position, open) {
      this.link.authorize(
        (token, later) => {
          if (this.closedFlag || lane.stopped) return;
          lane.token = token;
          open(token, later ? this.link.position(lane.channel) : position);
        },
        (error) => this.fail("no token: " + error.message),
      );
    }
    /** A lane's message: `herald.expired` (its token expired, the stream ended) reopens it with a fresh token. */
    receive(lane, msg) {
      if (msg.type === "herald.expired") return this.renew(lane);
      this.deliver(msg);
    }
    /** The lane's token expired: go on from its position with a newer or fresh one. */
    renew(lane) {
      this.stop(lane);
      if (this.closedFlag || lane.stopped) return;
      this.link.auth.renew(lane.token).then(
        () => {
          if (!this.closedFlag && !lane.stopped) this.resume(lane);
        },
        (error) => this.link.refuse(lane.channel, error, this.name),
      );
    }
    resume(lane) {
      this.start(lane, this.link.position(lane.channel));
    }
    /**
     * An HTTP error answer to a lane: an expired token is renewed, a refusal stops the channel
     * (one `error`), anything else fails the transport (not retried before `Retry-After`).
     */
    refused(lane, error, reason) {
      if (this.closedFlag || lane.stopped) return;
      if (error.code === "token-expired") return this.renew(lane);
      if (REFUSALS.indexOf(error.code) >= 0) return this.link.refuse(lane.channel, error, this.name);
      this.fail(reason + (error.status ? " (" + error.status + ")" : ""), error.retryAfter);
    }
    /**
     * EventSource, an iframe and a `<script>` show no status when refused: ask the channel with
     * XHR, with the same token, what the server says, and act on that.
     */
    probe(lane, reason) {
      this.stop(lane);
      if (this.closedFlag || lane.stopped) return;
      this.request();
      xhrJSON(channelURL(this.link.base, lane.channel, {}), 10000, (size) => this.count(size), lane.token).promise.then(
        () => this.fail(reason),
        (error) => (error.status ? this.refused(lane, error, reason) : this.fail(reason)),
      );
    }
  }

  class SSETransport extends PerChannelTransport {
    start(lane, position) {
      const Source = this.link.available("sse");
      if (!Source) return this.fail("EventSource is not available");
      this.authorized(lane, position, (token, from) => {
        this.request();
        lane.seen = false;
        const url = channelURL(this.link.base, lane.channel, withToken(this.streamQuery("sse", from), token));
        const source = (lane.source = new Source(url));
        // With welcome=1 every message is a plain `message` whose JSON carries its type.
        source.onmessage = (message) => {
          this.count(message.data.length);
          lane.seen = true;
          this.receive(lane, JSON.parse(message.data));
        };
        // A check's stream ends after its terminal event; that is no failure. A stream that
        // fails before its first message may have been refused: ask.
        source.onerror = () => {
          if (this.link.ended(lane.channel)) return this.stop(lane);
          if (!lane.seen) return this.probe(lane, "EventSource error");
          this.fail("EventSource error");
        };
      });
    }
    stop(lane) {
      if (lane.source) {
        lane.source.onmessage = lane.source.onerror = null;
        lane.source.close();
        lane.source = null;
      }
    }
  }

  class XHRStreamingTransport extends PerChannelTransport {
    start(lane, position) {
      this.authorized(lane, position, (token, from) => {
        this.request();
        const xhr = (lane.xhr = new XMLHttpRequest());
        let seen = 0;
        const read = () => {
          if (xhr.status !== 200) return; // a refusal: its problem document is read once complete
          const text = xhr.responseText;
          let end;
          while ((end = text.indexOf("\n", seen)) >= 0) {
            const line = text.slice(seen, end);
            seen = end + 1;
            this.count(line.length + 1);
            // A blank line is the heartbeat of streams opened without welcome=1.
            if (line.trim()) this.receive(lane, JSON.parse(line));
            if (lane.stopped || lane.xhr !== xhr) return;
          }
          // responseText only grows: reopen from the position before it holds too much.
          if (seen > this.link.options.streamMaxBytes) this.restart(lane);
        };
        xhr.open("GET", channelURL(this.link.base, lane.channel, this.streamQuery("ndjson", from)));
        xhr.setRequestHeader("Accept", "application/x-ndjson");
        if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
        xhr.onprogress = read;
        xhr.onload = () => {
          if (xhr.status >= 400) return this.refused(lane, xhrError(xhr), "stream refused");
          read();
          if (lane.xhr !== xhr) return; // renewed or reopened meanwhile
          // A check's stream ends after its terminal event; anything else ending is a cut.
          if (!lane.stopped && !this.link.ended(lane.channel)) this.fail("stream ended (" + xhr.status + ")");
        };
        xhr.onerror = () => this.fail("XHR stream error");
        xhr.send();
      });
    }
    stop(lane) {
      if (lane.xhr) {
        lane.xhr.onprogress = lane.xhr.onload = lane.xhr.onerror = null;
        lane.xhr.abort();
        lane.xhr = null;
      }
    }
  }

  /** Forever-iframe: a hidden iframe whose document is the stream; its scripts call `parent.heraldEvent(msg, tag)`. */
  class IFrameTransport extends PerChannelTransport {
    start(lane, position) {
      const document = root.document;
      if (!document || !document.body) return this.fail("no document to hold an iframe");
      installFrameDispatcher();
      this.authorized(lane, position, (token, from) => {
        this.request();
        const tag = (lane.tag = "h" + Math.random().toString(36).slice(2));
        lane.bytes = 0;
        lane.seen = false;
        frames.set(tag, (msg) => {
          const size = JSON.stringify(msg).length;
          this.count(size);
          lane.bytes += size;
          lane.seen = true;
          this.receive(lane, msg);
          if (lane.tag === tag && frames.has(tag) && lane.bytes > this.link.options.streamMaxBytes) this.restart(lane);
        });
        const frame = (lane.frame = document.createElement("iframe"));
        frame.style.display = "none";
        frame.src = channelURL(this.link.base, lane.channel, withToken(Object.assign(this.streamQuery("html", from), { tag: tag }), token));
        // The document loads completely only when the stream ends (or an error page arrives).
        frame.onload = () => {
          if (lane.stopped || this.link.ended(lane.channel)) return;
          if (!lane.seen) return this.probe(lane, "iframe stream ended");
          this.fail("iframe stream ended");
        };
        document.body.appendChild(frame);
      });
    }
    stop(lane) {
      if (lane.tag) frames.delete(lane.tag);
      if (lane.frame) {
        lane.frame.onload = null;
        lane.frame.src = "about:blank";
        lane.frame.remove();
        lane.frame = null;
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
    /** After a renewed token: the next poll, from the lane's own position. */
    resume(lane) {
      this.poll(lane);
    }
    poll(lane) {
      if (lane.stopped || this.closedFlag) return;
      // Each poll takes the token current then, so a renewed one is used from the next poll on.
      this.authorized(lane, null, (token) => this.ask(lane, token));
    }
    ask(lane, token) {
      const wait = lane.first || !this.held ? 0 : this.link.pollWait;
      const query = Object.assign({ wait: wait || undefined }, positionQuery(lane.position));
      const started = now();
      this.request();
      lane.pending = this.fetcher(channelURL(this.link.base, lane.channel, query), wait * 1000 + 10000, (size) => this.count(size), token);
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
          if (error.status) return this.refused(lane, error, error.message);
          if (error.opaque) return this.probe(lane, error.message);
          this.fail(error.message || String(error));
        },
      );
    }
    stop(lane) {
      clearTimeout(lane.timer);
      if (lane.pending) lane.pending.cancel();
    }
  }

  /** The error of an XHR's error answer (see problemError). */
  function xhrError(xhr) {
    let body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch (error) {}
    return problemError(xhr.status, body, xhr.getResponseHeader("Retry-After"));
  }

  /** GET `url` as JSON with XHR, with the token as `Authorization: Bearer`. */
  function xhrJSON(url, timeout, count, token) {
    const xhr = new XMLHttpRequest();
    const promise = new Promise((resolve, reject) => {
      xhr.open("GET", url);
      if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
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
        reject(xhrError(xhr));
      };
      xhr.onerror = () => reject(new Error("network error"));
      xhr.ontimeout = () => reject(new Error("timeout"));
      xhr.send();
    });
    return { promise: promise, cancel: () => xhr.abort() };
  }

  let jsonpCounter = 0;
  /** GET `url` as JSONP: a `<script>` calling a one-off global callback (the token as `access_token`). */
  function jsonp(url, timeout, count, token) {
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
        // An error answer is a load error too: its status is not to be seen from here.
        const error = new Error("JSONP load error");
        error.opaque = true;
        reject(error);
      };
      timer = setTimeout(() => {
        cleanup();
        // A late answer must not throw: leave a no-op behind.
        root[name] = () => {};
        reject(new Error("timeout"));
      }, timeout);
      const credential = token ? "&access_token=" + encodeURIComponent(token) : "";
      script.src = url + (url.indexOf("?") >= 0 ? "&" : "?") + "callback=" + name + credential;
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
    constructor(base, options, sink, auth) {
      this.base = base;
      this.options = options;
      this.sink = sink; // {message(msg), state(state, transport), error(error)}
      this.auth = auth || new Tokens({}, () => {});
      this.channels = new Map(); // channel -> {epoch, offset} | null (from now)
      this.refused = new Set(); // channels the server refused to this token
      this.notBefore = 0; // no reconnect before this time (the server's Retry-After)
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
      // A renewed token: an open WebSocket takes it before the old one expires.
      this.onToken = (token) => {
        for (const transport of this.transports()) if (transport.reauth) transport.reauth(token);
      };
      this.auth.listeners.add(this.onToken);
    }

    /**
     * Calls `fn(token, later)` with the token to send (null without one): at once when it is at
     * hand, else (`later` true) once a fresh one came; `fail(error)` when none came.
     */
    authorize(fn, fail) {
      if (!this.auth.enabled) return fn(null, false);
      const token = this.auth.usable();
      if (token) return fn(token, false);
      this.auth.get().then((fresh) => fn(fresh, true), fail);
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

    follows(channel) {
      return this.channels.has(channel);
    }

    ended(channel) {
      return this.endedChannels.has(channel);
    }

    subscribe(channel, position) {
      if (this.channels.has(channel)) return;
      this.refused.delete(channel);
      this.channels.set(channel, position);
      for (const transport of this.transports()) transport.subscribe(channel, position);
      if (this.state === "idle") this.connect();
    }

    unsubscribe(channel) {
      this.refused.delete(channel);
      if (!this.channels.delete(channel)) return;
      for (const transport of this.transports()) transport.unsubscribe(channel);
    }

    /**
     * The server refuses `channel` to this token (or no fresh token came): stop following it,
     * and say so once. Subscribing again, or a token from setToken, tries it again.
     */
    refuse(channel, error, transport) {
      if (!this.channels.delete(channel)) return;
      this.refused.add(channel);
      for (const each of this.transports()) each.unsubscribe(channel, true);
      this.sink.error({
        transport: transport,
        channel: channel,
        code: error.code || "token-unavailable",
        status: error.status,
        message: error.message,
        permanent: true,
      });
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
      if (this.auth.enabled && !this.auth.usable()) {
        // Every candidate needs the token: get it once, before the race's clock starts.
        if (this.tokenWait) return;
        this.tokenWait = true;
        this.auth.get().then(
          () => {
            this.tokenWait = false;
            this.connect();
          },
          (error) => {
            this.tokenWait = false;
            if (this.state === "closed") return;
            this.sink.error({ code: "token-unavailable", message: "getToken failed: " + (error && error.message ? error.message : error) });
            this.retry();
          },
        );
        return;
      }
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

    /** Reconnects after a capped, jittered exponential backoff, and not before the server's Retry-After; never gives up. */
    retry() {
      if (this.state === "closed") return;
      this.setState("unavailable");
      const backoff = jitter(Math.min(this.options.backoffMax, this.options.backoffInitial * Math.pow(2, this.attempt)));
      this.attempt += 1;
      this.retryTimer = setTimeout(() => this.connect(), Math.max(backoff, this.notBefore - now()));
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

    closed(transport, reason, retryAfter) {
      clearTimeout(transport.verifyTimer);
      const asked = retryAfter !== undefined;
      if (asked) this.notBefore = Math.max(this.notBefore, now() + retryAfter * 1000);
      if (this.candidates.delete(transport)) {
        const race = transport.race;
        // The remembered transport failed its re-verification: forget it (not when the server only asked for time).
        if (race && race.cached === transport.name && !asked) forgetCache(this.options, this.base);
        // The server asked to be left alone a while (429, 503): start no further candidate now.
        if (race && asked) race.queue.length = 0;
        if (race && race.next && this.candidates.size === 0) race.next();
        return;
      }
      if (transport !== this.active) return;
      this.active = null;
      this.noteCut();
      const error = { transport: transport.name, reason: reason };
      this.sink.error(asked ? Object.assign(error, { retryAfter: retryAfter }) : error);
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
      if (this.state === "unavailable") return now() >= this.notBefore && this.connect();
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
      this.auth.listeners.delete(this.onToken);
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
        this.herald.request(url).then(
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
          (error) => {
            // Refused to this token: the link stops the channel too; say so, and stop here.
            if (REFUSALS.indexOf(error.code) >= 0) {
              const refusal = { channel: this.channel, code: error.code, status: error.status, message: error.message, permanent: true };
              return this.herald._emit("error", refusal);
            }
            // Not before the server's Retry-After.
            const wait = Math.max(jitter(delay), (error.retryAfter || 0) * 1000);
            setTimeout(() => attempt(Math.min(delay * 2, 10000)), wait);
          },
        );
      };
      attempt(500);
    }
  }

  /** `fetch` as JSON; an error answer rejects with problemError (its `status`, `code`, `problem`, `retryAfter`). */
  function fetchJSON(url, init) {
    return fetch(url, init).then((response) =>
      response.text().then((text) => {
        let body = null;
        try {
          body = text ? JSON.parse(text) : null;
        } catch (error) {
          if (response.ok) throw new Error("not JSON");
        }
        if (!response.ok) throw problemError(response.status, body, response.headers.get("Retry-After"));
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
      this.auth = new Tokens(this.options, (error) => this._emit("error", error));
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

    /**
     * Creates a check and resolves with it once it has ended (done, failed or canceled), with
     * the `cancel_token` of the create answer (`onCreated` gets it while the check runs).
     */
    createCheck(spec, options) {
      const headers = { "Content-Type": "application/json" };
      if (options && options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
      return this.request(this.base + "/api/v1/checks", { method: "POST", headers: headers, body: JSON.stringify(spec) }).then((check) => {
        if (options && options.onCreated) options.onCreated(check);
        if (check.state !== "processing") return check;
        return this.watchCheck(check.id, options && options.onChange).then((ended) =>
          check.cancel_token ? Object.assign({}, ended, { cancel_token: check.cancel_token }) : ended,
        );
      });
    }

    /**
     * Cancels a processing check: with its `cancel_token` (Herald-Cancel-Token), or as the token
     * that created it. Resolves with the canceled check.
     */
    cancelCheck(id, cancelToken) {
      const headers = cancelToken ? { "Herald-Cancel-Token": cancelToken } : {};
      return this.request(this.base + "/api/v1/checks/" + encodeURIComponent(id), { method: "DELETE", headers: headers });
    }

    /**
     * Publishes an event to `channel` (the token's `publish` grant must match): over the open
     * WebSocket when there is one, else with POST. Resolves with `{channel, offset, epoch, type,
     * data}` (over HTTP, the whole event).
     */
    publish(channel, type, data) {
      const active = this.link && this.link.active;
      if (active && active.publish && active.ready()) {
        return active.publish(channel, type, data).catch((error) => {
          // Refused for want of a fresh token (it expired just now): nothing was published.
          const stale = error.code === "token-expired" || (error.code === "token-required" && this.auth.enabled);
          if (stale) return this.publishHTTP(channel, type, data);
          throw error;
        });
      }
      return this.publishHTTP(channel, type, data);
    }

    publishHTTP(channel, type, data) {
      const url = this.base + "/api/v1/channels/" + encodeURIComponent(channel) + "/events";
      const body = JSON.stringify(data === undefined ? { type: type } : { type: type, data: data });
      return this.request(url, { method: "POST", headers: { "Content-Type": "application/json" }, body: body });
    }

    /**
     * Replaces the token (for pages without getToken, or after a login): the connection takes it
     * at once, and channels refused to the old token are tried again.
     */
    setToken(token) {
      this.auth.set(token);
      const link = this.link;
      if (!link) return;
      for (const channel of [...link.refused]) {
        const subscription = this.subscriptions.get(channel);
        const entry = this.remote && this.remote.get(channel);
        if (subscription || entry) link.subscribe(channel, subscription ? subscription.position : entry.position);
      }
    }

    /** `fetch` as JSON with the token (`Authorization: Bearer`); one the server found expired is renewed once. */
    request(url, init, renewed) {
      const auth = this.auth;
      if (!auth.enabled) return fetchJSON(url, init);
      return auth.get().then((token) => {
        const headers = Object.assign({}, init && init.headers, { Authorization: "Bearer " + token });
        return fetchJSON(url, Object.assign({}, init, { headers: headers })).catch((error) => {
          if (error.code !== "token-expired" || renewed) throw error;
          return auth.renew(token).then(() => this.request(url, init, true));
        });
      });
    }

    close() {
      if (this.bus) {
        this.post({ t: "bye", tab: this.tab });
        this.bus.close();
      }
      this.closed = true;
      this.auth.close();
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
        error: (error) => {
          this._emit("error", error);
          // A channel's refusal concerns the tabs following it too.
          if (error.channel) this.post({ t: "error", error: error });
        },
      }, this.auth);
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
        case "error":
          if (this.subscriptions.has(message.error.channel)) this._emit("error", message.error);
          return;
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

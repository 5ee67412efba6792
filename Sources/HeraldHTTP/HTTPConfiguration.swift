/// Settings of the HTTP API that routes and transports read.
package struct HTTPConfiguration: Sendable, Hashable {
    /// Largest accepted request body (`max-body-bytes`, `HERALD_MAX_BODY_BYTES`, default 65536).
    package var maxBodyBytes: Int
    /// Cap on a long poll's `wait` (`max-wait`, `HERALD_MAX_WAIT`, default 60 s).
    package var maxWait: Duration
    /// The server API key (`--api-key`, `HERALD_API_KEY`; generated when unset).
    package var apiKey: String
    /// Most events one poll answer carries (`poll-max-events`, `HERALD_POLL_MAX_EVENTS`, default 1000).
    package var maxEventsPerPoll: Int
    /// How long a connection may sit idle, or stall while sending a request, before it is
    /// closed (`idle-timeout`, `HERALD_IDLE_TIMEOUT`, default 60 s). A held long poll is never idle.
    package var idleTimeout: Duration
    /// How long a request head may take from its first byte to its last, and the window over
    /// which a body's rate is measured (`head-timeout`, `HERALD_HEAD_TIMEOUT`, default 10 s).
    package var headTimeout: Duration = .seconds(10)
    /// Bytes per second a request body must keep up, measured over `head-timeout` windows
    /// (`min-body-rate`, `HERALD_MIN_BODY_RATE`, default 100); a slower body is a 408.
    package var minBodyRate: Int = 100
    /// Client connections held at once (`max-connections`, `HERALD_MAX_CONNECTIONS`); nil: the
    /// open-file limit, raised to its hard value at start, less 256 kept for everything else.
    /// Past it a connection is answered 503 and closed.
    package var maxConnections: Int?
    /// How long a connection may stay unwritable, its client not reading, before it is
    /// closed (`write-timeout`, `HERALD_WRITE_TIMEOUT`, default 30 s).
    package var writeTimeout: Duration = .seconds(30)
    /// How long SIGTERM waits for connections and work to end before cancelling them
    /// (`shutdown-timeout`, `HERALD_SHUTDOWN_TIMEOUT`, default 30 s).
    package var shutdownTimeout: Duration = .seconds(30)
    /// Pending connections the kernel queues before Herald accepts them (`backlog`,
    /// `HERALD_BACKLOG`, default 4096, capped by `net.core.somaxconn`). A short queue drops
    /// SYNs under a connection burst, and each drop costs the client a 1 s retransmission.
    package var backlog: Int
    /// Origins whose pages may call the API (`allowed-origins`, comma-separated; nil: any, `*`).
    package var allowedOrigins: Set<String>?
    /// Whether `callback=` (JSONP) is served (`jsonp`, `HERALD_JSONP`, default true).
    package var jsonp = true
    /// Seconds between heartbeats on idle streams (`--heartbeat`, `HERALD_HEARTBEAT`, default 15).
    package var heartbeat: Duration
    /// How long a subscription's replaced secret keeps signing beside the new one after a
    /// rotation (`webhook-secret-overlap`, `HERALD_WEBHOOK_SECRET_OVERLAP`, default 24 h).
    package var secretOverlap: Duration = .seconds(86_400)

    package init(
        maxBodyBytes: Int = 65_536,
        maxWait: Duration = .seconds(60),
        apiKey: String,
        maxEventsPerPoll: Int = 1000,
        idleTimeout: Duration = .seconds(60),
        backlog: Int = 4096,
        heartbeat: Duration = .seconds(15)
    ) {
        self.heartbeat = heartbeat
        self.maxBodyBytes = maxBodyBytes
        self.maxWait = maxWait
        self.apiKey = apiKey
        self.maxEventsPerPoll = maxEventsPerPoll
        self.idleTimeout = idleTimeout
        self.backlog = backlog
    }
}

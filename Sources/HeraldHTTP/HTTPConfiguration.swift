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

    package init(
        maxBodyBytes: Int = 65_536,
        maxWait: Duration = .seconds(60),
        apiKey: String,
        maxEventsPerPoll: Int = 1000
    ) {
        self.maxBodyBytes = maxBodyBytes
        self.maxWait = maxWait
        self.apiKey = apiKey
        self.maxEventsPerPoll = maxEventsPerPoll
    }
}

/// Settings of the `/api/v1/ws` endpoint.
package struct WebSocketConfiguration: Sendable, Hashable {
    /// Largest message a client may send (`ws-max-message-bytes`, `HERALD_WS_MAX_MESSAGE_BYTES`,
    /// default 65536); a larger one closes the connection with 1009.
    package var maxMessageBytes: Int
    /// Frames queued for one connection before it counts as too slow and is closed
    /// (`ws-max-queued-frames`, default 1024).
    package var maxQueuedFrames: Int
    /// Bytes of frames queued for one connection before it counts as too slow and is closed
    /// (`ws-max-queued-bytes`, default 1 MiB); an event's bytes count in full for each
    /// connection, although they are shared.
    package var maxQueuedBytes: Int
    /// Channels one connection may subscribe to (`ws-max-subscriptions`, default 256).
    package var maxSubscriptions: Int
    /// Origins allowed to open a WebSocket (`ws-allowed-origins`, comma-separated; empty: any).
    /// A request without `Origin` (not a browser) is always allowed.
    package var allowedOrigins: Set<String>

    package init(
        maxMessageBytes: Int = 65_536,
        maxQueuedFrames: Int = 1024,
        maxQueuedBytes: Int = 1 << 20,
        maxSubscriptions: Int = 256,
        allowedOrigins: Set<String> = []
    ) {
        self.maxMessageBytes = maxMessageBytes
        self.maxQueuedFrames = maxQueuedFrames
        self.maxQueuedBytes = maxQueuedBytes
        self.maxSubscriptions = maxSubscriptions
        self.allowedOrigins = allowedOrigins
    }
}

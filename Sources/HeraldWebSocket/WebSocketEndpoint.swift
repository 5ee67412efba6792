package import HTTPTypes
package import HeraldAccess
internal import HeraldCore
package import HeraldHTTP
package import HeraldHub
package import HeraldRunner
internal import Hummingbird
internal import HummingbirdCore
package import HummingbirdWebSocket
package import Logging
internal import NIOCore
internal import NIOWebSocket
internal import ServiceLifecycle
internal import Synchronization

/// `/api/v1/ws`: many channels per connection, bidirectional, per `docs/protocol.md`.
///
/// Text frames carry one JSON op each. Malformed or unknown ops get an `error` op, never a
/// disconnect. Server pings every `heartbeat` and a close when pongs stop come from the
/// WebSocket library (auto-ping); a message over `maxMessageBytes` closes with 1009. On
/// graceful shutdown every connection closes with 1012 (service restart), after the frames
/// already queued, so clients reconnect elsewhere and resume from their last offsets.
///
/// The endpoint is a `Service`: placed after the HTTP server in the `ServiceGroup`, it is told
/// to shut down first, and closes every live connection with 1012.
package final class WebSocketEndpoint: Service, Sendable {
    package static let path = "/api/v1/ws"

    let follower: ChannelFollower
    let checks: CheckService
    let events: EventLog
    let access: Access
    let configuration: WebSocketConfiguration
    let logger: Logger
    private let sessions = Mutex<(live: [ObjectIdentifier: WebSocketSession], isDraining: Bool)>(([:], false))

    package init(
        follower: ChannelFollower,
        checks: CheckService,
        events: EventLog,
        access: Access,
        configuration: WebSocketConfiguration,
        logger: Logger
    ) {
        self.follower = follower
        self.checks = checks
        self.events = events
        self.access = access
        self.configuration = configuration
        self.logger = logger
    }

    /// Waits for graceful shutdown, then closes every connection with 1012 (service restart).
    package func run() async throws {
        try? await gracefulShutdown()
        let live = sessions.withLock { sessions in
            sessions.isDraining = true
            return Array(sessions.live.values)
        }
        for session in live { session.finish(.restart) }
    }

    /// Why `request` may not upgrade, or nil when it may: the path, and the `Origin`
    /// allow-list when one is set.
    package func refusal(for request: HTTPRequest) -> Problem? {
        guard request.path?.split(separator: "?").first.map(String.init) == Self.path else {
            return Problem(
                status: .notFound,
                code: "not-found",
                detail: "WebSocket connections are served at \(Self.path)"
            )
        }
        guard !configuration.allowedOrigins.isEmpty, let origin = request.headerFields[.origin],
            !configuration.allowedOrigins.contains(origin)
        else { return nil }
        return Problem(
            status: .forbidden,
            code: "origin-refused",
            detail: "the origin \(origin) is not allowed to connect"
        )
    }

    /// The credential an upgrade request carries: `Authorization: Bearer` (non-browser
    /// clients) or `?access_token=` (browsers cannot set headers on a WebSocket).
    package static func bearer(of request: HTTPRequest) -> String? {
        if let credential = Access.credential(authorization: request.headerFields[.authorization]) { return credential }
        return request.path.flatMap { URI($0).queryParameters.get("access_token") }
    }

    /// Serves one upgraded connection until either side closes it.
    /// - Parameters:
    ///   - bearer: the upgrade request's credential (see ``bearer(of:)``).
    ///   - address: the client's address, for rate limits.
    package func serve(
        _ inbound: WebSocketInboundStream,
        _ outbound: WebSocketOutboundWriter,
        bearer: String? = nil,
        address: String? = nil
    ) async throws {
        let (frames, sink) = AsyncStream<ByteBuffer>.makeStream(
            bufferingPolicy: .bufferingOldest(configuration.maxQueuedFrames)
        )
        let session = WebSocketSession(
            sink: sink,
            follower: follower,
            checks: checks,
            events: events,
            access: access,
            configuration: configuration,
            logger: logger,
            address: address
        )
        let isDraining = sessions.withLock { sessions in
            sessions.live[ObjectIdentifier(session)] = session
            return sessions.isDraining
        }
        if isDraining { session.finish(.restart) }
        await session.start(bearer: bearer)
        do {
            try await exchange(inbound, outbound, session: session, frames: frames)
        } catch {
            await end(session)
            throw error
        }
        await end(session)
    }

    /// Forgets `session` and waits for its subscriptions to end.
    private func end(_ session: WebSocketSession) async {
        _ = sessions.withLock { $0.live.removeValue(forKey: ObjectIdentifier(session)) }
        await session.close()
    }

    /// Reads ops and writes frames until either side closes.
    private func exchange(
        _ inbound: WebSocketInboundStream,
        _ outbound: WebSocketOutboundWriter,
        session: WebSocketSession,
        frames: AsyncStream<ByteBuffer>
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            // The one writer: frames leave in order, and a slow client only fills its own queue.
            group.addTask {
                for await frame in frames {
                    try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: frame)))
                    session.sent(frame.readableBytes)
                }
                switch session.closing {
                case .slowConsumer(let channel, let offset):
                    let error = OpError("slow_consumer", "the connection fell behind; resume from your last offset")
                    try await outbound.write(.text(ServerFrame.error(error, channel: channel, offset: offset, id: nil)))
                    try await outbound.close(.policyViolation, reason: "slow consumer")
                case .restart:
                    try await outbound.close(.unknown(1012), reason: "service restart")
                case .messageTooLarge:
                    try await outbound.close(.messageTooLarge, reason: "message too large")
                case .clientClosed, nil:
                    break
                }
            }
            for try await message in inbound.messages(maxSize: configuration.maxMessageBytes) {
                guard case .text(let text) = message else {
                    session.send(ServerFrame.error(OpError("malformed", "only text frames are understood"), id: nil))
                    continue
                }
                guard text.utf8.count <= configuration.maxMessageBytes else {
                    session.finish(.messageTooLarge)
                    break
                }
                await session.handle(text)
            }
            session.finish(.clientClosed)
            try await group.waitForAll()
        }
    }
}

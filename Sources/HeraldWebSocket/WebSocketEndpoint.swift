package import HTTPTypes
package import HeraldAccess
internal import HeraldCore
package import HeraldHTTP
package import HeraldHub
package import HeraldRunner
internal import Hummingbird
internal import HummingbirdCore
internal import HummingbirdWebSocket
package import Logging
package import NIOCore
internal import ServiceLifecycle

/// `/api/v1/ws`: many channels per connection, bidirectional, per `docs/protocol.md`.
///
/// Each upgraded connection is served on its event loop by a ``WebSocketConnection``. Text
/// frames carry one JSON op each; malformed or unknown ops get an `error` op, never a
/// disconnect. The server pings every `heartbeat` and closes a connection that stays silent
/// (1001); a message over `maxMessageBytes` closes it with 1009. On graceful shutdown every
/// connection closes with 1012 (service restart), after the frames already queued, so clients
/// reconnect elsewhere and resume from their last offsets.
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
    let loops: WebSocketLoops

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
        self.loops = WebSocketLoops(pingInterval: TimeAmount(follower.heartbeat))
    }

    /// Waits for graceful shutdown, then closes every connection with 1012 (service restart).
    package func run() async throws {
        try? await gracefulShutdown()
        loops.drain()
    }

    /// Why `request` may not upgrade, or nil when it may: the path, the `Origin` allow-list
    /// when one is set, and shutdown (every connection is closing with 1012; a client retries
    /// elsewhere, or here once restarted).
    package func refusal(for request: HTTPRequest) -> Problem? {
        if loops.isDraining {
            return Problem(
                status: .serviceUnavailable,
                code: "unavailable",
                detail: "the server is shutting down",
                headers: [.retryAfter: "1"]
            )
        }
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

    /// The `Sec-WebSocket-Extensions` answer to `request`'s offers: permessage-deflate when one
    /// can be accepted (``SharedDeflate``), else nil.
    package static func extensionsResponse(to request: HTTPRequest) -> String? {
        let offers = WebSocketExtensionHTTPParameters.parseHeaders(request.headerFields).map { offer in
            (name: offer.name, parameters: offer.parameters.mapValues(\.optional))
        }
        return SharedDeflate.accept(offers)
    }

    /// The handler that serves an upgraded connection on its loop, after NIO's frame decoder.
    /// - Parameters:
    ///   - bearer: the upgrade request's credential (see ``bearer(of:)``).
    ///   - address: the client's address, for rate limits.
    ///   - deflates: whether ``extensionsResponse(to:)`` accepted permessage-deflate.
    ///   - writeTimeout: how long the connection may stay unwritable (`write-timeout`), when the
    ///     handler takes the bound over from the pipeline.
    package func handler(
        bearer: String?,
        address: String?,
        deflates: Bool,
        writeTimeout: TimeAmount? = nil
    ) -> any ChannelHandler {
        WebSocketConnection(
            endpoint: self,
            bearer: bearer,
            address: address,
            deflates: deflates,
            writeTimeout: writeTimeout
        )
    }
}

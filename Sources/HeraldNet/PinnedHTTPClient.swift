package import AsyncHTTPClient
package import HeraldCore
internal import NIOCore
internal import NIOPosix

extension HTTPClient {
    /// A client for requests to `host` that connects to `address`, the one the SSRF guard
    /// checked (TLS still verifies, and sends SNI for, the name), follows no redirect, gives
    /// up after `timeout` to connect or between reads, and fails at once when it is refused.
    /// Shut it down after its requests.
    package static func pinned(
        host: String,
        to address: IPAddress,
        timeout: Duration,
        connectionsPerHost: Int = 1,
        idleTimeout: Duration = .seconds(1)
    ) -> HTTPClient {
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: TimeAmount(timeout), read: TimeAmount(timeout))
        )
        configuration.dnsOverride = [host: address.description]
        configuration.connectionPool = .init(
            idleTimeout: TimeAmount(idleTimeout),
            concurrentHTTP1ConnectionsPerHostSoftLimit: connectionsPerHost
        )
        // A refused connection fails the attempt at once. Retrying it inside the attempt held a
        // slot for the whole timeout; webhooks have their own retry schedule, and an `http`
        // check reports what the target did.
        configuration.connectionPool.retryConnectionEstablishment = false
        return HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
    }
}

extension HTTPClientError {
    /// Whether nothing answered in time: connecting, between reads, or by the request's deadline.
    package var isTimeout: Bool {
        self == .deadlineExceeded || self == .readTimeout || self == .connectTimeout
    }
}

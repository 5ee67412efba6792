package import AsyncHTTPClient
package import HeraldCore
internal import NIOCore
internal import NIOPosix

extension HTTPClient {
    /// A client for requests to `host` that connects to `address`, the one the SSRF guard
    /// checked (TLS still verifies, and sends SNI for, the name), follows no redirect, and gives
    /// up after `timeout` to connect or between reads. Shut it down after its requests.
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
        return HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
    }
}

extension HTTPClientError {
    /// Whether nothing answered in time: connecting, between reads, or by the request's deadline.
    package var isTimeout: Bool {
        self == .deadlineExceeded || self == .readTimeout || self == .connectTimeout
    }
}

package import AsyncHTTPClient
package import HeraldCore
internal import NIOCore
internal import NIOPosix

extension HTTPClient {
    /// A client for one request to `host` that connects to `address`, the one the SSRF guard
    /// checked (TLS still verifies, and sends SNI for, the name), follows no redirect, and gives
    /// up after `timeout` to connect or between reads. Shut it down after the request.
    package static func pinned(host: String, to address: IPAddress, timeout: Duration) -> HTTPClient {
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: TimeAmount(timeout), read: TimeAmount(timeout))
        )
        configuration.dnsOverride = [host: address.description]
        configuration.connectionPool = .init(idleTimeout: .seconds(1), concurrentHTTP1ConnectionsPerHostSoftLimit: 1)
        return HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
    }
}

extension HTTPClientError {
    /// Whether nothing answered in time: connecting, between reads, or by the request's deadline.
    package var isTimeout: Bool {
        self == .deadlineExceeded || self == .readTimeout || self == .connectTimeout
    }
}

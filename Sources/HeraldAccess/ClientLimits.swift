package import HeraldCore

/// The per-client rate limits (token buckets) and whose `X-Forwarded-For` is believed.
///
/// A client is its token's `sub` when it has one, else its address (see ``ClientAddresses``).
/// The server API key is never limited. A nil limiter is off.
package struct ClientLimits: Sendable {
    /// What is limited.
    package enum Kind: String, Sendable, CaseIterable {
        /// `rate-limit-creates`: checks created (HTTP, WebSocket, gRPC).
        case creates
        /// `rate-limit-publishes`: events published with a token.
        case publishes
        /// `rate-limit-ws-ops`: WebSocket ops of any kind.
        case webSocketOps
        /// `rate-limit-connects`: new connections per address (checked at accept).
        case connects
    }

    package var addresses: ClientAddresses
    private var limiters: [Kind: RateLimiter] = [:]

    /// - Parameter rates: per second, by kind; absent or 0: off.
    package init(rates: [Kind: Double] = [:], addresses: ClientAddresses = .init()) {
        self.addresses = addresses
        for (kind, rate) in rates where rate > 0 { limiters[kind] = RateLimiter(perSecond: rate) }
    }

    package func rate(of kind: Kind) -> Double? { limiters[kind]?.rate }

    /// Counts one `kind` for the client.
    /// - Throws: `.rateLimited` with `retryAfter` when the client is over its rate.
    package func take(_ kind: Kind, by principal: Principal, address: String?) throws(HeraldError) {
        if principal.isServer { return }
        guard let limiter = limiters[kind] else { return }
        let client = principal.subject.map { "sub:" + $0 } ?? "ip:" + (address.map(Network.clientKey) ?? "unknown")
        if let wait = limiter.take(client) {
            let seconds = Int(wait.components.seconds)
            throw HeraldError(
                .rateLimited,
                "over the rate limit for \(kind.rawValue) (\(Self.format(limiter.rate))/s); retry after \(seconds) s",
                retryAfter: seconds
            )
        }
    }

    private static func format(_ rate: Double) -> String {
        rate == rate.rounded() ? String(Int(rate)) : String(rate)
    }
}

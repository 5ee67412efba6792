internal import HeraldCore
internal import Synchronization

/// Token buckets per client: `rate` tokens a second, up to a burst of twice that.
///
/// A client is a key (its token's `sub`, else its address). Memory is bounded: at most
/// `maxClients` buckets (100,000 × about 80 bytes ≈ 8 MB); past it, buckets that have refilled
/// (idle clients) are dropped, and if every one is busy the map starts over, which only
/// forgives some clients a burst. The lock is held for a dictionary lookup, never across I/O.
package final class RateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    /// Tokens a second; the burst is twice that.
    package let rate: Double
    private let maxClients: Int
    private let buckets = Mutex<[String: Bucket]>([:])

    package init(perSecond rate: Double, maxClients: Int = 100_000) {
        self.rate = rate
        self.maxClients = maxClients
    }

    private var burst: Double { max(1, 2 * rate) }

    /// Takes one token for `client`.
    /// - Returns: nil when allowed; else how long until a token is there (at least 1 s, as
    ///   `Retry-After` counts whole seconds).
    package func take(_ client: String, now: ContinuousClock.Instant = .now) -> Duration? {
        buckets.withLock { buckets -> Duration? in
            var bucket = buckets[client] ?? Bucket(tokens: burst, updated: now)
            let elapsed = Double((now - bucket.updated).milliseconds) / 1000
            bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
            bucket.updated = now
            guard bucket.tokens >= 1 else {
                buckets[client] = bucket
                return .seconds(max(1, Int(((1 - bucket.tokens) / rate).rounded(.up))))
            }
            bucket.tokens -= 1
            if buckets[client] == nil && buckets.count >= maxClients { evict(&buckets, now: now) }
            buckets[client] = bucket
            return nil
        }
    }

    /// Clients tracked now.
    package var count: Int { buckets.withLock { $0.count } }

    /// Drops the buckets that have refilled; if nine in ten are still busy, all of them.
    private func evict(_ buckets: inout [String: Bucket], now: ContinuousClock.Instant) {
        buckets = buckets.filter { _, bucket in
            bucket.tokens + Double((now - bucket.updated).milliseconds) / 1000 * rate < burst
        }
        if buckets.count * 10 >= 9 * maxClients { buckets.removeAll(keepingCapacity: true) }
    }
}

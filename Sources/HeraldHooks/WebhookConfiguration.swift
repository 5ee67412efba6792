package import HeraldStore

/// How deliveries are sent and retried.
package struct WebhookConfiguration: Sendable {
    /// Waits before each retry (`--webhook-retry-schedule`); after the last, a delivery fails.
    package var retrySchedule: [Duration] = [5, 300, 1800, 7200, 18000, 36000, 36000].map { .seconds($0) }
    /// How long a target has to answer (`--webhook-timeout`, default 15 s).
    package var timeout: Duration = .seconds(15)
    /// Deliveries in flight at once, over all targets. Hanging targets hold a slot until their
    /// timeout, so this is large: requests in flight cost a socket and a few KiB, not a thread.
    package var maxInFlight = 1024
    /// Deliveries in flight at once to one target (scheme, host and port).
    package var maxInFlightPerTarget = 8
    /// Deliveries not yet attempted that a subscription may have at once: more of its events
    /// stay in the webhook event log until these go.
    package var fanOutWindow: Int { 2 * maxInFlightPerTarget }
    /// First attempts to targets not known to be healthy (new, failing, probing), per second,
    /// with bursts of a tenth of that: a thousand new targets are tried over seconds, so their
    /// connections, and timeouts if they hang, never line up.
    package var suspectAttemptsPerSecond = 100
    /// Consecutive failures that open a target's circuit.
    package var breakerThreshold = 5
    /// How long an open circuit holds a target's deliveries before one probe goes out.
    package var breakerCooldown: Duration = .seconds(30)
    /// A subscription whose target has failed for this long is disabled (`PUT` re-enables it).
    package var disableAfter: Duration = .seconds(5 * 86_400)
    /// A subscription with more events waiting than this, or an older one, is disabled
    /// (`--webhook-max-lag-events`, `--webhook-max-lag-age`): it bounds the webhook event log and
    /// the outbox when a target is slow or down. The age's default equals `disableAfter`'s, and
    /// does not follow it: raise both together, or a failing subscription is disabled for its
    /// lag first.
    package var lagCap = LagCap(events: 100_000, age: .seconds(5 * 86_400))

    package init() {}
}

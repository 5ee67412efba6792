internal import Synchronization

/// Per-target isolation: a cap on deliveries in flight, and a circuit breaker that opens after
/// consecutive failures, lets one probe through after its cooldown (half-open), and closes on
/// a success. Dead or hanging targets then cost one probe per cooldown, not a slot per delivery.
final class CircuitBreakers: Sendable {
    private struct Target {
        var inFlight = 0
        var failures = 0
        var openUntil: ContinuousClock.Instant?
        var probing = false
    }

    private let configuration: WebhookConfiguration
    private let targets = Mutex<[String: Target]>([:])

    init(configuration: WebhookConfiguration) {
        self.configuration = configuration
    }

    /// Takes a slot for `target`, or answers when to try again (capped or open).
    func acquire(_ target: String, now: ContinuousClock.Instant) -> Duration? {
        targets.withLock { targets in
            var state = targets[target, default: Target()]
            defer { targets[target] = state }
            if let openUntil = state.openUntil {
                if now < openUntil || state.probing { return max(openUntil - now, .seconds(1)) }
                state.probing = true  // half-open: this one delivery is the probe
            } else if state.inFlight >= configuration.maxInFlightPerTarget {
                return .milliseconds(200)
            }
            state.inFlight += 1
            return nil
        }
    }

    /// Returns a slot with the attempt's result.
    func release(_ target: String, succeeded: Bool, now: ContinuousClock.Instant) {
        targets.withLock { targets in
            guard var state = targets[target] else { return }
            state.inFlight -= 1
            state.probing = false
            if succeeded {
                state.failures = 0
                state.openUntil = nil
            } else {
                state.failures += 1
                if state.failures >= configuration.breakerThreshold {
                    state.openUntil = now.advanced(by: configuration.breakerCooldown)
                }
            }
            if state.inFlight == 0 && state.failures == 0 {
                targets[target] = nil
            } else {
                targets[target] = state
            }
        }
    }
}

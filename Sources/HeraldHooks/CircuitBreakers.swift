internal import Synchronization

/// Per-target isolation: a cap on deliveries in flight, and a circuit breaker that opens after
/// consecutive failures, lets one probe through after its cooldown (half-open), and closes on
/// a success.
///
/// Only a target whose last attempt succeeded is *healthy* and gets `maxInFlightPerTarget`
/// deliveries at once. Any other (new, failing, probing) gets one, and all of those together
/// get at most half of `maxInFlight`, so the other half always serves healthy targets: a
/// thousand dead or hanging targets cost half the slots at most until their circuits open,
/// and one probe per cooldown after that. A target that finds no slot for suspects is parked
/// until one is given back, first come first served, rather than asking again and again.
final class CircuitBreakers: Sendable {
    /// What to do with a delivery to a target.
    enum Decision: Equatable {
        /// Send it now: a slot is taken; give it back with
        /// ``CircuitBreakers/release(_:suspect:succeeded:now:)`` and the same `suspect`.
        case send(suspect: Bool)
        /// Hold this delivery a little: its healthy target is at its cap.
        case wait(Duration)
        /// Hold every delivery to the target this long: it is not known to be healthy and is
        /// busy with one already, or its circuit is open.
        case park(Duration)
    }

    private struct Target {
        var inFlight = 0
        /// Whether the last attempt succeeded.
        var healthy = false
        var failures = 0
        var openUntil: ContinuousClock.Instant?
        var lastUsed: ContinuousClock.Instant
        /// Whether its backlog was parked behind the attempt in flight.
        var parked = false
    }

    private struct State {
        var targets: [String: Target] = [:]
        var suspectInFlight = 0
        var releases = 0
        /// Targets parked because every slot for suspects was taken, in order: each slot given
        /// back unparks the first (a target parks once, however many deliveries it has).
        var waiting: [String] = []
        var isWaiting: Set<String> = []
    }

    /// How long an idle target is remembered.
    private static let memory: Duration = .seconds(600)

    private let configuration: WebhookConfiguration
    private let state = Mutex(State())

    init(configuration: WebhookConfiguration) {
        self.configuration = configuration
    }

    func acquire(_ key: String, now: ContinuousClock.Instant) -> Decision {
        state.withLock { state in
            var target = state.targets[key, default: Target(lastUsed: now)]
            if let openUntil = target.openUntil, now < openUntil {
                return .park(max(openUntil - now, .milliseconds(100)))
            }
            let suspect = !target.healthy
            if suspect {
                // New, failing or half-open: one at a time. The backlog waits for the attempt
                // in flight, as long as it may take; its end unparks it (see `release`).
                if target.inFlight > 0 {
                    target.parked = true
                    state.targets[key] = target
                    return .park(configuration.timeout + .seconds(1))
                }
                if state.suspectInFlight >= configuration.maxInFlight / 2 {
                    // Until a slot is given back (see `release`); every attempt in flight ends
                    // within the timeout.
                    if state.isWaiting.insert(key).inserted { state.waiting.append(key) }
                    return .park(configuration.timeout + .seconds(1))
                }
                state.suspectInFlight += 1
            } else if target.inFlight >= configuration.maxInFlightPerTarget {
                return .wait(.milliseconds(50))
            }
            target.inFlight += 1
            target.lastUsed = now
            state.targets[key] = target
            return .send(suspect: suspect)
        }
    }

    /// The targets whose last attempt succeeded: their deliveries are claimed first, so a
    /// backlog of suspects' deliveries never stands in front of them.
    func healthyTargets() -> [String] {
        state.withLock { state in state.targets.compactMap { key, target in target.healthy ? key : nil } }
    }

    /// Returns a slot with the attempt's result.
    /// - Returns: the targets whose parked backlog may go now: this one unless its circuit is
    ///   open, and, for a suspect's slot, the target that waited longest for one.
    func release(_ key: String, suspect: Bool, succeeded: Bool, now: ContinuousClock.Instant) -> [String] {
        state.withLock { state in
            var unpark: [String] = []
            if suspect {
                state.suspectInFlight -= 1
                if !state.waiting.isEmpty {
                    let next = state.waiting.removeFirst()
                    state.isWaiting.remove(next)
                    unpark.append(next)
                }
            }
            guard var target = state.targets[key] else { return unpark }
            target.inFlight -= 1
            target.lastUsed = now
            target.healthy = succeeded
            if succeeded {
                target.failures = 0
                target.openUntil = nil
            } else {
                target.failures += 1
                if target.failures >= configuration.breakerThreshold {
                    target.openUntil = now.advanced(by: configuration.breakerCooldown)
                }
            }
            if target.parked && target.openUntil == nil {
                target.parked = false
                if !unpark.contains(key) { unpark.append(key) }
            }
            state.targets[key] = target
            state.releases += 1
            if state.releases % 4096 == 0 {
                // Forget targets idle for a while (an open circuit is probed once per cooldown,
                // so it is not idle while deliveries wait for it).
                state.targets = state.targets.filter { _, target in
                    target.inFlight > 0 || now - target.lastUsed < Self.memory
                }
            }
            return unpark
        }
    }
}

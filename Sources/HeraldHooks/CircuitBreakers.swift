internal import DequeModule
internal import Synchronization

/// Per-target isolation: a cap on deliveries in flight, and a circuit breaker that opens after
/// consecutive failures, lets one probe through after its cooldown (half-open), and closes on
/// a success.
///
/// Only a target whose last attempt succeeded is *healthy* and gets `maxInFlightPerTarget`
/// deliveries at once. Any other (new, failing, probing) is a *suspect*: it gets one, and all
/// of them together get at most half of `maxInFlight`, so the other half always serves healthy
/// targets: a thousand dead or hanging targets cost half the slots at most until their
/// circuits open, and one probe per cooldown after that. Suspects' attempts also start at most
/// `suspectAttemptsPerSecond` (a token bucket), so a thousand targets that appear together are
/// tried over seconds and, if they hang, time out over seconds, not all in one. A suspect that
/// finds no slot or no token is parked in a queue, first come first served, and unparked when
/// both are there for it (see ``admitWaiting(now:)``), rather than asking again and again.
final class CircuitBreakers: Sendable {
    /// What to do with a delivery to a target.
    enum Decision: Equatable {
        /// Send it now: a slot is taken; give it back with
        /// ``CircuitBreakers/release(_:suspect:succeeded:now:)`` and the same `suspect`.
        case send(suspect: Bool)
        /// Hold this delivery a little: its healthy target is at its cap.
        case wait(Duration)
        /// Hold every delivery to the target this long, or until it is unparked: it is not known
        /// to be healthy and is busy with one already or waits its turn, or its circuit is open.
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
        /// Suspects parked for a slot or a token, in order (a target queues once, however many
        /// deliveries it has).
        var waiting: Deque<String> = []
        var isWaiting: Set<String> = []
        /// Suspects taken off the queue and unparked, with a slot and a token kept for them
        /// until their delivery is claimed (or, if it never is, for a while).
        var admitted: [String: ContinuousClock.Instant] = [:]
        var tokens: Double
        var refilled: ContinuousClock.Instant
    }

    /// How long an idle target is remembered.
    private static let memory: Duration = .seconds(600)
    /// How long a slot is kept for an admitted suspect whose delivery is not claimed.
    private static let admission: Duration = .seconds(5)

    private let configuration: WebhookConfiguration
    private let state: Mutex<State>
    private let rate: Double
    private let burst: Double

    init(configuration: WebhookConfiguration, now: ContinuousClock.Instant = .now) {
        self.configuration = configuration
        let rate = Double(configuration.suspectAttemptsPerSecond)
        let burst = max(1, rate / 10)
        (self.rate, self.burst) = (rate, burst)
        self.state = Mutex(State(tokens: burst, refilled: now))
    }

    private var suspectSlots: Int { max(1, configuration.maxInFlight / 2) }

    /// Whether a suspect's slot is free, counting those kept for admitted suspects.
    private func slotFree(_ state: State) -> Bool {
        state.suspectInFlight + state.admitted.count < suspectSlots
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
                if state.admitted.removeValue(forKey: key) == nil {
                    refill(&state, now: now)
                    guard slotFree(state) && state.tokens >= 1 && state.waiting.isEmpty else {
                        // A newcomer is last; one already queued (its park ran out) keeps its place.
                        let position: Int
                        if state.isWaiting.insert(key).inserted {
                            state.waiting.append(key)
                            position = state.waiting.count
                        } else {
                            position = (state.waiting.firstIndex(of: key) ?? state.waiting.count) + 1
                        }
                        return .park(queued(behind: position))
                    }
                    state.tokens -= 1
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
    ///   open, and, for a suspect's slot, the target that waited longest for one if a token is
    ///   there for it.
    func release(_ key: String, suspect: Bool, succeeded: Bool, now: ContinuousClock.Instant) -> [String] {
        state.withLock { state in
            var unpark: [String] = []
            if suspect {
                state.suspectInFlight -= 1
                unpark = admit(&state, now: now)
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

    /// How long a suspect `behind` others in the queue is parked: until ``admitWaiting(now:)``
    /// unparks it, so this is a fallback (should the unparking write fail), and twice the
    /// longest its turn may take, so the parks of a thousand targets queued together do not
    /// run out together while they still wait.
    private func queued(behind position: Int) -> Duration {
        let rounds = 1 + position / suspectSlots  // each within a timeout
        let tokens = Duration.milliseconds(Int64(Double(position) / rate * 1000))
        return (configuration.timeout + .seconds(1)) * (2 * rounds) + tokens * 2
    }

    /// Takes suspects off the queue while a slot and a token are there for each.
    /// - Returns: the targets to unpark, and how long until the next token if the queue waits
    ///   for one (a slot given back admits through ``release(_:suspect:succeeded:now:)``).
    func admitWaiting(now: ContinuousClock.Instant) -> (unpark: [String], next: Duration?) {
        state.withLock { state in
            let unpark = admit(&state, now: now)
            guard !state.waiting.isEmpty, slotFree(state) else {
                return (unpark, nil)
            }
            return (unpark, .milliseconds(Int64(((1 - state.tokens) / rate * 1000).rounded(.up))))
        }
    }

    private func admit(_ state: inout State, now: ContinuousClock.Instant) -> [String] {
        if !state.admitted.isEmpty {
            state.admitted = state.admitted.filter { _, at in now - at < Self.admission }
        }
        refill(&state, now: now)
        var unpark: [String] = []
        while state.tokens >= 1, slotFree(state), let next = state.waiting.popFirst() {
            state.isWaiting.remove(next)
            state.tokens -= 1
            state.admitted[next] = now
            unpark.append(next)
        }
        return unpark
    }

    private func refill(_ state: inout State, now: ContinuousClock.Instant) {
        let elapsed = now - state.refilled
        guard elapsed > .zero else { return }
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        state.tokens = min(burst, state.tokens + seconds * rate)
        state.refilled = now
    }
}

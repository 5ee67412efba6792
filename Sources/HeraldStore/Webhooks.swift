internal import Foundation
package import HeraldCore

/// A REST-hook: events whose type matches `event` are POSTed to `targetURL`.
package struct Subscription: Sendable, Hashable {
    package var id: String
    package var targetURL: String
    /// An event type (`check.done`), a prefix pattern (`check.*`) or `*`.
    package var event: String
    package var secret: String
    /// The secret before the last rotation, which keeps signing beside `secret` until
    /// `previousSecretExpiresAt`, so receivers can switch without dropping a delivery.
    package var previousSecret: String?
    package var previousSecretExpiresAt: Timestamp?
    package var createdAt: Timestamp
    package var updatedAt: Timestamp
    /// Set when the subscription was disabled (its target failed for longer than the disable
    /// period, or it fell behind past the lag cap); a PUT clears it.
    package var disabledAt: Timestamp?
    /// Why it was disabled, with `disabledAt`.
    package var disabledReason: DisabledReason?
    /// The first failure of the current run of failures, cleared by a success.
    package var failingSince: Timestamp?

    /// Why a subscription was disabled: the `disabled_reason` of the API.
    package enum DisabledReason: String, Sendable, CaseIterable {
        /// Its target failed for longer than `webhook-disable-after`.
        case failing
        /// More than `webhook-max-lag-events` events were waiting for it.
        case lagEvents = "lag_events"
        /// The oldest event waiting for it was older than `webhook-max-lag-age`.
        case lagAge = "lag_age"
    }

    package init(id: String, targetURL: String, event: String, secret: String, createdAt: Timestamp) {
        self.id = id
        self.targetURL = targetURL
        self.event = event
        self.secret = secret
        self.createdAt = createdAt
        self.updatedAt = createdAt
    }

    /// Whether an event of `type` goes to this subscription.
    package func matches(_ type: String) -> Bool {
        Self.pattern(event, matches: type)
    }

    package static func pattern(_ pattern: String, matches type: String) -> Bool {
        if pattern == "*" { return true }
        if pattern.hasSuffix(".*") { return type.hasPrefix(pattern.dropLast()) }
        return pattern == type
    }

    /// The secrets that sign a delivery sent at `now`: the current one, and the previous one
    /// during its overlap.
    package func signingSecrets(at now: Timestamp) -> [String] {
        Self.signingSecrets(secret, previous: previousSecret, expiresAt: previousSecretExpiresAt, at: now)
    }

    package static func signingSecrets(
        _ secret: String,
        previous: String?,
        expiresAt: Timestamp?,
        at now: Timestamp
    ) -> [String] {
        guard let previous, let expiresAt, now < expiresAt else { return [secret] }
        return [secret, previous]
    }

    /// The subscription as the API shows it; the secret only when `withSecret` (at creation
    /// and rotation).
    package func json(withSecret: Bool = false, at now: Timestamp = .now()) -> String {
        var writer = JSONWriter()
        writer.string("id", id)
        writer.string("target_url", targetURL)
        writer.string("event", event)
        writer.string("state", disabledAt == nil ? "active" : "disabled")
        if withSecret { writer.string("secret", secret) }
        writer.string("created_at", createdAt.rfc3339)
        writer.string("updated_at", updatedAt.rfc3339)
        if let disabledAt { writer.string("disabled_at", disabledAt.rfc3339) }
        if let disabledReason { writer.string("disabled_reason", disabledReason.rawValue) }
        if let failingSince { writer.string("failing_since", failingSince.rfc3339) }
        if let until = previousSecretExpiresAt, signingSecrets(at: now).count > 1 {
            writer.string("previous_secret_expires_at", until.rfc3339)
        }
        return writer.result
    }
}

/// One POST to make: a check's callback is written in its event's own transaction; a
/// subscription's is made from the webhook event log, which is.
package struct Delivery: Sendable, Hashable {
    package enum State: String, Sendable, CaseIterable {
        case pending, delivered, failed
    }

    /// Also the `webhook-id` header: the same on every attempt, so a receiver can deduplicate.
    package var id: String
    package var subscriptionID: String?
    package var checkID: String?
    package var targetURL: String
    /// What isolation is keyed on: ``target(of:)`` of `targetURL`, as stored with it.
    package var target: String
    /// The secrets that sign it, read when it is claimed: a subscription's current secret (and
    /// its previous one during a rotation's overlap), or the check's callback secret.
    package var secrets: [String]
    package var eventType: String
    /// `{"type", "timestamp", "data": <the event>}`, the body of every attempt.
    package var payload: String
    package var state: State
    package var attempts: Int
    package var nextAttemptAt: Timestamp?
    package var createdAt: Timestamp
    package var updatedAt: Timestamp
    /// The claim this copy was leased under; its attempt's outcome counts only under it.
    package var lease: Int64 = 0

    package init(
        id: String,
        subscriptionID: String?,
        checkID: String?,
        targetURL: String,
        target: String,
        secrets: [String],
        eventType: String,
        payload: String,
        state: State,
        attempts: Int,
        nextAttemptAt: Timestamp?,
        createdAt: Timestamp,
        updatedAt: Timestamp
    ) {
        self.id = id
        self.subscriptionID = subscriptionID
        self.checkID = checkID
        self.targetURL = targetURL
        self.target = target
        self.secrets = secrets
        self.eventType = eventType
        self.payload = payload
        self.state = state
        self.attempts = attempts
        self.nextAttemptAt = nextAttemptAt
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }

    /// A new delivery's id (`msg_` and a time-ordered token): the `webhook-id` of its attempts.
    package static func newID(at time: Timestamp) -> String {
        "msg_" + timeOrderedToken(at: time)
    }

    /// The body of a delivery, per Standard Webhooks: `{"type", "timestamp", "data"}`, where
    /// `data` is the event as every other transport carries it.
    package static func payload(of event: Event) -> String {
        var writer = JSONWriter()
        writer.string("type", event.type)
        writer.string("timestamp", event.time.rfc3339)
        writer.raw("data", event.json)
        return writer.result
    }

    /// What isolation is keyed on: the scheme, host and port of a target URL
    /// (`https://example.com:443`), the default port filled in.
    package static func target(of url: String) -> String {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            return url
        }
        let port = components.port ?? (scheme == "https" ? 443 : 80)
        return "\(scheme)://\(components.host?.lowercased() ?? ""):\(port)"
    }

    /// The delivery as the API shows it (never its secret), with its attempts when given.
    package func json(attempts list: [DeliveryAttempt]? = nil) -> String {
        var writer = JSONWriter()
        writer.string("id", id)
        if let subscriptionID { writer.string("subscription_id", subscriptionID) }
        if let checkID { writer.string("check_id", checkID) }
        writer.string("target_url", targetURL)
        writer.string("event_type", eventType)
        writer.string("state", state.rawValue)
        writer.int("attempts", Int64(attempts))
        if let nextAttemptAt, state == .pending { writer.string("next_attempt_at", nextAttemptAt.rfc3339) }
        writer.string("created_at", createdAt.rfc3339)
        writer.string("updated_at", updatedAt.rfc3339)
        if let list { writer.raw("attempt_log", jsonArray(list.lazy.map(\.json))) }
        return writer.result
    }
}

/// What one attempt of a delivery saw.
package struct DeliveryAttempt: Sendable, Hashable {
    package var at: Timestamp
    /// The target's status code, or `nil` when nothing answered.
    package var statusCode: Int?
    package var durationMilliseconds: Int64
    /// Why nothing usable answered (timeout, refused, SSRF guard...).
    package var error: String?
    /// The first bytes of the answer's body (at most 256).
    package var snippet: String?

    package init(at: Timestamp, statusCode: Int?, durationMilliseconds: Int64, error: String?, snippet: String?) {
        self.at = at
        self.statusCode = statusCode
        self.durationMilliseconds = durationMilliseconds
        self.error = error
        self.snippet = snippet
    }

    package var json: String {
        var writer = JSONWriter()
        writer.string("at", at.rfc3339)
        if let statusCode { writer.int("status_code", Int64(statusCode)) }
        writer.int("duration_ms", durationMilliseconds)
        if let error { writer.string("error", error) }
        if let snippet { writer.string("snippet", snippet) }
        return writer.result
    }
}

/// An attempt of a delivery and what follows from it.
package struct AttemptRecord: Sendable, Hashable {
    package var deliveryID: String
    package var attempt: DeliveryAttempt
    package var outcome: DeliveryOutcome
    /// The lease the attempt was made under (``Delivery/lease``); nil applies it whatever the
    /// lease. Under an older lease (the claim expired and the delivery was claimed again) the
    /// attempt is logged, but only a success changes the delivery.
    package var lease: Int64?

    package init(deliveryID: String, attempt: DeliveryAttempt, outcome: DeliveryOutcome, lease: Int64? = nil) {
        self.deliveryID = deliveryID
        self.attempt = attempt
        self.outcome = outcome
        self.lease = lease
    }
}

/// What a delivery's attempt changes, as the webhook policy (HeraldHooks) decides it: a store
/// reads the ``AttemptSubject`` under lock, asks its ``AttemptPolicy``, and applies the answer in
/// the same write, so it keeps rows and never decides.
package enum AttemptEffect: Sendable, Hashable {
    /// The delivery takes `state`, due at `due` (a retry), with one more attempt counted and its
    /// lease ended.
    case settle(state: Delivery.State, due: Timestamp?)
    /// Its subscription has room in its window again: the fan-out looks at it (once its target
    /// is not parked).
    case reopenFanOut(subscription: String)
    /// The subscription's run of failures started at `since` (`nil`: a success ended it).
    case failing(subscription: String, since: Timestamp?)
    /// The subscription is disabled, and its pending deliveries fail.
    case disable(subscription: String, reason: Subscription.DisabledReason)
    /// The subscription is deleted, and its pending deliveries fail.
    case delete(subscription: String)
    /// A check's callback stops: its pending callbacks fail, and no more are made.
    case stopCallbacks(check: String)
}

/// What an attempt's effects are decided on: its delivery as stored, and the health of the
/// delivery's subscription (`nil` for a check's callback, or a subscription gone since).
package struct AttemptSubject: Sendable, Hashable {
    package var delivery: Delivery
    package var subscription: SubscriptionHealth?

    package init(delivery: Delivery, subscription: SubscriptionHealth?) {
        self.delivery = delivery
        self.subscription = subscription
    }
}

/// A subscription as the attempt policy sees it.
package struct SubscriptionHealth: Sendable, Hashable {
    package var failingSince: Timestamp?
    package var isDisabled: Bool

    package init(failingSince: Timestamp?, isDisabled: Bool) {
        self.failingSince = failingSince
        self.isDisabled = isDisabled
    }
}

/// Decides what an attempt changes (HeraldHooks' `WebhookPolicy`).
package protocol AttemptPolicy: Sendable {
    func effects(of record: AttemptRecord, on subject: AttemptSubject) -> [AttemptEffect]
}

/// What to do with a delivery after an attempt.
package enum DeliveryOutcome: Sendable, Hashable {
    case delivered
    /// Try again at the given time.
    case retry(at: Timestamp)
    /// No retry left.
    case failed
    /// `410 Gone`: the delivery fails, and its subscription is deleted (or, for a check's
    /// callback, every pending callback of that check fails).
    case gone
}

/// How far a subscription may fall behind its events before it is disabled, so one slow or
/// dead target cannot make the webhook event log and the outbox grow without bound.
package struct LagCap: Sendable, Hashable {
    /// Events waiting for one subscription (`webhook-max-lag-events`).
    package var events: Int
    /// Age of the oldest event waiting for one subscription (`webhook-max-lag-age`).
    package var age: Duration

    package init(events: Int, age: Duration) {
        self.events = events
        self.age = age
    }
}

extension LagCap {
    /// Why a subscription with `events` waiting, the oldest at `oldest`, is past the cap at
    /// `now`, or `nil` when it is within it.
    package func reason(events: Int, oldest: Timestamp?, at now: Timestamp) -> Subscription.DisabledReason? {
        if events > self.events { return .lagEvents }
        if let oldest, oldest < now.adding(milliseconds: -age.milliseconds) { return .lagAge }
        return nil
    }
}

extension DeliveryOutcome {
    /// The state a pending delivery takes after an attempt with this outcome, and when it is
    /// due next (only a retry is).
    package var next: (state: Delivery.State, due: Timestamp?) {
        switch self {
        case .delivered: (.delivered, nil)
        case .retry(let time): (.pending, time)
        case .failed, .gone: (.failed, nil)
        }
    }
}

/// A subscription the fan-out may make deliveries for: behind the webhook event log's head, not
/// skipped for now, its target not parked.
package struct FanOutCandidate: Sendable {
    package var id, targetURL, target, event, secret: String
    /// The last entry of the log it has read.
    package var cursor: Int64
    /// Its deliveries not yet attempted.
    package var fresh: Int

    package init(
        id: String,
        targetURL: String,
        target: String,
        event: String,
        secret: String,
        cursor: Int64,
        fresh: Int
    ) {
        self.id = id
        self.targetURL = targetURL
        self.target = target
        self.event = event
        self.secret = secret
        self.cursor = cursor
        self.fresh = fresh
    }

    /// How many of its deliveries may wait unattempted: `healthyWindow` for a target known to
    /// be healthy, one for any other (it is sent one delivery at a time).
    package func window(healthy: Set<String>, healthyWindow: Int) -> Int {
        healthy.contains(target) ? healthyWindow : 1
    }
}

/// A subscription disabled for its lag, and what it was behind by.
package struct LaggingSubscription: Sendable, Hashable {
    package var id: String
    package var reason: Subscription.DisabledReason
    /// Events that were waiting for it: the log entries past its cursor and its pending deliveries.
    package var events: Int
    /// The time of the oldest of them.
    package var oldest: Timestamp?

    package init(id: String, reason: Subscription.DisabledReason, events: Int, oldest: Timestamp?) {
        self.id = id
        self.reason = reason
        self.events = events
        self.oldest = oldest
    }
}

/// A filter and page position for listing deliveries, newest first.
package struct DeliveryQuery: Sendable, Hashable {
    package var subscriptionID: String?
    package var checkID: String?
    package var state: Delivery.State?
    package var limit: Int
    package var cursor: String?

    package init(
        subscriptionID: String? = nil,
        checkID: String? = nil,
        state: Delivery.State? = nil,
        limit: Int = 50,
        cursor: String? = nil
    ) {
        self.subscriptionID = subscriptionID
        self.checkID = checkID
        self.state = state
        self.limit = limit
        self.cursor = cursor
    }
}

/// REST-hook subscriptions.
///
/// What an event causes is written by the store in the event's own transaction (a check
/// callback's delivery row, and an entry in the webhook event log that each subscription reads
/// through its cursor), so a crash between the event and the POST loses nothing.
package protocol SubscriptionStore: Sendable {
    func createSubscription(_ subscription: Subscription) async throws
    func subscription(_ id: String) async throws -> Subscription?
    /// Subscriptions oldest first, one page at a time (`cursor`: the previous page's last).
    func subscriptions(limit: Int, cursor: String?) async throws -> (items: [Subscription], next: String?)
    /// Replaces target and event (pending deliveries follow the new target) and re-enables a
    /// disabled subscription; a new `secret` is a rotation (see ``rotateSecret(_:to:overlap:at:)``).
    /// - Returns: `nil` when there is no such subscription.
    func updateSubscription(
        _ id: String,
        targetURL: String,
        event: String,
        secret: String?,
        overlap: Duration,
        at time: Timestamp
    ) async throws -> Subscription?
    /// Makes `secret` the signing secret; the one it replaces keeps signing beside it for
    /// `overlap`. Rotating to the current secret changes nothing.
    /// - Returns: `nil` when there is no such subscription.
    func rotateSecret(
        _ id: String,
        to secret: String,
        overlap: Duration,
        at time: Timestamp
    ) async throws
        -> Subscription?
    /// Deletes it and fails its pending deliveries. - Returns: whether it existed.
    func deleteSubscription(_ id: String, at time: Timestamp) async throws -> Bool

}

/// The webhook delivery queue: deliveries made from events, claimed under leases by the
/// dispatcher, and their attempts.
package protocol DeliveryQueue: Sendable {
    /// Pending deliveries due at `now`, at most `perTarget` of one target, those of the
    /// `healthy` targets first and then oldest first, each leased until `now + lease` (a
    /// crash while sending makes it due again then, with the same id). First, in the same
    /// write, subscriptions behind the webhook event log get delivery rows for what they match,
    /// up to `window` not yet attempted each (one for a target not among the healthy, which is
    /// sent one at a time), unless their target is parked.
    func claimDeliveries(
        now: Timestamp,
        lease: Duration,
        limit: Int,
        perTarget: Int,
        window: Int,
        healthy: [String]
    ) async throws -> [Delivery]
    /// When the next pending delivery is due, if any: `now` when a claim would make deliveries
    /// from the event log.
    func nextDeliveryDue(now: Timestamp, window: Int) async throws -> Timestamp?
    /// How many writes of this process queued webhook work (an event logged for a subscription,
    /// a check's callback), once committed; `nil` when other processes queue work in the same
    /// store (a cluster). A dispatcher woken by an event reads the queue only when this moved,
    /// so events no webhook wants cost no read.
    var localQueueings: Int? { get }
    /// Logs attempts and applies what `policy` makes of each (``AttemptEffect``), then unparks
    /// `targets` (their attempt in flight ended), in one write.
    func recordAttempts(
        _ records: [AttemptRecord],
        unparking targets: [String],
        policy: any AttemptPolicy,
        at now: Timestamp
    ) async throws
    /// Makes deliveries due later without counting an attempt, in one write: claimed ones whose
    /// target is busy, and the backlog (due, or parked before) of a parked `target` (one not
    /// known to be healthy and busy, or with its circuit open), so the next claims
    /// pass over that target's backlog without reading it. Deliveries queued for a parked
    /// target are due when it is (until ``recordAttempts(_:unparking:policy:at:)``
    /// unparks it).
    func holdDeliveries(
        _ deliveries: [(id: String, until: Timestamp)],
        parking targets: [(target: String, until: Timestamp)],
        at now: Timestamp
    ) async throws
    /// Disables, with the reason, every active subscription past `cap`, and fails its pending
    /// deliveries (as a subscription disabled for failing), so the log behind it can go. What
    /// waits for a subscription is every entry of the webhook event log past its cursor,
    /// matched or not (it holds them in the log), and its pending deliveries.
    /// - Returns: the subscriptions it disabled.
    func disableLagging(beyond cap: LagCap, at now: Timestamp) async throws -> [LaggingSubscription]
    /// Unparks every target: at start-up, when nothing is in flight and no circuit is known.
    func unparkAll(at now: Timestamp) async throws
    func deliveries(matching query: DeliveryQuery) async throws -> (items: [Delivery], next: String?)
    func delivery(_ id: String) async throws -> (Delivery, [DeliveryAttempt])?
    /// Makes a delivery pending and due now, whatever its state. - Returns: it, or `nil`.
    func retryDelivery(_ id: String, at time: Timestamp) async throws -> Delivery?
    /// Queues again, for a subscription, every event it matched since `time` that is still kept.
    /// - Returns: how many deliveries were queued, or `nil` without such a subscription.
    func replay(subscription id: String, since time: Timestamp, at now: Timestamp) async throws -> Int?
}

extension DeliveryQueue {
    package var localQueueings: Int? { nil }

    /// Logs one attempt and applies what `policy` makes of it (see ``recordAttempts(_:unparking:policy:at:)``).
    package func recordAttempt(
        _ attempt: DeliveryAttempt,
        of id: String,
        outcome: DeliveryOutcome,
        policy: any AttemptPolicy
    ) async throws {
        try await recordAttempts(
            [AttemptRecord(deliveryID: id, attempt: attempt, outcome: outcome)],
            unparking: [],
            policy: policy,
            at: attempt.at
        )
    }
}

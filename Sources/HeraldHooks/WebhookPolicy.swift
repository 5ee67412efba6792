internal import HeraldCore
package import HeraldStore

/// What an attempt changes: the delivery's next state, its subscription's run of failures and
/// fan-out window, disabling after failing too long, and what `410 Gone` ends. Stores only
/// apply it (``AttemptEffect``), so SQLite and PostgreSQL cannot drift apart.
package struct WebhookPolicy: AttemptPolicy {
    /// A subscription failing for longer than this is disabled (`webhook-disable-after`).
    package var disableAfter: Duration

    package init(disableAfter: Duration) {
        self.disableAfter = disableAfter
    }

    package func effects(of record: AttemptRecord, on subject: AttemptSubject) -> [AttemptEffect] {
        let (delivery, outcome, at) = (subject.delivery, record.outcome, record.attempt.at)
        // A delivered or failed delivery never changes again through an attempt; one made under
        // an older lease (claimed again after its lease ran out) changes it only by succeeding.
        guard delivery.state == .pending else { return [] }
        guard record.lease.map({ $0 == delivery.lease }) ?? true || outcome == .delivered else { return [] }
        let next = outcome.next
        var effects: [AttemptEffect] = [.settle(state: next.state, due: next.due)]
        if let id = delivery.subscriptionID, let health = subject.subscription {
            // Its first attempt leaves room in its window of deliveries not yet attempted.
            if delivery.attempts == 0 { effects.append(.reopenFanOut(subscription: id)) }
            // A success ends a run of failures; a failure starts one if none is running.
            let failingSince = outcome == .delivered ? nil : health.failingSince ?? at
            if failingSince != health.failingSince { effects.append(.failing(subscription: id, since: failingSince)) }
            if !health.isDisabled, let failingSince, failingSince < at.adding(milliseconds: -disableAfter.milliseconds)
            {
                effects.append(.disable(subscription: id, reason: .failing))
            }
        }
        guard outcome == .gone else { return effects }
        // The receiver says the endpoint is gone for good.
        if let id = delivery.subscriptionID {
            effects.append(.delete(subscription: id))
        } else if let check = delivery.checkID {
            effects.append(.stopCallbacks(check: check))
        }
        return effects
    }
}

package import HeraldCore
package import HeraldStore

/// The one path by which an event is written: the store commits it, then the broker carries it
/// to every hub. Every transport and the runner write events through it, so none can announce
/// an event that did not commit, or commit one that is never announced.
package struct EventLog: Sendable {
    package let store: any ChannelLog & CheckStore
    let broker: any Broker

    package init(store: any ChannelLog & CheckStore, broker: any Broker) {
        self.store = store
        self.broker = broker
    }

    /// Publishes an application's event, the same for every transport (HTTP `POST`, the
    /// WebSocket `publish` op, gRPC `Publish`). Who may publish where is decided before, by
    /// `Access.authorizePublish`.
    /// - Throws: `.invalid` for a `check:` channel or a bad type.
    package func publish(type: String, data: JSONValue, to channel: ChannelName) async throws -> Event {
        try channel.requireApplicationChannel()
        guard Event.isValidType(type) else { throw HeraldError.invalid(Event.typeRule) }
        let event = try await store.append(type: type, data: data.jsonText, to: channel, at: .now())
        broker.publish(event)
        return event
    }

    /// Creates a check with its `check.created` event (see ``Store/createCheck(_:idempotency:)``).
    package func createCheck(_ check: Check, idempotency: IdempotencyKey?) async throws -> CheckCreation {
        let creation = try await store.createCheck(check, idempotency: idempotency)
        if let event = creation.event { broker.publish(event) }
        return creation
    }

    /// Ends a processing check with its terminal event
    /// (see ``Store/finishCheck(_:as:result:error:at:requiring:)``).
    package func finishCheck(
        _ id: CheckID,
        as state: CheckState,
        result: JSONValue?,
        error: JSONValue?,
        requiring condition: FinishCondition
    ) async throws -> CheckFinish {
        let finish = try await store.finishCheck(
            id,
            as: state,
            result: result,
            error: error,
            at: .now(),
            requiring: condition
        )
        if case .finished(_, let event) = finish { broker.publish(event) }
        return finish
    }
}

package import HeraldCore
package import HeraldHub
package import HeraldStore

/// Publishing an application's event, the same for every transport (HTTP `POST`, the
/// WebSocket `publish` op, gRPC `Publish`): validate, commit, then announce to the hub.
/// Who may publish where is decided before, by `Access.authorizePublish`.
package struct ChannelPublisher: Sendable {
    let store: any Store
    let hub: Hub

    package init(store: any Store, hub: Hub) {
        self.store = store
        self.hub = hub
    }

    /// Appends `{type, data}` to `channel` and announces it once committed.
    /// - Throws: `.invalid` for a `check:` channel or a bad type.
    package func publish(type: String, data: JSONValue, to channel: ChannelName) async throws -> Event {
        try channel.requireApplicationChannel()
        guard Event.isValidType(type) else { throw HeraldError.invalid(Event.typeRule) }
        let event = try await store.append(type: type, data: data.jsonText, to: channel, at: .now())
        hub.publish(event)
        return event
    }
}

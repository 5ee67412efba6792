package import HeraldCore

/// Carries committed events to the hub of every node that serves the store.
///
/// The store decides (an event exists once its transaction committed); a broker only makes
/// it known, so a broker that loses a notification delays delivery and never loses an event:
/// a follower that sees a hole reads it from the store. With one process the broker is the
/// hub itself (``LocalBroker``); a cluster's broker also carries the event to the other nodes,
/// which announce it to their hubs.
package protocol Broker: Sendable {
    /// Announces an event that this node just committed. Never blocks and never waits.
    func publish(_ event: Event)
}

/// The broker of a single process: a committed event goes straight to its hub.
package struct LocalBroker: Broker {
    let hub: Hub

    package init(hub: Hub) {
        self.hub = hub
    }

    package func publish(_ event: Event) {
        hub.publish(event)
    }
}

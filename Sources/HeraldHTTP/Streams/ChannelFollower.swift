package import HeraldCore
package import HeraldHub
package import HeraldStore

/// Follows one channel from a position for a streaming transport: the backlog from the store,
/// then live events from the hub, in order, with no gap and no duplicate.
///
/// Transports (SSE, NDJSON, iframe, WebSocket) only frame what it emits. It subscribes to the
/// hub *before* reading the backlog, skips offsets it already emitted, and fills any gap (an
/// event announced out of order, or a check queue coalesced by the hub) from the store. A
/// check channel ends after its terminal event.
package struct ChannelFollower: Sendable {
    /// What the transport writes next.
    package enum Item: Sendable {
        /// The position asked for is gone; what follows is what is still kept.
        case reset(EventRead)
        /// Events in order; a transport writes them in one write.
        case events([EncodedEvent])
        case heartbeat
    }

    /// Why following stopped.
    package enum End: Sendable {
        /// A check channel's terminal event was emitted.
        case checkEnded
        /// The subscriber fell behind its bound; it resumes from `last`.
        case slowConsumer
        /// Shutdown or cancellation.
        case ended
    }

    package let store: any Store
    package let hub: Hub
    package let pageSize: Int
    package let heartbeat: Duration

    package init(store: any Store, hub: Hub, pageSize: Int, heartbeat: Duration) {
        self.store = store
        self.hub = hub
        self.pageSize = pageSize
        self.heartbeat = heartbeat
    }

    /// Follows `channel` after `position` (`nil`: from now, or for a check channel its current
    /// snapshot), calling `emit` for each item until the end.
    ///
    /// - Parameter onStart: called once subscribed and the position is resolved, with the
    ///   channel's epoch, before any item (a WebSocket answers `subscribed` there).
    /// - Returns: why it stopped, and the last offset emitted.
    package func follow(
        _ channel: ChannelName,
        after position: Offset?,
        epoch: Epoch?,
        onStart: (EventRead) async throws -> Void = { _ in },
        emit: (Item) async throws -> Void
    ) async throws -> (end: End, last: Offset) {
        let isCheck = channel.isCheckChannel
        return try await hub.withSubscription(to: channel) { subscription in
            var cursor = Cursor(isCheck: isCheck)
            var read = try await store.events(
                in: channel,
                after: position ?? (isCheck ? 0 : nil),
                epoch: epoch,
                limit: pageSize
            )
            if isCheck && position == nil { read.events = Array(read.events.suffix(1)) }  // the snapshot
            cursor.last = read.events.first.map { $0.offset - 1 } ?? read.next
            try await onStart(read)
            if !read.recovered { try await emit(.reset(read)) }
            try await emit(.events(cursor.take(read.events.map(EncodedEvent.init))))
            while !cursor.isEnded && read.events.count == pageSize {
                read = try await store.events(in: channel, after: cursor.last, epoch: nil, limit: pageSize)
                try await emit(.events(cursor.take(read.events.map(EncodedEvent.init))))
            }
            while !cursor.isEnded {
                switch await subscription.next(heartbeat: heartbeat) {
                case .events(let batch):
                    var out: [EncodedEvent] = []
                    for encoded in batch where encoded.event.offset > cursor.last && !cursor.isEnded {
                        if encoded.event.offset > cursor.last + 1 {
                            let gap = try await store.events(
                                in: channel,
                                after: cursor.last,
                                epoch: nil,
                                limit: pageSize
                            )
                            out += cursor.take(
                                gap.events.filter { $0.offset < encoded.event.offset }.map(EncodedEvent.init)
                            )
                        }
                        out += cursor.take([encoded])
                    }
                    if !out.isEmpty { try await emit(.events(out)) }
                case .heartbeat:
                    try await emit(.heartbeat)
                case .slowConsumer:
                    return (.slowConsumer, cursor.last)
                case .ended:
                    return (.ended, cursor.last)
                }
            }
            return (.checkEnded, cursor.last)
        }
    }

    /// The last offset emitted, and whether a check's terminal event was.
    private struct Cursor {
        let isCheck: Bool
        var last: Offset = 0
        var isEnded = false

        /// The events after `last`, in order, up to and including a check's terminal event.
        mutating func take(_ events: [EncodedEvent]) -> [EncodedEvent] {
            var taken: [EncodedEvent] = []
            for encoded in events where encoded.event.offset > last && !isEnded {
                taken.append(encoded)
                last = encoded.event.offset
                if isCheck && encoded.event.type.hasPrefix("check.") && encoded.event.type != "check.created"
                    && encoded.event.type != "check.updated"
                {
                    isEnded = true
                }
            }
            return taken
        }
    }
}

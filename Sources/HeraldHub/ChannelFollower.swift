package import HeraldCore
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
        /// A position is gone; what follows is what is still kept. `atStart`: the position
        /// asked for (the `EventRead` given to `onStart` says so too), else one lost later.
        case reset(EventRead, atStart: Bool)
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
        /// The credential the stream was opened with expired (`until` passed); the client
        /// comes back with a fresh one from `last`.
        case expired
    }

    package let store: any ChannelLog
    package let hub: Hub
    package let pageSize: Int
    package let heartbeat: Duration

    package init(store: any ChannelLog, hub: Hub, pageSize: Int, heartbeat: Duration) {
        self.store = store
        self.hub = hub
        self.pageSize = pageSize
        self.heartbeat = heartbeat
    }

    /// Follows `channel` after `position` (`nil`: from now, or for a check channel its current
    /// snapshot), calling `emit` for each item until the end.
    ///
    /// Nothing is ever skipped silently: whenever the store cannot continue from the last
    /// position emitted (its events were trimmed while a slow reader paged, or the channel
    /// started a new epoch under a live stream), a `.reset` with what is still kept comes
    /// first, and following goes on from there.
    ///
    /// - Parameters:
    ///   - until: when the reader's credential expires: following ends there with `.expired`
    ///     (checked between deliveries, so within a heartbeat of the instant at the latest).
    ///   - onStart: called once subscribed and the position is resolved, with the channel's
    ///     epoch, before any item (a WebSocket answers `subscribed` there).
    /// - Returns: why it stopped, and the last offset emitted.
    package func follow(
        _ channel: ChannelName,
        after position: Offset?,
        epoch: Epoch?,
        until expiry: ContinuousClock.Instant? = nil,
        onStart: (EventRead) async throws -> Void = { _ in },
        emit: (Item) async throws -> Void
    ) async throws -> (end: End, last: Offset) {
        let isCheck = channel.isCheckChannel
        return try await hub.withSubscription(to: channel) { subscription in
            var read = try await store.events(
                in: channel,
                after: position ?? (isCheck ? 0 : nil),
                epoch: epoch,
                limit: pageSize
            )
            if isCheck && position == nil { read.events = Array(read.events.suffix(1)) }  // the snapshot
            var cursor = FollowCursor(
                isCheck: isCheck,
                epoch: read.epoch,
                last: read.events.first.map { $0.offset - 1 } ?? read.next
            )
            try await onStart(read)
            if !read.recovered { try await emit(.reset(read, atStart: true)) }
            try await emit(.events(cursor.take(read.events.map(EncodedEvent.init))))
            if read.events.count == pageSize { try await catchUp(channel, &cursor, emit: emit) }
            while !cursor.isEnded {
                var wait = heartbeat
                if let expiry {
                    let left = expiry - .now
                    if left <= .zero { return (.expired, cursor.last) }
                    wait = min(wait, left)
                }
                switch await subscription.next(heartbeat: wait) {
                case .events(let batch):
                    var out: [EncodedEvent] = []
                    for encoded in FollowCursor.ordered(batch) where !cursor.isEnded {
                        switch cursor.place(encoded.event) {
                        case .next: out += cursor.take([encoded])
                        case .duplicate: continue
                        case .beyond:
                            // A hole (announced out of order, or a coalesced check queue), or
                            // another epoch: the store says what comes next, or that it is gone.
                            if !out.isEmpty { try await emit(.events(out)) }
                            out = []
                            try await catchUp(channel, &cursor, emit: emit)
                        }
                    }
                    if !out.isEmpty { try await emit(.events(out)) }
                case .heartbeat:
                    if let expiry, expiry <= .now { return (.expired, cursor.last) }
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

    /// Reads from the store after the cursor, page by page, until a page is not full. A page
    /// that is not `recovered` (the cursor's events are gone, or its epoch is) is announced by
    /// a `.reset` before its events, and the cursor moves to the new history.
    private func catchUp(
        _ channel: ChannelName,
        _ cursor: inout FollowCursor,
        emit: (Item) async throws -> Void
    ) async throws {
        while !cursor.isEnded {
            let read = try await store.events(in: channel, after: cursor.last, epoch: cursor.epoch, limit: pageSize)
            if !read.recovered {
                try await emit(.reset(read, atStart: false))
                cursor.restart(at: read)
            }
            cursor.epoch = read.epoch
            let taken = cursor.take(read.events.map(EncodedEvent.init))
            if !taken.isEmpty { try await emit(.events(taken)) }
            if read.events.count < pageSize { return }
        }
    }
}

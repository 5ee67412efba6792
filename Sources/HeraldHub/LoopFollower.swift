package import HeraldCore
package import HeraldStore
package import NIOCore

/// What a ``LoopFollower`` writes through: the handler of its connection, on the same loop.
///
/// The follower decides *what* goes out and when (the rules of ``ChannelFollower``); the
/// output frames it for its transport (SSE chunks, WebSocket frames) and owns the slow-consumer
/// bound, which a WebSocket counts per connection and a stream per response.
package protocol LoopFollowerOutput: AnyObject {
    /// Whether the connection takes writes now (read once per delivery: NIO's getter is not free).
    var isWritable: Bool { get }
    /// The first store read resolved the client's position: announce it (`read.recovered` says
    /// whether the position was kept). Events of that read follow.
    func started(_ follower: LoopFollower, _ read: EventRead)
    /// The history the follower was reading is gone (trimmed while it paged, or a new epoch):
    /// announce the loss; what `read` still keeps follows.
    func reset(_ follower: LoopFollower, _ read: EventRead)
    /// Events in order, to write (and count against the bound when `isWritable` is false);
    /// a `flush` follows each delivery.
    func write(_ events: [EncodedEvent], of follower: LoopFollower, isWritable: Bool)
    /// Whether what was written while unwritable passed the connection's bound.
    func isOverBound(_ follower: LoopFollower) -> Bool
    func flush()
    /// About every ``LoopSubscribers/tick``, once started: heartbeats, expiries.
    func tick(_ follower: LoopFollower, _ now: ContinuousClock.Instant)
    /// Following stopped, for `end`; the follower is no longer subscribed.
    func ended(_ follower: LoopFollower, _ end: LoopFollower.End)
}

/// Follows one channel from a position on a connection's event loop, with the rules of
/// ``ChannelFollower`` (the tests hold both to the same cases), and no task while it waits.
///
/// It subscribes to the hub first, then reads the backlog from the store; live events are
/// written in order, duplicates skipped, a hole or a new epoch read from the store (announced
/// by ``LoopFollowerOutput/reset(_:_:)`` when the position is gone); a check channel ends
/// after its terminal event. Live events that arrive during a store read wait in a backlog
/// bounded by the hub's `maxQueuedEvents` (past it, another read follows). A client that
/// does not read is cut (``End/slowConsumer``), except on a check channel, where only the
/// newest state matters: its next read waits until the client reads again. Every call comes
/// on `loop`.
package final class LoopFollower: LoopSubscriber {
    /// Why following stopped.
    package enum End {
        /// A check channel's terminal event was written.
        case checkEnded
        /// The client did not read past the output's bound: it resumes from ``last``.
        case slowConsumer
        /// Shutdown.
        case drained
        /// The store could not be read.
        case readFailed(any Error)
    }

    package let channel: ChannelName
    private let position: Offset?
    private let epoch: Epoch?
    private let store: any ChannelLog
    private let hub: Hub
    private let pageSize: Int
    private let loop: any EventLoop
    /// Where it writes; held weakly, since the output holds its followers.
    private weak var output: (any LoopFollowerOutput)?

    /// Set by the first store read.
    package private(set) var cursor: FollowCursor?
    private var isSubscribed = false
    /// A store read is under way; live events wait in `backlog` meanwhile.
    package private(set) var isReading = false
    /// Called once the store read under way when it stopped has ended (see ``stop()``).
    package var whenSettled: (() -> Void)?
    private var backlog: [EncodedEvent] = []
    /// The backlog passed its bound and was dropped: the read that ends must be followed by another.
    private var missedLive = false
    /// A store read waits until the client reads again: a check channel that skipped events
    /// while its client did not read, or any channel with more to read from the store meanwhile.
    private var readsWhenWritable = false
    package private(set) var isEnded = false

    /// - Parameters:
    ///   - position: the client's position, `nil` for "from now" (a check: its current snapshot).
    package init(
        channel: ChannelName,
        position: Offset?,
        epoch: Epoch?,
        store: any ChannelLog,
        hub: Hub,
        pageSize: Int,
        loop: any EventLoop,
        output: any LoopFollowerOutput
    ) {
        self.channel = channel
        self.position = position
        self.epoch = epoch
        self.store = store
        self.hub = hub
        self.pageSize = pageSize
        self.loop = loop
        self.output = output
    }

    /// The last offset written (the position to resume from), or the client's own before that.
    package var last: Offset { cursor?.last ?? position ?? 0 }

    /// Subscribes, then reads the backlog.
    /// - Returns: false when the server is draining: nothing started.
    package func start() -> Bool {
        guard !isEnded, hub.subscribe(self, to: channel, on: loop) else { return false }
        isSubscribed = true
        read()
        return true
    }

    /// Stops following, silently (`unsubscribe`, the connection's end). A store read under way
    /// still ends (its result is dropped), then ``whenSettled`` is called: a connection that
    /// waits for it never has more reads in flight than its subscriptions.
    package func stop() {
        guard !isEnded else { return }
        isEnded = true
        if isSubscribed {
            isSubscribed = false
            hub.unsubscribe(self, from: channel, on: loop)
        }
    }

    /// The connection became writable again: a read that waited for it starts. (The output
    /// resets its own count of what was written while unwritable.)
    package func writable() {
        guard !isEnded, readsWhenWritable else { return }
        readsWhenWritable = false
        if isReading { missedLive = true } else { read() }
    }

    // MARK: LoopSubscriber

    package var answersOnce: Bool { false }

    package func receive(_ events: [EncodedEvent]) {
        guard !isEnded, let output else { return }
        guard !isReading, var cursor else {
            if backlog.count + events.count > hub.limits.maxQueuedEvents {
                backlog = []
                missedLive = true
            } else {
                backlog += events
            }
            return
        }
        if readsWhenWritable { return }  // that read will have these events
        let isWritable = output.isWritable
        if !isWritable, output.isOverBound(self) {
            // A check's client needs only its newest state; any other resumes from the store.
            guard cursor.isCheck else { return end(.slowConsumer) }
            readsWhenWritable = true
            return
        }
        // Usually every event follows the last: the batch itself is written, shared by every
        // subscriber of the loop, and no array is built per subscriber.
        let ordered = FollowCursor.ordered(events)
        var taken = 0
        var out: [EncodedEvent]?  // built only once an event is skipped
        var hole = false
        for encoded in ordered where !cursor.isEnded {
            switch cursor.place(encoded.event) {
            case .next:
                cursor.advance(past: encoded.event)
                if out == nil { taken += 1 } else { out?.append(encoded) }
            case .duplicate:
                if out == nil { out = Array(ordered[..<taken]) }
            case .beyond:
                hole = true  // the store has it, and whatever follows it
            }
            if hole { break }
        }
        self.cursor = cursor
        let written = out ?? (taken == ordered.count ? ordered : Array(ordered[..<taken]))
        if !written.isEmpty { output.write(written, of: self, isWritable: isWritable) }
        output.flush()
        if cursor.isEnded { return end(.checkEnded) }
        if hole { readWhenWritable(output) }
    }

    package func resync() {
        guard !isEnded, let output else { return }
        if isReading {
            missedLive = true
            backlog = []
        } else {
            readWhenWritable(output)
        }
    }

    package func tick(_ now: ContinuousClock.Instant) {
        guard !isEnded, cursor != nil, let output else { return }
        output.tick(self, now)
    }

    package func drain() {
        end(.drained)
    }

    // MARK: reading the store

    /// Reads from the store now if the client reads what is written, else once it does: a
    /// client that stopped reading never makes the server queue the channel's history.
    private func readWhenWritable(_ output: any LoopFollowerOutput) {
        if output.isWritable {
            read()
        } else {
            readsWhenWritable = true
        }
    }

    /// Reads the page after the cursor (the first time: after the client's position), off the
    /// loop; the events are encoded there too.
    private func read() {
        isReading = true
        let after: Offset?
        let epoch: Epoch?
        if let cursor {
            (after, epoch) = (cursor.last, cursor.epoch)
        } else {
            (after, epoch) = (position ?? (channel.isCheckChannel ? 0 : nil), self.epoch)
        }
        let follower = NIOLoopBound(self, eventLoop: loop)
        let (store, channel, pageSize, loop) = (store, channel, pageSize, loop)
        Task {
            let result: Result<(EventRead, [EncodedEvent]), any Error>
            do {
                let read = try await store.events(in: channel, after: after, epoch: epoch, limit: pageSize)
                result = .success((read, read.events.map(EncodedEvent.init)))
            } catch {
                result = .failure(error)
            }
            loop.execute { follower.value.readEnded(result) }
        }
    }

    private func readEnded(_ result: Result<(EventRead, [EncodedEvent]), any Error>) {
        isReading = false
        guard !isEnded, let output else {
            let settled = whenSettled
            whenSettled = nil
            settled?()
            return
        }
        let read: EventRead
        var events: [EncodedEvent]
        switch result {
        case .success(let value): (read, events) = value
        case .failure(let error): return end(.readFailed(error))
        }
        var cursor: FollowCursor
        if let existing = self.cursor {
            cursor = existing
            if !read.recovered {
                output.reset(self, read)
                cursor.restart(at: read)
            }
            cursor.epoch = read.epoch
        } else {
            let isCheck = channel.isCheckChannel
            if isCheck && position == nil { events = Array(events.suffix(1)) }  // the snapshot
            cursor = FollowCursor(
                isCheck: isCheck,
                epoch: read.epoch,
                last: events.first.map { $0.event.offset - 1 } ?? read.next
            )
            output.started(self, read)
        }
        let taken = cursor.take(events)
        self.cursor = cursor
        if !taken.isEmpty { output.write(taken, of: self, isWritable: output.isWritable) }
        output.flush()
        if cursor.isEnded { return end(.checkEnded) }
        if !output.isWritable, output.isOverBound(self) {
            guard cursor.isCheck else { return end(.slowConsumer) }
            backlog = []
            missedLive = false
            readsWhenWritable = true
            return
        }
        if read.events.count == pageSize || missedLive {
            missedLive = false
            backlog = []
            return readWhenWritable(output)
        }
        let waiting = backlog
        backlog = []
        if !waiting.isEmpty { receive(waiting) }
    }

    /// Stops, then tells the output why.
    private func end(_ end: End) {
        guard !isEnded else { return }
        stop()
        output?.ended(self, end)
    }
}

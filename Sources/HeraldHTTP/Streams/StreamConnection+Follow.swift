internal import HTTPTypes
package import HeraldCore
internal import HeraldHub
internal import HeraldStore
internal import Hummingbird
internal import Logging
internal import NIOCore
internal import NIOHTTP1

/// One stream's state on its event loop: the plan, the cursor, and what waits for a store read.
final class Follow {
    let plan: StreamPlan
    /// Set by the first store read.
    var cursor: FollowCursor?
    var isSubscribed = false
    /// A store read is under way; live events wait in `backlog` meanwhile.
    var isReading = false
    var backlog: [EncodedEvent] = []
    /// The backlog passed its bound and was dropped: the read that ends must be followed by another.
    var missedLive = false
    /// A store read waits until the client reads again: a check stream that skipped events while
    /// its client did not read, or any stream with more to read from the store meanwhile.
    var readsWhenWritable = false
    /// Written while the connection was unwritable: the slow-consumer bound.
    var unwritableEvents = 0
    var unwritableBytes = 0
    var heartbeatDue: ContinuousClock.Instant
    var isEnded = false

    init(plan: StreamPlan) {
        self.plan = plan
        self.heartbeatDue = .now.advanced(by: plan.heartbeat)
    }
}

/// Why a stream ends.
enum StreamEnd {
    /// A check channel's terminal event was written.
    case checkEnded
    /// The client did not read: it resumes from its last position.
    case slowConsumer
    /// The credential the stream was opened with expired.
    case expired
    /// Shutdown.
    case drained
}

// Following the channel on the loop, with the rules of ``ChannelFollower`` (its tests hold both
// to the same cases): the hub subscription first, then the backlog from the store; live events
// in order, duplicates skipped, a hole or a new epoch read from the store (announced by a
// `herald.reset` when the position is gone); a check's stream ends after its terminal event.
extension StreamConnection: LoopSubscriber {
    /// Writes the head and the preamble, subscribes, and reads the backlog.
    func start(_ plan: StreamPlan, head: HTTPResponseHead) {
        guard let context, context.channel.isActive, follow == nil else { return }
        let follow = Follow(plan: plan)
        self.follow = follow
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        // The head went through the codec and the encoder, which now frames a chunked body.
        if isChunked { encoder = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self) }
        write(ByteBuffer(string: plan.framing.format.preamble), context)
        context.flush()
        guard plan.hub.subscribe(self, to: plan.channel, on: context.eventLoop) else { return finish(.drained) }
        follow.isSubscribed = true
        read(follow, context)
    }

    package func receive(_ events: [EncodedEvent]) {
        guard let follow, !follow.isEnded, let context else { return }
        guard !follow.isReading, var cursor = follow.cursor else {
            if follow.backlog.count + events.count > follow.plan.hub.limits.maxQueuedEvents {
                follow.backlog = []
                follow.missedLive = true
            } else {
                follow.backlog += events
            }
            return
        }
        if follow.readsWhenWritable { return }  // that read will have these events
        let isWritable = context.channel.isWritable
        if !isWritable, isOverBound(follow) {
            // A check's client needs only its newest state; any other resumes from the store.
            guard cursor.isCheck else { return finish(.slowConsumer) }
            follow.readsWhenWritable = true
            return
        }
        var out: [EncodedEvent] = []
        var hole = false
        for encoded in FollowCursor.ordered(events) where !cursor.isEnded {
            switch cursor.place(encoded.event) {
            case .next: out += cursor.take([encoded])
            case .duplicate: continue
            case .beyond: hole = true  // the store has it, and whatever follows it
            }
            if hole { break }
        }
        follow.cursor = cursor
        send(out, follow, context, isWritable: isWritable)
        context.flush()
        if cursor.isEnded { return finish(.checkEnded) }
        if hole { readWhenWritable(follow, context) }
    }

    package func resync() {
        guard let follow, !follow.isEnded, let context else { return }
        if follow.isReading {
            follow.missedLive = true
            follow.backlog = []
        } else {
            readWhenWritable(follow, context)
        }
    }

    package func tick(_ now: ContinuousClock.Instant) {
        guard let follow, !follow.isEnded, follow.cursor != nil, let context else { return }
        if let expiry = follow.plan.expiry, expiry <= now { return finish(.expired) }
        guard now >= follow.heartbeatDue, context.channel.isWritable else { return }
        write(ByteBuffer(string: follow.plan.framing.heartbeat(channel: follow.plan.channel)), context)
        context.flush()
    }

    package func drain() {
        finish(.drained)
    }

    /// The client reads again: a read that waited for it starts.
    func writable() {
        guard let follow, !follow.isEnded, let context else { return }
        follow.unwritableEvents = 0
        follow.unwritableBytes = 0
        guard follow.readsWhenWritable else { return }
        follow.readsWhenWritable = false
        if follow.isReading { follow.missedLive = true } else { read(follow, context) }
    }

    /// Unsubscribes; the connection is gone or the handler removed.
    func stop() {
        guard let follow, !follow.isEnded else { return }
        follow.isEnded = true
        unsubscribe(follow)
    }

    // MARK: reading the store

    /// Reads from the store now if the client reads what is written, else once it does: a
    /// client that stopped reading never makes the server queue the channel's history.
    private func readWhenWritable(_ follow: Follow, _ context: ChannelHandlerContext) {
        if context.channel.isWritable {
            read(follow, context)
        } else {
            follow.readsWhenWritable = true
        }
    }

    /// Reads the page after the cursor (the first time: after the client's position), off the
    /// loop; the events are encoded there too.
    private func read(_ follow: Follow, _ context: ChannelHandlerContext) {
        follow.isReading = true
        let plan = follow.plan
        let after: Offset?
        let epoch: Epoch?
        if let cursor = follow.cursor {
            (after, epoch) = (cursor.last, cursor.epoch)
        } else {
            (after, epoch) = (plan.position ?? (plan.channel.isCheckChannel ? 0 : nil), plan.epoch)
        }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        Task {
            let result: Result<(EventRead, [EncodedEvent]), any Error>
            do {
                let read = try await plan.store.events(
                    in: plan.channel,
                    after: after,
                    epoch: epoch,
                    limit: plan.pageSize
                )
                result = .success((read, read.events.map(EncodedEvent.init)))
            } catch {
                result = .failure(error)
            }
            loop.execute { handler.value.readEnded(result) }
        }
    }

    private func readEnded(_ result: Result<(EventRead, [EncodedEvent]), any Error>) {
        guard let follow, !follow.isEnded, let context else { return }
        follow.isReading = false
        let read: EventRead
        var events: [EncodedEvent]
        switch result {
        case .success(let value): (read, events) = value
        case .failure(let error):
            logger.info("stream ended: the store could not be read", metadata: ["error": "\(error)"])
            stop()
            return context.close(promise: nil)
        }
        let plan = follow.plan
        var cursor: FollowCursor
        if let existing = follow.cursor {
            cursor = existing
            if !read.recovered {
                write(marker(read.resetJSON(channel: plan.channel), "herald.reset", plan), context)
                cursor.restart(at: read)
            }
            cursor.epoch = read.epoch
        } else {
            let isCheck = plan.channel.isCheckChannel
            if isCheck && plan.position == nil { events = Array(events.suffix(1)) }  // the snapshot
            cursor = FollowCursor(
                isCheck: isCheck,
                epoch: read.epoch,
                last: events.first.map { $0.event.offset - 1 } ?? read.next
            )
            if plan.framing.announces {
                write(marker(read.welcomeJSON(channel: plan.channel), "herald.welcome", plan), context)
            }
            if !read.recovered { write(marker(read.resetJSON(channel: plan.channel), "herald.reset", plan), context) }
        }
        send(cursor.take(events), follow, context, isWritable: context.channel.isWritable)
        follow.cursor = cursor
        context.flush()
        if cursor.isEnded { return finish(.checkEnded) }
        if !context.channel.isWritable, isOverBound(follow) {
            guard cursor.isCheck else { return finish(.slowConsumer) }
            follow.backlog = []
            follow.missedLive = false
            follow.readsWhenWritable = true
            return
        }
        if read.events.count == plan.pageSize || follow.missedLive {
            follow.missedLive = false
            follow.backlog = []
            return readWhenWritable(follow, context)
        }
        let backlog = follow.backlog
        follow.backlog = []
        if !backlog.isEmpty { receive(backlog) }
    }

    // MARK: writing

    private func isOverBound(_ follow: Follow) -> Bool {
        let limits = follow.plan.hub.limits
        return follow.unwritableEvents >= limits.maxQueuedEvents || follow.unwritableBytes >= limits.maxQueuedBytes
    }

    /// Writes `events`; `isWritable` is the connection's writability as the caller read it (NIO's
    /// getter is not free, and a delivery reads it once).
    private func send(
        _ events: [EncodedEvent],
        _ follow: Follow,
        _ context: ChannelHandlerContext,
        isWritable: Bool
    ) {
        guard !events.isEmpty else { return }
        if let encoder {
            // Each event's chunk is shared by every stream of its format: no copy, one writev.
            for event in events {
                let chunk = follow.plan.framing.chunk(event)
                if !isWritable { follow.unwritableBytes += chunk.readableBytes }
                encoder.write(NIOAny(IOData.byteBuffer(chunk)), promise: nil)
            }
            follow.heartbeatDue = .now.advanced(by: follow.plan.heartbeat)
        } else {
            let bytes = follow.plan.framing.encode(events)
            if !isWritable { follow.unwritableBytes += bytes.readableBytes }
            write(bytes, context)
        }
        if !isWritable { follow.unwritableEvents += events.count }
    }

    /// Writes `bytes` as a chunk of the body: below the HTTP encoder, already framed, when the
    /// pipeline has one.
    private func write(_ bytes: ByteBuffer, _ context: ChannelHandlerContext) {
        guard bytes.readableBytes > 0 else { return }
        if let encoder {
            encoder.write(NIOAny(IOData.byteBuffer(EncodedEvent.chunk(bytes))), promise: nil)
        } else {
            context.write(wrapOutboundOut(.body(.byteBuffer(bytes))), promise: nil)
        }
        if let follow { follow.heartbeatDue = .now.advanced(by: follow.plan.heartbeat) }
    }

    private func marker(_ json: String, _ type: String, _ plan: StreamPlan) -> ByteBuffer {
        ByteBuffer(string: plan.framing.marker(json, type: type))
    }

    /// Ends the stream (with `herald.expired` when the credential expired), then the connection.
    func finish(_ end: StreamEnd) {
        guard let follow, !follow.isEnded, let context else { return }
        stop()
        let plan = follow.plan
        if end == .expired {
            var json = JSONWriter()
            json.string("type", "herald.expired")
            json.string("channel", plan.channel.rawValue)
            json.string("epoch", (follow.cursor?.epoch ?? plan.epoch)?.rawValue)
            json.int("last", follow.cursor?.last)
            write(marker(json.result, "herald.expired", plan), context)
        }
        let epilogue = plan.framing.format.epilogue
        if !epilogue.isEmpty { write(ByteBuffer(string: epilogue), context) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    private func unsubscribe(_ follow: Follow) {
        guard follow.isSubscribed, let context else { return }
        follow.isSubscribed = false
        follow.plan.hub.unsubscribe(self, from: follow.plan.channel, on: context.eventLoop)
    }
}

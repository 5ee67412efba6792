internal import HTTPTypes
package import HeraldCore
package import HeraldHub
internal import HeraldStore
internal import Hummingbird
internal import Logging
internal import NIOCore
internal import NIOHTTP1

/// One stream's state on its event loop: the plan, its follower, and the slow-consumer count.
final class Follow {
    let plan: StreamPlan
    var follower: LoopFollower?
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

// Following the channel on the loop is ``LoopFollower``'s (the rules of ``ChannelFollower``);
// the stream frames what it hands over: a `herald.welcome` and a `herald.reset` marker when
// the position is gone, events as pre-framed chunks, heartbeats, and the end.
extension StreamConnection: LoopFollowerOutput {
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
        let follower = LoopFollower(
            channel: plan.channel,
            position: plan.position,
            epoch: plan.epoch,
            store: plan.store,
            hub: plan.hub,
            pageSize: plan.pageSize,
            loop: context.eventLoop,
            output: self
        )
        follow.follower = follower
        guard follower.start() else { return finish(.drained) }
    }

    package var isWritable: Bool { context?.channel.isWritable ?? false }

    package func started(_ follower: LoopFollower, _ read: EventRead) {
        guard let follow, let context else { return }
        let plan = follow.plan
        if plan.framing.announces {
            write(marker(read.welcomeJSON(channel: plan.channel), "herald.welcome", plan), context)
        }
        if !read.recovered { write(marker(read.resetJSON(channel: plan.channel), "herald.reset", plan), context) }
    }

    package func reset(_ follower: LoopFollower, _ read: EventRead) {
        guard let follow, let context else { return }
        write(marker(read.resetJSON(channel: follow.plan.channel), "herald.reset", follow.plan), context)
    }

    package func write(_ events: [EncodedEvent], of follower: LoopFollower, isWritable: Bool) {
        guard let follow, let context else { return }
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

    package func isOverBound(_ follower: LoopFollower) -> Bool {
        guard let follow else { return false }
        let limits = follow.plan.hub.limits
        return follow.unwritableEvents >= limits.maxQueuedEvents || follow.unwritableBytes >= limits.maxQueuedBytes
    }

    package func flush() {
        context?.flush()
    }

    package func tick(_ follower: LoopFollower, _ now: ContinuousClock.Instant) {
        guard let follow, !follow.isEnded, let context else { return }
        if let expiry = follow.plan.expiry, expiry <= now { return finish(.expired) }
        guard now >= follow.heartbeatDue, context.channel.isWritable else { return }
        write(ByteBuffer(string: follow.plan.framing.heartbeat(channel: follow.plan.channel)), context)
        context.flush()
    }

    package func ended(_ follower: LoopFollower, _ end: LoopFollower.End) {
        switch end {
        case .checkEnded: finish(.checkEnded)
        case .slowConsumer: finish(.slowConsumer)
        case .drained: finish(.drained)
        case .readFailed(let error):
            logger.info("stream ended: the store could not be read", metadata: ["error": "\(error)"])
            stop()
            context?.close(promise: nil)
        }
    }

    /// The client reads again: a read that waited for it starts.
    func writable() {
        guard let follow, !follow.isEnded else { return }
        follow.unwritableEvents = 0
        follow.unwritableBytes = 0
        follow.follower?.writable()
    }

    /// Unsubscribes; the connection is gone or the handler removed.
    func stop() {
        guard let follow, !follow.isEnded else { return }
        follow.isEnded = true
        follow.follower?.stop()
    }

    // MARK: writing

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
        let cursor = follow.follower?.cursor
        stop()
        let plan = follow.plan
        if end == .expired {
            var json = JSONWriter()
            json.string("type", "herald.expired")
            json.string("channel", plan.channel.rawValue)
            json.string("epoch", (cursor?.epoch ?? plan.epoch)?.rawValue)
            json.int("last", cursor?.last)
            write(marker(json.result, "herald.expired", plan), context)
        }
        let epilogue = plan.framing.format.epilogue
        if !epilogue.isEmpty { write(ByteBuffer(string: epilogue), context) }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}

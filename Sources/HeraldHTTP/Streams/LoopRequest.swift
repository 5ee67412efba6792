internal import Foundation
package import HTTPTypes
package import HeraldCore
internal import HeraldHub
internal import HeraldStore
package import Hummingbird
package import Logging
package import NIOCore
internal import NIOHTTP1
internal import NIOHTTPTypesHTTP1

/// A long poll the router prepared (parsed, authorized) to be held: everything ``LoopRequest``
/// needs to hold it on the event loop without a task.
struct PollPlan: Sendable {
    let channel: ChannelName
    /// The client's position: the answer holds what follows it.
    let position: Offset
    /// The epoch the client claims, if it does.
    let epoch: Epoch?
    /// When the poll answers with nothing (its `wait`, or its token's expiry).
    let deadline: ContinuousClock.Instant
    /// The answer with no event, at the deadline or on shutdown; `nil` when the router did not
    /// read the store (the hub did not show the channel caught up): the poll reads it first,
    /// and answers at once with what follows its position, if anything does.
    let timeoutAnswer: String?
    /// A JSONP callback wrapping the answer.
    let callback: String?
    let store: any ChannelLog
    let hub: Hub
    let pageSize: Int
}

/// One request on a keep-alive HTTP/1.1 connection, served on its event loop: a poll, a
/// publish, any request of the API that has fully arrived. The request goes through the router
/// in a short task that runs on the connection's loop, with a ``StreamTakeover`` slot; a long
/// poll that has to wait leaves its ``PollPlan`` there, and is then held as a subscriber of
/// the hub on the loop, with no task, no continuation and no `NIOAsyncChannel`, until an
/// event, its deadline, or shutdown answers it. Any other answer (a publish's event, events
/// already there, a problem) is written as the router gave it.
///
/// The rules are the async path's (`HeraldAPI.pollChannel`): the event right after the
/// client's position answers with its shared ``EncodedEvent/pollAnswer``; anything else (a
/// hole, a new epoch, events dropped by a loop that fell behind) is read from the store; a
/// read that finds nothing keeps waiting. A connection its client reset stops it (``stop()``);
/// a client that half-closed still gets its answer.
///
/// It writes through `context`, the handler's that owns the connection, and calls `ended`
/// with whether the connection stays open for a next request.
package final class LoopRequest<Responder: HTTPResponder>: LoopSubscriber
where Responder.Context == HeraldRequestContext {
    private let context: ChannelHandlerContext
    /// Runs the request's tasks (routing, store reads) on its connection's loop.
    private let executor: LoopExecutor
    private let logger: Logger
    private let ended: (_ keepAlive: Bool) -> Void
    /// Asked when the answer is written: whether it is the connection's last (shutdown, or a
    /// client that half-closed), so it says `Connection: close` and the connection closes
    /// once it is written.
    private let isLast: () -> Bool
    private var plan: PollPlan?
    /// The answer with no event: the plan's, or made from the poll's first read.
    private var timeoutAnswer: String?
    /// Shutdown came before the first read ended: its answer closes the connection.
    private var isDraining = false
    /// The head of the answer, from the router.
    private var head: HTTPResponseHead?
    private var isSubscribed = false
    private var isReading = false
    /// Events arrived during a store read that may not be in it: read again.
    private var readsAgain = false
    private var isDone = false

    /// Routes `request` (which has fully arrived, with `body`) and answers it on `context`'s loop.
    package init(
        request: HTTPRequest,
        body: ByteBuffer,
        responder: Responder,
        context: ChannelHandlerContext,
        logger: Logger,
        isLast: @escaping () -> Bool = { false },
        ended: @escaping (_ keepAlive: Bool) -> Void
    ) {
        self.context = context
        self.isLast = isLast
        self.executor = LoopExecutor(context.eventLoop)
        self.logger = logger
        self.ended = ended
        let request = Request(head: request, body: RequestBody(buffer: body))
        let channel = context.channel
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        Task(executorPreference: executor) { [logger] in
            let (response, takeover) = await LoopRouting.respond(
                to: request,
                serving: .request,
                responder: responder,
                channel: channel,
                logger: logger
            )
            var head = HTTPResponseHead(response.head)
            head.version = .http1_1
            if let plan = takeover.poll {
                channel.eventLoop.execute { [head] in bound.value.hold(plan, head: head) }
                return
            }
            guard response.body.contentLength != nil else {
                // Open-ended (a stream the head did not show, say a percent-encoded format):
                // written as it comes, and the connection closes after it.
                return await LoopRequest.stream(response.body, head: head, bound: bound, on: channel.eventLoop)
            }
            let body: ByteBuffer
            do {
                body = try await response.body.collect()
            } catch {
                return channel.eventLoop.execute { bound.value.fail(error) }
            }
            channel.eventLoop.execute { [head] in bound.value.write(head, body) }
        }
    }

    /// Writes an open-ended body part by part, each write awaited, then closes.
    private static func stream(
        _ body: ResponseBody,
        head: HTTPResponseHead,
        bound: NIOLoopBound<LoopRequest>,
        on loop: any EventLoop
    ) async {
        var head = head
        head.headers.replaceOrAdd(name: "connection", value: "close")
        head.headers.replaceOrAdd(name: "date", value: HTTPDate.now)
        do {
            try await loop.flatSubmit { [head] in bound.value.send(.head(head)) }.get()
            try await body.write(LoopBodyWriter(bound: bound, loop: loop))
        } catch {
            // The client went away.
        }
        loop.execute { bound.value.fail(nil) }
    }

    /// Writes one part of an open-ended answer; fails once the request stopped.
    fileprivate func send(_ part: HTTPServerResponsePart) -> EventLoopFuture<Void> {
        guard !isDone else { return context.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
        return context.writeAndFlush(NIOAny(part))
    }

    /// The connection is gone or its handler removed: leaves the hub.
    package func stop() {
        isDone = true
        unsubscribe()
    }

    // MARK: holding

    /// Subscribes, then reads the store unless the router saw the channel caught up and it did
    /// not move meanwhile.
    private func hold(_ plan: PollPlan, head: HTTPResponseHead) {
        guard !isDone else { return }
        self.plan = plan
        self.head = head
        timeoutAnswer = plan.timeoutAnswer
        guard plan.hub.subscribe(self, to: plan.channel, on: context.eventLoop) else {
            // Shutting down: the answer with nothing, or what the first read finds, closing.
            drain()
            if timeoutAnswer == nil { read(plan) }
            return
        }
        isSubscribed = true
        if timeoutAnswer == nil || !isCaughtUp(plan) { read(plan) }
    }

    package var answersOnce: Bool { true }

    package func receive(_ events: [EncodedEvent]) {
        guard let plan, !isDone else { return }
        if isReading {
            readsAgain = true
            return
        }
        if let next = events.first(where: { $0.event.offset == plan.position + 1 && $0.event.epoch.accepts(plan.epoch) }
        ) {
            return answer(next.pollAnswer)
        }
        read(plan)
    }

    package func tick(_ now: ContinuousClock.Instant) {
        // Every subscriber of the loop ticks 4 times a second: the plan is not copied until due.
        guard !isDone, !isReading, let deadline = plan?.deadline, now >= deadline, let plan else { return }
        if let timeoutAnswer, isCaughtUp(plan) { answer(timeoutAnswer) } else { read(plan) }
    }

    package func resync() {
        guard let plan, !isDone else { return }
        if isReading { readsAgain = true } else { read(plan) }
    }

    package func drain() {
        guard plan != nil, !isDone else { return }
        if let timeoutAnswer { answer(timeoutAnswer, closing: true) } else { isDraining = true }
    }

    private func isCaughtUp(_ plan: PollPlan) -> Bool {
        guard let head = plan.hub.head(of: plan.channel) else { return false }
        return head.offset == plan.position && head.epoch.accepts(plan.epoch)
    }

    /// Reads what follows the client's position, off the loop.
    private func read(_ plan: PollPlan) {
        isReading = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        Task(executorPreference: executor) {
            let result: Result<EventRead, any Error>
            do {
                result = .success(
                    try await plan.store.events(
                        in: plan.channel,
                        after: plan.position,
                        epoch: plan.epoch,
                        limit: plan.pageSize
                    )
                )
            } catch {
                result = .failure(error)
            }
            loop.execute { bound.value.readEnded(result) }
        }
    }

    private func readEnded(_ result: Result<EventRead, any Error>) {
        isReading = false
        guard let plan, !isDone else { return }
        switch result {
        case .failure(let error) where timeoutAnswer == nil:
            answer(problem: error, plan)  // the first read: answered as the router would have
        case .failure(let error):
            fail(error)
        case .success(let read)
        where !read.events.isEmpty || !read.recovered || isDraining || ContinuousClock.now >= plan.deadline:
            answer(read.json(channel: plan.channel), closing: isDraining)
        case .success(let read):
            // Nothing after the position yet: keep waiting, unless events came meanwhile.
            if timeoutAnswer == nil { timeoutAnswer = read.json(channel: plan.channel) }
            if readsAgain {
                readsAgain = false
                self.read(plan)
            }
        }
    }

    // MARK: answering

    private func answer(_ json: String, closing: Bool = false) {
        guard let head, let plan, !isDone else { return }
        write(head, answerBody(json, callback: plan.callback), closing: closing)
    }

    /// Answers with the problem `error` maps to (a store that cannot be read: `503`), in the
    /// router's head, so its CORS headers stay; the connection stays open unless shutdown began.
    private func answer(problem error: any Error, _ plan: PollPlan) {
        guard var head else { return }
        let problem = Problem(other: error, about: ["channel": "\(plan.channel)"], logger: logger)
        head.status = HTTPResponseStatus(statusCode: problem.status.code)
        for field in problem.responseHeaders {
            head.headers.replaceOrAdd(name: field.name.canonicalName, value: field.value)
        }
        write(head, ByteBuffer(string: problem.json), closing: isDraining)
    }

    /// Writes the answer with its length; the connection stays open unless `closing` (or the
    /// router said so).
    private func write(_ head: HTTPResponseHead, _ body: ByteBuffer, closing: Bool = false) {
        guard !isDone else { return }  // stopped while it was routed: the connection is gone
        isDone = true
        unsubscribe()
        var head = head
        head.headers.replaceOrAdd(name: "content-length", value: "\(body.readableBytes)")
        head.headers.replaceOrAdd(name: "date", value: HTTPDate.now)
        let closes = closing || !head.isKeepAlive || isLast()
        if closes { head.headers.replaceOrAdd(name: "connection", value: "close") }
        context.write(NIOAny(HTTPServerResponsePart.head(head)), promise: nil)
        if body.readableBytes > 0 {
            context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(body))), promise: nil)
        }
        if closes {
            let channel = context.channel
            context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil))).whenComplete { _ in
                channel.close(promise: nil)
            }
        } else {
            context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)), promise: nil)
        }
        ended(!closes)
    }

    /// The store could not be read, or the body not made (or an open-ended one ended): the
    /// connection closes, as a stream's does; a poller polls again.
    private func fail(_ error: (any Error)?) {
        guard !isDone else {
            if error == nil { context.close(promise: nil) }  // the end of an open-ended answer
            return
        }
        if let error {
            logger.info(
                "a request on the event loop ended: its answer could not be made",
                metadata: ["error": "\(error)"]
            )
        }
        stop()
        context.close(promise: nil)
        ended(false)
    }

    private func unsubscribe() {
        guard isSubscribed, let plan else { return }
        isSubscribed = false
        plan.hub.unsubscribe(self, from: plan.channel, on: context.eventLoop)
    }
}

/// Writes an open-ended body through the request's handler, on its loop, one awaited write a part.
private struct LoopBodyWriter<Responder: HTTPResponder>: ResponseBodyWriter
where Responder.Context == HeraldRequestContext {
    let bound: NIOLoopBound<LoopRequest<Responder>>
    let loop: any EventLoop

    mutating func write(_ buffer: ByteBuffer) async throws {
        try await loop.flatSubmit { [bound] in bound.value.send(.body(.byteBuffer(buffer))) }.get()
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await loop.flatSubmit { [bound] in bound.value.send(.end(nil)) }.get()
    }
}

import Foundation
import HTTPTypes
import HeraldCore
import HeraldHub
import HeraldStore
import Hummingbird
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing

@testable import HeraldHTTP

/// A long poll held on its event loop follows the async path's rules (`pollChannel`): the next
/// event answers with its shared answer; a hole, events dropped by the loop, or an event that
/// came between routing and holding are read from the store; its deadline answers with nothing,
/// shutdown too, closing the connection; an answer the router gave at once is written as it is,
/// and a request's body reaches its route.
@Suite(.timeLimit(.minutes(1))) struct LoopRequestTests {
    /// Answers with the poll `plan` to hold, as `pollChannel` does; without one, at once.
    private struct PollResponder: HTTPResponder {
        typealias Context = HeraldRequestContext
        let plan: PollPlan?
        var openEnded = false
        func respond(to request: Request, context: HeraldRequestContext) async throws -> Response {
            if request.method == .post {
                let body = try await request.body.collect(upTo: 1024)
                return jsonResponse(.created, #"{"echo":"\#(String(buffer: body))"}"#)
            }
            if openEnded {
                return Response(
                    status: .ok,
                    headers: [.contentType: "text/event-stream"],
                    body: ResponseBody { writer in
                        try await writer.write(ByteBuffer(string: "a"))
                        try await writer.write(ByteBuffer(string: "b"))
                        try await writer.finish(nil)
                    }
                )
            }
            guard let plan else { return jsonResponse(.ok, #"{"at":"once"}"#) }
            StreamTakeover.current?.poll = plan
            return jsonResponse(.ok, "", callback: plan.callback)
        }
    }

    /// Whether the poll left its connection open; set once it ended.
    private final class Ending: Sendable {
        let keepAlive = Mutex<Bool?>(nil)
    }

    /// Holds a ``LoopRequest`` as ``StreamGate`` does: the poll writes through this handler's context.
    private final class Host: ChannelInboundHandler {
        typealias InboundIn = Never
        let responder: PollResponder
        let ending: Ending
        /// A `POST` with this body, or without one a `GET`.
        let body: String?
        var poll: LoopRequest<PollResponder>?

        init(_ responder: PollResponder, _ ending: Ending, body: String?) {
            self.responder = responder
            self.ending = ending
            self.body = body
        }

        func handlerAdded(context: ChannelHandlerContext) {
            let request = HTTPRequest(
                method: body == nil ? .get : .post,
                scheme: "http",
                authority: "herald",
                path: "/api/v1/channels/c/events"
            )
            let ending = self.ending
            poll = LoopRequest(
                request: request,
                body: ByteBuffer(string: body ?? ""),
                responder: responder,
                context: context,
                logger: Logger(label: "test")
            ) { keepAlive in ending.keepAlive.withLock { $0 = keepAlive } }
        }
    }

    private struct Answer {
        let head: HTTPResponseHead
        let body: String
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
        var offsets: [Int] { (json["events"] as? [[String: Any]] ?? []).compactMap { $0["offset"] as? Int } }
    }

    private struct Poll {
        let channel = NIOAsyncTestingChannel()
        let ending = Ending()

        init(_ plan: PollPlan?, openEnded: Bool = false, posting body: String? = nil) async throws {
            try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
            let (responder, ending) = (PollResponder(plan: plan, openEnded: openEnded), self.ending)
            try await channel.eventLoop.submit { [channel] in
                try channel.pipeline.syncOperations.addHandler(Host(responder, ending, body: body))
            }.get()
        }

        /// Waits until the poll is held on the loop, following its channel.
        func held(_ hub: Hub, _ name: ChannelName) async throws {
            let deadline = ContinuousClock.now.advanced(by: .seconds(5))
            while !hub.isFollowed(name), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
            #expect(hub.isFollowed(name))
        }

        /// Drains `hub`, and waits until the drain reached the poll's loop (the hub posts it there).
        func drain(_ hub: Hub) async throws {
            hub.drain()
            try await channel.eventLoop.submit {}.get()
        }

        /// The answer written (5 s at most), head to end.
        func answer() async throws -> Answer? {
            let deadline = ContinuousClock.now.advanced(by: .seconds(5))
            var head: HTTPResponseHead?
            var body = ""
            while ContinuousClock.now < deadline {
                guard let part = try await channel.readOutbound(as: HTTPServerResponsePart.self) else {
                    try await Task.sleep(for: .milliseconds(5))
                    continue
                }
                switch part {
                case .head(let value): head = value
                case .body(.byteBuffer(let bytes)): body += String(buffer: bytes)
                case .body(let other): Issue.record("a body part that is not a buffer: \(other)")
                case .end:
                    guard let head else { return nil }
                    #expect(head.headers["content-length"] == ["\(body.utf8.count)"])
                    return Answer(head: head, body: body)
                }
            }
            Issue.record("no answer")
            return nil
        }
    }

    /// A channel whose event 1 was announced, its store and its hub.
    private struct Orders {
        let log: CountingLog
        let hub: Hub
        let name = ChannelName("orders")!

        init(hub: Hub = Hub(), afterRead: @escaping @Sendable (Int) async throws -> Void = { _ in }) async throws {
            log = CountingLog(try makeStore(), afterRead: afterRead)
            self.hub = hub
            hub.publish(try await append())
        }

        func append() async throws -> Event {
            try await log.append(type: "t", data: "1", to: name, at: .now())
        }

        /// A poll of what follows event 1, as the router prepared it (having seen the channel
        /// caught up, unless `caughtUp` is false: then the poll reads the store first); held on
        /// its loop unless `held` is false.
        func poll(
            wait: Duration = .seconds(60),
            callback: String? = nil,
            caughtUp: Bool = true,
            held: Bool = true
        ) async throws -> Poll {
            let plan = PollPlan(
                channel: name,
                position: 1,
                epoch: nil,
                deadline: .now.advanced(by: wait),
                timeoutAnswer: caughtUp ? #"{"events":[]}"# : nil,
                callback: callback,
                store: log,
                hub: hub,
                pageSize: 100
            )
            let poll = try await Poll(plan)
            if held { try await poll.held(hub, name) }
            return poll
        }
    }

    @Test func theNextEventAnswersWithItsSharedAnswerAndTheConnectionStays() async throws {
        let orders = try await Orders()
        let poll = try await orders.poll()
        let event = try await orders.append()
        orders.hub.publish(event)
        let answer = try #require(try await poll.answer())
        #expect(answer.body == EncodedEvent(event).pollAnswer)
        #expect(answer.head.status == .ok && answer.head.headers["connection"].isEmpty)
        #expect(answer.head.headers["content-type"] == ["application/json"])
        #expect(poll.ending.keepAlive.withLock { $0 } == true)
        #expect(orders.log.reads.withLock { $0 } == 0)  // caught up, and woken by the very next event
        #expect(!orders.hub.isFollowed(orders.name))
    }

    @Test func aHoleIsReadFromTheStore() async throws {
        let orders = try await Orders()
        let poll = try await orders.poll()
        _ = try await orders.append()  // never announced
        orders.hub.publish(try await orders.append())
        let answer = try #require(try await poll.answer())
        #expect(answer.offsets == [2, 3])
        #expect(orders.log.reads.withLock { $0 } == 1)
    }

    @Test func anEventBetweenRoutingAndHoldingIsNotMissed() async throws {
        let orders = try await Orders()
        // The router saw the channel at 1; event 2 was published before the poll was held.
        orders.hub.publish(try await orders.append())
        let poll = try await orders.poll(held: false)
        let answer = try #require(try await poll.answer())
        #expect(answer.offsets == [2])
    }

    @Test func eventsTheLoopDroppedAreReadFromTheStore() async throws {
        let orders = try await Orders(hub: Hub(loopInbox: 2))
        let poll = try await orders.poll()
        // Three announcements before the loop runs: the third finds the inbox full, and all are dropped.
        var events: [Event] = []
        for _ in 1...3 { events.append(try await orders.append()) }
        let hub = orders.hub
        try await poll.channel.eventLoop.submit { [events] in
            for event in events { hub.publish(event) }
        }.get()
        let answer = try #require(try await poll.answer())
        #expect(answer.offsets == [2, 3, 4])
    }

    @Test func theDeadlineAnswersWithNothing() async throws {
        let orders = try await Orders()
        let poll = try await orders.poll(wait: .seconds(2), callback: "cb")  // as below
        try await Task.sleep(for: .milliseconds(2_100))
        await poll.channel.testingEventLoop.advanceTime(by: .milliseconds(300))  // a tick
        let answer = try #require(try await poll.answer())
        #expect(answer.body == #"/**/cb({"events":[]});"#)
        #expect(answer.head.headers["content-type"] == ["application/javascript; charset=utf-8"])
        #expect(poll.ending.keepAlive.withLock { $0 } == true)
        #expect(!orders.hub.isFollowed(orders.name))
    }

    @Test func shutdownAnswersWithNothingAndCloses() async throws {
        let orders = try await Orders()
        let poll = try await orders.poll()
        orders.hub.drain()
        let answer = try #require(try await poll.answer())
        #expect(answer.body == #"{"events":[]}"#)
        #expect(answer.head.headers["connection"] == ["close"])
        #expect(poll.ending.keepAlive.withLock { $0 } == false)
        try await poll.channel.closeFuture.get()
    }

    @Test func aPollTheRouterDidNotReadIsAnsweredAtOnceWithWhatFollowsItsPosition() async throws {
        let orders = try await Orders()
        _ = try await orders.append()  // never announced: the hub still shows 1
        let poll = try await orders.poll(caughtUp: false, held: false)
        let answer = try #require(try await poll.answer())
        #expect(answer.offsets == [2])
        #expect(answer.json["next"] as? Int == 2)
        #expect(orders.log.reads.withLock { $0 } == 1)
        #expect(poll.ending.keepAlive.withLock { $0 } == true)
        #expect(!orders.hub.isFollowed(orders.name))
    }

    @Test func aPollTheRouterDidNotReadWaitsWhenNothingFollowsAndItsDeadlineAnswersWithTheRead() async throws {
        let orders = try await Orders()
        // Long enough for the first read to end before it under CI's load (a read that ends
        // after the deadline answers at once, and the poll is never seen held).
        let poll = try await orders.poll(wait: .seconds(2), caughtUp: false)
        try await Task.sleep(for: .milliseconds(2_100))
        // The read found nothing: nothing is written before the deadline's tick.
        #expect(try await poll.channel.readOutbound(as: HTTPServerResponsePart.self) == nil)
        #expect(orders.log.reads.withLock { $0 } == 1)
        await poll.channel.testingEventLoop.advanceTime(by: .milliseconds(300))  // a tick
        let answer = try #require(try await poll.answer())
        #expect(answer.offsets == [] && answer.json["next"] as? Int == 1 && answer.json["recovered"] as? Bool == true)
        #expect(answer.json["channel"] as? String == "orders" && answer.json["epoch"] is String)
        #expect(orders.log.reads.withLock { $0 } == 1)  // the deadline needs no second read
        #expect(poll.ending.keepAlive.withLock { $0 } == true)
    }

    @Test func shutdownDuringAPollsFirstReadAnswersWithTheReadAndCloses() async throws {
        let release = Mutex(false)
        let orders = try await Orders { _ in
            while !release.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
        }
        let poll = try await orders.poll(caughtUp: false)
        try await poll.drain(orders.hub)
        release.withLock { $0 = true }
        let answer = try #require(try await poll.answer())
        #expect(answer.offsets == [] && answer.json["next"] as? Int == 1)
        #expect(answer.head.headers["connection"] == ["close"])
        #expect(poll.ending.keepAlive.withLock { $0 } == false)
        try await poll.channel.closeFuture.get()
    }

    @Test func aFirstReadThatFailsDuringShutdownAnswersWithItsProblemAndCloses() async throws {
        let release = Mutex(false)
        let orders = try await Orders { _ in
            while !release.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
            throw HeraldError(.unavailable, "the store is away")
        }
        let poll = try await orders.poll(caughtUp: false)
        try await poll.drain(orders.hub)
        release.withLock { $0 = true }
        let answer = try #require(try await poll.answer())
        #expect(answer.head.status == .serviceUnavailable)
        #expect(answer.head.headers["connection"] == ["close"])
        try await poll.channel.closeFuture.get()
    }

    @Test func aPollHeldAfterShutdownBeganAnswersWithItsFirstReadAndCloses() async throws {
        let orders = try await Orders()
        orders.hub.drain()
        let poll = try await orders.poll(caughtUp: false, held: false)
        let answer = try #require(try await poll.answer())
        #expect(answer.offsets == [] && answer.json["next"] as? Int == 1)
        #expect(answer.head.headers["connection"] == ["close"])
        try await poll.channel.closeFuture.get()
    }

    @Test func aPollsFailedFirstReadIsAnsweredWithItsProblemAndTheConnectionStays() async throws {
        let orders = try await Orders { _ in throw HeraldError(.unavailable, "the store is away") }
        let poll = try await orders.poll(caughtUp: false, held: false)
        let answer = try #require(try await poll.answer())
        #expect(answer.head.status == .serviceUnavailable)
        #expect(answer.head.headers["content-type"] == ["application/problem+json"])
        #expect(
            answer.json["code"] as? String == "unavailable" && answer.json["detail"] as? String == "the store is away"
        )
        #expect(poll.ending.keepAlive.withLock { $0 } == true)
        #expect(!orders.hub.isFollowed(orders.name))
    }

    @Test func anAnswerGivenAtOnceIsWrittenAsItIs() async throws {
        let poll = try await Poll(nil)
        let answer = try #require(try await poll.answer())
        #expect(answer.body == #"{"at":"once"}"#)
        #expect(poll.ending.keepAlive.withLock { $0 } == true)
    }

    @Test func aRequestsBodyReachesItsRoute() async throws {
        let request = try await Poll(nil, posting: "hello")
        let answer = try #require(try await request.answer())
        #expect(answer.head.status == .created && answer.body == #"{"echo":"hello"}"#)
        #expect(request.ending.keepAlive.withLock { $0 } == true)
    }

    @Test func anOpenEndedAnswerIsWrittenAsItComesThenTheConnectionCloses() async throws {
        let poll = try await Poll(nil, openEnded: true)
        var parts: [HTTPServerResponsePart] = []
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while parts.count < 4, ContinuousClock.now < deadline {
            guard let part = try await poll.channel.readOutbound(as: HTTPServerResponsePart.self) else {
                try await Task.sleep(for: .milliseconds(5))
                continue
            }
            parts.append(part)
        }
        guard case .head(let head) = parts.first else {
            Issue.record("no head first: \(parts)")
            return
        }
        #expect(head.headers["connection"] == ["close"] && head.headers["content-length"].isEmpty)
        #expect(
            Array(parts.dropFirst()) == [
                .body(.byteBuffer(ByteBuffer(string: "a"))), .body(.byteBuffer(ByteBuffer(string: "b"))), .end(nil),
            ]
        )
        try await poll.channel.closeFuture.get()
        #expect(poll.ending.keepAlive.withLock { $0 } == false)
    }

    @Test func aPollStoppedByItsClosedConnectionLeavesTheHub() async throws {
        let orders = try await Orders()
        let poll = try await orders.poll()
        try await poll.channel.eventLoop.submit {
            let host = try poll.channel.pipeline.syncOperations.handler(type: Host.self)
            host.poll?.stop()
        }.get()
        #expect(!orders.hub.isFollowed(orders.name))
    }
}

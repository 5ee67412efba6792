import Foundation
import HTTPTypes
import HeraldCore
import HeraldHub
import HeraldSQLite
import HeraldStore
import Hummingbird
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Synchronization
import Testing

@testable import HeraldHTTP

/// A stream served on its event loop follows the rules ``ChannelFollower``'s tests hold the
/// async path to: the backlog, then live events in order; a lost position announced by a
/// reset; a batch out of order restored without a store read; a new epoch announced; and a
/// client that stops reading cut (or, on a check's channel, caught up once it reads again).
@Suite(.timeLimit(.minutes(1))) struct StreamConnectionTests {
    /// Answers every request with the stream `plan`, as a stream route does.
    private struct PlanResponder: HTTPResponder {
        typealias Context = HeraldRequestContext
        let plan: StreamPlan
        func respond(to request: Request, context: HeraldRequestContext) async throws -> Response {
            StreamTakeover.current?.plan = plan
            return Response(status: .ok, headers: plan.framing.format.headers)
        }
    }

    /// A connection whose first request was routed to `plan`, served by a ``StreamConnection``.
    private struct Connection {
        let channel: NIOAsyncTestingChannel
        var body = ""
        var ended = false

        init(_ plan: StreamPlan, writable: Bool = true) async throws {
            channel = NIOAsyncTestingChannel()
            try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
            channel.isWritable = writable
            let head = HTTPRequest(method: .get, scheme: "http", authority: "herald", path: "/api/v1/channels/c/events")
            try await channel.eventLoop.submit { [channel] in
                try channel.pipeline.syncOperations.addHandler(
                    StreamConnection(
                        request: head,
                        version: .http1_1,
                        responder: PlanResponder(plan: plan),
                        logger: Logger(label: "test")
                    )
                )
            }.get()
        }

        /// Waits until the stream's first store read is handled and it follows `channel` live.
        mutating func catchUp(_ log: CountingLog, _ hub: Hub, _ name: ChannelName) async throws {
            try await read { _ in log.reads.withLock { $0 } == 1 && hub.isFollowed(name) }
            await channel.testingEventLoop.run()
        }

        /// Stops reading, publishes `count` events on the loop, one by one.
        func publishUnread(_ count: Int, type: String, _ log: CountingLog, _ hub: Hub, _ name: ChannelName) async throws
        {
            channel.isWritable = false
            for _ in 1...count {
                let event = try await log.append(type: type, data: "{}", to: name, at: .now())
                try await channel.eventLoop.submit { hub.publish(event) }.get()
            }
        }

        /// SSE ids (`epoch:offset` → offset) and markers (`reset`), in the order written.
        var seen: [String] {
            body.components(separatedBy: "\n\n").compactMap { message in
                if message.contains("event: herald.reset") { return "reset" }
                if message.contains("event: herald.expired") { return "expired" }
                guard let id = message.split(separator: "\n").first(where: { $0.hasPrefix("id: ") }) else { return nil }
                return String(id.split(separator: ":").last!)
            }
        }

        /// Reads what the handler wrote until `done` holds (5 s at most).
        mutating func read(until done: (Connection) -> Bool) async throws {
            let deadline = ContinuousClock.now.advanced(by: .seconds(5))
            while !done(self) {
                guard ContinuousClock.now < deadline else {
                    Issue.record("timed out; seen \(seen), ended \(ended)")
                    return
                }
                guard let part = try await channel.readOutbound(as: HTTPServerResponsePart.self) else {
                    try await Task.sleep(for: .milliseconds(5))
                    continue
                }
                switch part {
                case .head(let head): #expect(head.headers["connection"] == ["close"])
                case .body(.byteBuffer(let bytes)): body += String(buffer: bytes)
                case .body(let other): Issue.record("a body part that is not a buffer: \(other)")
                case .end: ended = true
                }
            }
        }
    }

    private static func plan(
        _ channel: ChannelName,
        after position: Offset?,
        store: any ChannelLog,
        hub: Hub,
        pageSize: Int = 100
    ) -> StreamPlan {
        StreamPlan(
            framing: StreamFraming(format: .sse, announces: false, tag: nil),
            channel: channel,
            position: position,
            epoch: nil,
            heartbeat: .seconds(60),
            expiry: nil,
            store: store,
            hub: hub,
            pageSize: pageSize
        )
    }

    @Test func theBacklogComesPageByPageThenLiveEvents() async throws {
        let store = try makeStore()
        let hub = Hub()
        let channel = ChannelName("orders")!
        for _ in 1...5 { _ = try await store.append(type: "t", data: "1", to: channel, at: .now()) }
        var connection = try await Connection(Self.plan(channel, after: 1, store: store, hub: hub, pageSize: 2))
        try await connection.read { $0.seen.count == 4 }
        hub.publish(try await store.append(type: "t", data: "1", to: channel, at: .now()))
        try await connection.read { $0.seen.count == 5 }
        #expect(connection.seen == ["2", "3", "4", "5", "6"])
        #expect(hub.subscriberCount == 1)
        try await connection.channel.close()
        #expect(hub.subscriberCount == 0)
    }

    @Test func eventsTrimmedWhileAReaderPagesAreAnnounced() async throws {
        let store = try makeStore(maxEvents: 5)
        let channel = ChannelName("orders")!
        for _ in 1...5 { _ = try await store.append(type: "t", data: "1", to: channel, at: .now()) }
        // Right after the first page is read, ten more events trim 1...10.
        let log = CountingLog(store) { count in
            guard count == 1 else { return }
            for _ in 1...10 { _ = try await store.append(type: "t", data: "1", to: channel, at: .now()) }
        }
        var connection = try await Connection(Self.plan(channel, after: 0, store: log, hub: Hub(), pageSize: 2))
        try await connection.read { $0.seen.last == "15" }
        #expect(connection.seen == ["1", "2", "reset", "11", "12", "13", "14", "15"])
    }

    @Test func eventsAnnouncedOutOfOrderInOneBatchAreReorderedWithoutAStoreRead() async throws {
        let log = CountingLog(try makeStore())
        let hub = Hub()
        let channel = ChannelName("orders")!
        var connection = try await Connection(Self.plan(channel, after: 0, store: log, hub: hub))
        try await connection.catchUp(log, hub, channel)
        let first = try await log.append(type: "t", data: "1", to: channel, at: .now())
        let second = try await log.append(type: "t", data: "2", to: channel, at: .now())
        // Two publishers commit 1 and 2, and 2 is announced first: one batch for the loop.
        try await connection.channel.eventLoop.submit {
            hub.publish(second)
            hub.publish(first)
        }.get()
        try await connection.read { $0.seen.count == 2 }
        #expect(connection.seen == ["1", "2"])
        #expect(log.reads.withLock { $0 } == 1)  // the start's; no hole was read from the store
    }

    @Test func aLiveEventOfANewEpochIsAnnouncedNotDropped() async throws {
        let store = try makeStore()
        let hub = Hub()
        let channel = ChannelName("quiet")!
        for _ in 1...3 { hub.publish(try await store.append(type: "t", data: "1", to: channel, at: .now())) }
        let log = CountingLog(store)
        var connection = try await Connection(Self.plan(channel, after: 3, store: log, hub: hub))
        try await connection.read { _ in log.reads.withLock { $0 } == 1 }
        await connection.channel.testingEventLoop.run()
        // Caught up: the janitor drops the quiet channel, and its next event starts a new epoch.
        let later = Timestamp(millisecondsSince1970: Timestamp.now().millisecondsSince1970 + 100_000_000)
        _ = try await store.prune(now: later)
        hub.publish(try await store.append(type: "t", data: "1", to: channel, at: .now()))
        try await connection.read { $0.seen.count == 2 }
        #expect(connection.seen == ["reset", "1"])
    }

    @Test func aClientThatStopsReadingIsCutWithItsPosition() async throws {
        let store = try makeStore()
        let hub = Hub(limits: .init(maxQueuedEvents: 3, maxQueuedBytes: 1 << 20))
        let channel = ChannelName("orders")!
        let log = CountingLog(store)
        var connection = try await Connection(Self.plan(channel, after: 0, store: log, hub: hub))
        try await connection.catchUp(log, hub, channel)
        try await connection.publishUnread(4, type: "t", log, hub, channel)
        try await connection.read { $0.ended }
        #expect(connection.seen == ["1", "2", "3"])  // the fourth passed the bound: the stream ends
        #expect(hub.subscriberCount == 0)
    }

    @Test func aCheckStreamThatStopsReadingCatchesUpWhenItReadsAgain() async throws {
        let store = try makeStore()
        let hub = Hub(limits: .init(maxQueuedEvents: 2, maxQueuedBytes: 1 << 20))
        let channel = ChannelName("check:chk_1")!
        let log = CountingLog(store)
        var connection = try await Connection(Self.plan(channel, after: 0, store: log, hub: hub))
        try await connection.catchUp(log, hub, channel)
        try await connection.publishUnread(5, type: "check.updated", log, hub, channel)
        try await connection.read { $0.seen.count == 2 }
        #expect(log.reads.withLock { $0 } == 1)
        connection.channel.isWritable = true
        connection.channel.pipeline.fireChannelWritabilityChanged()
        try await connection.read { $0.seen.count == 5 }
        #expect(connection.seen == ["1", "2", "3", "4", "5"])  // 3...5 from the store
        #expect(!connection.ended)
    }

    @Test func aClientThatDoesNotReadMakesNoFurtherStoreReads() async throws {
        let store = try makeStore()
        let channel = ChannelName("orders")!
        for _ in 1...6 { _ = try await store.append(type: "t", data: "1", to: channel, at: .now()) }
        let log = CountingLog(store)
        var connection = try await Connection(
            Self.plan(channel, after: 0, store: log, hub: Hub(), pageSize: 2),
            writable: false
        )
        try await connection.read { $0.seen.count == 2 }
        try await Task.sleep(for: .milliseconds(100))
        await connection.channel.testingEventLoop.run()
        #expect(log.reads.withLock { $0 } == 1)  // the next page waits for the client
        connection.channel.isWritable = true
        connection.channel.pipeline.fireChannelWritabilityChanged()
        try await connection.read { $0.seen.count == 6 }
        #expect(connection.seen == ["1", "2", "3", "4", "5", "6"])
    }

    @Test func eventsDroppedFromAFullLoopInboxAreReadFromTheStore() async throws {
        let hub = Hub(loopInbox: 4)
        let channel = ChannelName("orders")!
        let log = CountingLog(try makeStore())
        var connection = try await Connection(Self.plan(channel, after: 0, store: log, hub: hub))
        try await connection.catchUp(log, hub, channel)
        var events: [Event] = []
        for _ in 1...5 { events.append(try await log.append(type: "t", data: "1", to: channel, at: .now())) }
        // Five announcements before the loop runs: the fifth finds the inbox full, and all are dropped.
        try await connection.channel.eventLoop.submit { [events] in
            for event in events { hub.publish(event) }
        }.get()
        try await connection.read { $0.seen.count == 5 }
        #expect(connection.seen == ["1", "2", "3", "4", "5"])
        #expect(log.reads.withLock { $0 } == 2)  // the start's, and the one after the drop
    }

    @Test func anAnswerThatIsNotAStreamIsWrittenAndTheConnectionCloses() async throws {
        struct NotFound: HTTPResponder {
            typealias Context = HeraldRequestContext
            func respond(to request: Request, context: HeraldRequestContext) async throws -> Response {
                Response(status: .notFound, body: .init(byteBuffer: ByteBuffer(string: "gone")))
            }
        }
        let channel = NIOAsyncTestingChannel()
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        let request = HTTPRequest(method: .get, scheme: "http", authority: "h", path: "/x")
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(
                StreamConnection(
                    request: request,
                    version: .http1_1,
                    responder: NotFound(),
                    logger: Logger(label: "test")
                )
            )
        }.get()
        let head = try await channel.waitForOutboundWrite(as: HTTPServerResponsePart.self)
        guard case .head(let response) = head else {
            Issue.record("no head first: \(head)")
            return
        }
        #expect(response.status == .notFound)
        #expect(response.headers["connection"] == ["close"])
        #expect(
            try await channel.waitForOutboundWrite(as: HTTPServerResponsePart.self)
                == .body(.byteBuffer(ByteBuffer(string: "gone")))
        )
        #expect(try await channel.waitForOutboundWrite(as: HTTPServerResponsePart.self) == .end(nil))
        try await channel.closeFuture.get()
    }

    /// Through NIO's HTTP/1 encoder: events go below it as shared, already framed chunks, which
    /// must add up to a valid chunked body; an HTTP/1.0 client gets its body unframed.
    @Test(arguments: [
        (HTTPVersion.http1_1, "HTTP/1.1 200 OK", true),
        (HTTPVersion(major: 2, minor: 0), "HTTP/1.1 200 OK", true),
        (HTTPVersion.http1_0, "HTTP/1.0 200 OK", false),
    ])
    func theEncoderFramesWhatTheStreamWrites(version: HTTPVersion, statusLine: String, chunked: Bool) async throws {
        let store = try makeStore()
        let hub = Hub()
        let channel = ChannelName("orders")!
        _ = try await store.append(type: "t", data: "1", to: channel, at: .now())
        let plan = Self.plan(channel, after: 0, store: store, hub: hub)
        let connection = NIOAsyncTestingChannel()
        try await connection.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        let head = HTTPRequest(method: .get, scheme: "http", authority: "herald", path: "/api/v1/channels/c/events")
        try await connection.eventLoop.submit {
            try connection.pipeline.syncOperations.addHandler(HTTPResponseEncoder())
            try connection.pipeline.syncOperations.addHandler(
                StreamConnection(
                    request: head,
                    version: version,
                    responder: PlanResponder(plan: plan),
                    logger: Logger(label: "test")
                )
            )
        }.get()
        var wire = ""
        func read(until done: (String) -> Bool) async throws {
            let deadline = ContinuousClock.now.advanced(by: .seconds(5))
            while !done(wire), ContinuousClock.now < deadline {
                if case .byteBuffer(let bytes)? = try await connection.readOutbound(as: IOData.self) {
                    wire += String(buffer: bytes)
                } else {
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
        }
        try await read { $0.contains(":1\nevent: t") }
        hub.publish(try await store.append(type: "t", data: "2", to: channel, at: .now()))
        try await read { $0.contains(":2\nevent: t") }
        let parts = wire.components(separatedBy: "\r\n\r\n")
        #expect(parts[0].hasPrefix(statusLine))
        #expect(parts[0].lowercased().contains("transfer-encoding: chunked") == chunked)
        let body = parts.dropFirst().joined(separator: "\r\n\r\n")
        let decoded = chunked ? try #require(Self.dechunk(body)) : body
        #expect(decoded.hasPrefix("retry: 2000\n\n"))
        #expect(decoded.components(separatedBy: "event: t\n").count == 3)
    }

    /// The data of a chunked body read so far (complete chunks only); `nil` if it is not one.
    private static func dechunk(_ body: String) -> String? {
        var bytes = Substring(body)
        var data = ""
        while let end = bytes.range(of: "\r\n") {
            guard let size = Int(bytes[..<end.lowerBound], radix: 16) else { return nil }
            let start = end.upperBound
            guard let stop = bytes.utf8.index(start, offsetBy: size, limitedBy: bytes.endIndex),
                bytes[stop...].hasPrefix("\r\n")
            else { return nil }
            data += bytes[start..<stop]
            bytes = bytes[bytes.utf8.index(stop, offsetBy: 2)...]
        }
        return bytes.isEmpty ? data : nil
    }
}

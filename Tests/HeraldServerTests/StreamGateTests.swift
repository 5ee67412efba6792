import HTTPTypes
import HeraldHTTP
import Hummingbird
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@testable import HeraldServer

/// What ``StreamGate`` serves itself and what it passes on to Hummingbird: a request of the API
/// whose body came with its head's bytes is routed on the loop and answered there; one whose
/// body is still arriving, one outside the API, and what follows either, pass on as they came.
@Suite(.timeLimit(.minutes(1))) struct StreamGateTests {
    /// What reaches the handlers after the gate (Hummingbird's, on a real connection).
    private final class Downstream: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        var parts: [HTTPServerRequestPart] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            parts.append(unwrapInboundIn(data))
        }
    }

    /// Counts the reads the gate lets through to the socket.
    private final class Reads: ChannelOutboundHandler, @unchecked Sendable {
        typealias OutboundIn = Never
        var count = 0

        func read(context: ChannelHandlerContext) {
            count += 1
            context.read()
        }
    }

    /// Holds the answers of `GET /api/v1/slow` until opened.
    private final class Latch: Sendable {
        private let stream: AsyncStream<Void>
        private let continuation: AsyncStream<Void>.Continuation
        init() { (stream, continuation) = AsyncStream.makeStream() }
        func open() { continuation.finish() }
        func wait() async { for await _ in stream {} }
    }

    private struct Connection {
        let channel = NIOAsyncTestingChannel()
        let downstream = Downstream()
        let reads = Reads()
        let slow = Latch()

        init() async throws {
            let router = Router(context: HeraldRequestContext.self)
            router.post("/api/v1/echo") { request, _ -> Response in
                let body = try await request.body.collect(upTo: 1024)
                return Response(status: .created, body: .init(byteBuffer: body))
            }
            router.get("/api/v1/slow") { [slow] _, _ -> Response in
                await slow.wait()
                return Response(status: .ok)
            }
            let streams = LoopStreams(
                responder: StreamHeadResponder(router.buildResponder()),
                idleTimeout: .seconds(30)
            )
            let limits = HTTP1ShieldLimits(
                headTimeout: .seconds(30),
                minBodyBytesPerWindow: 1,
                maxBodyBytes: 1024,
                maxHeaderFieldSize: 8192
            )
            try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
            try await channel.eventLoop.submit { [channel, downstream, reads] in
                let shield = HTTP1Shield(limits: limits, served: channel.eventLoop.makePromise())
                try channel.pipeline.syncOperations.addHandlers(
                    reads,
                    StreamGate(streams: streams, shield: shield, idleTimeout: .seconds(30), logger: Logger(label: "t")),
                    downstream,
                    shield
                )
            }.get()
        }

        /// Delivers `parts` as the decoder does for one read: each part, then the read's end.
        func read(_ parts: HTTPServerRequestPart...) async throws {
            try await channel.eventLoop.submit { [channel] in
                for part in parts { channel.pipeline.fireChannelRead(part) }
                channel.pipeline.fireChannelReadComplete()
            }.get()
        }

        /// Asks for a read, as NIO does after each; how many reached the socket so far.
        func askToRead() async throws -> Int {
            try await channel.eventLoop.submit { [channel, reads] in
                channel.read()
                return reads.count
            }.get()
        }

        var passedOn: [HTTPServerRequestPart] {
            get async throws { try await channel.eventLoop.submit { [downstream] in downstream.parts }.get() }
        }

        /// The answer the gate wrote (5 s at most): status and body.
        func answer() async throws -> (HTTPResponseStatus, String)? {
            let deadline = ContinuousClock.now.advanced(by: .seconds(5))
            var status: HTTPResponseStatus?
            var body = ""
            while ContinuousClock.now < deadline {
                guard let part = try await channel.readOutbound(as: HTTPServerResponsePart.self) else {
                    try await Task.sleep(for: .milliseconds(5))
                    continue
                }
                switch part {
                case .head(let head): status = head.status
                case .body(.byteBuffer(let bytes)): body += String(buffer: bytes)
                case .body: Issue.record("a body part that is not a buffer")
                case .end: return status.map { ($0, body) }
                }
            }
            return nil
        }
    }

    private static func head(_ method: HTTPMethod, _ uri: String, length: Int? = nil) -> HTTPServerRequestPart {
        var headers = HTTPHeaders([("host", "herald")])
        if let length { headers.add(name: "content-length", value: "\(length)") }
        return .head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers))
    }

    @Test func aPublishWhoseBodyCameWithItsHeadIsAnsweredOnTheLoop() async throws {
        let connection = try await Connection()
        try await connection.read(
            Self.head(.POST, "/api/v1/echo", length: 5),
            .body(ByteBuffer(string: "hello")),
            .end(nil)
        )
        let answer = try #require(try await connection.answer())
        #expect(answer.0 == .created && answer.1 == "hello")
        #expect(try await connection.passedOn.isEmpty)
        // The next request on the connection is the gate's too.
        try await connection.read(
            Self.head(.POST, "/api/v1/echo", length: 2),
            .body(ByteBuffer(string: "hi")),
            .end(nil)
        )
        let next = try #require(try await connection.answer())
        #expect(next.0 == .created && next.1 == "hi")
        #expect(try await connection.passedOn.isEmpty)
    }

    @Test func aBodyStillArrivingPassesOnWithWhatCameAndTheRest() async throws {
        let connection = try await Connection()
        try await connection.read(Self.head(.POST, "/api/v1/echo", length: 5), .body(ByteBuffer(string: "he")))
        try await connection.read(.body(ByteBuffer(string: "llo")), .end(nil))
        #expect(
            try await connection.passedOn == [
                Self.head(.POST, "/api/v1/echo", length: 5), .body(ByteBuffer(string: "he")),
                .body(ByteBuffer(string: "llo")), .end(nil),
            ]
        )
        #expect(try await connection.channel.readOutbound(as: HTTPServerResponsePart.self) == nil)
    }

    @Test func aRequestOutsideTheAPIPassesOn() async throws {
        let connection = try await Connection()
        try await connection.read(Self.head(.GET, "/healthz"), .end(nil))
        #expect(try await connection.passedOn == [Self.head(.GET, "/healthz"), .end(nil)])
    }

    @Test func whileARequestIsAnsweredTheGateReadsOnUntilANextRequestCame() async throws {
        let connection = try await Connection()
        try await connection.read(Self.head(.GET, "/api/v1/slow"), .end(nil))
        let before = try await connection.askToRead()
        // Nothing pipelined yet: the read goes through (a client that leaves is seen).
        #expect(try await connection.askToRead() == before + 1)
        try await connection.read(
            Self.head(.POST, "/api/v1/echo", length: 2),
            .body(ByteBuffer(string: "hi")),
            .end(nil)
        )
        // A next request came: it waits its turn, and reading stops until then.
        #expect(try await connection.askToRead() == before + 1)
        connection.slow.open()
        let first = try #require(try await connection.answer())
        #expect(first.0 == .ok)
        let next = try #require(try await connection.answer())
        #expect(next.0 == .created && next.1 == "hi")
        #expect(try await connection.askToRead() >= before + 2)  // the read held back went on
    }

    @Test func aConnectionClosesOnceIdleForTheTimeoutSinceItsLastAnswer() async throws {
        let connection = try await Connection()
        let loop = connection.channel.testingEventLoop
        for _ in 1...2 {
            try await connection.read(
                Self.head(.POST, "/api/v1/echo", length: 2),
                .body(ByteBuffer(string: "hi")),
                .end(nil)
            )
            _ = try #require(try await connection.answer())
            await loop.advanceTime(by: .seconds(20))
        }
        // 40 s since the first answer, 20 since the last: still open.
        #expect(try await connection.channel.eventLoop.submit { connection.channel.isActive }.get())
        await loop.advanceTime(by: .seconds(11))
        try await connection.channel.closeFuture.get()
    }
}

import CompressNIO
import Foundation
import HTTPTypes
import HeraldAccess
import HeraldCore
import HeraldHTTP
import HeraldHub
import HeraldNet
import HeraldRunner
import HeraldSQLite
import HeraldStore
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import Synchronization
import Testing

@testable import HeraldWebSocket

/// A WebSocket connection served on its event loop does what a WebSocket library did for it:
/// fragments reassembled, permessage-deflate both ways, protocol errors closed with their codes,
/// pings answered and sent, ops answered in order, events written as their shared frames.
@Suite(.timeLimit(.minutes(1))) struct WebSocketConnectionTests {
    /// A server frame as the client reads it.
    struct Frame {
        let opcode: UInt8
        let compressed: Bool
        let payload: ByteBuffer
        var text: String { String(buffer: payload) }
        var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
        }
        var closeCode: UInt16? { opcode == 0x8 ? payload.getInteger(at: payload.readerIndex) : nil }
    }

    /// An endpoint over a fresh store, and a connection of it on a testing channel.
    struct Connection {
        let channel = NIOAsyncTestingChannel()
        let endpoint: WebSocketEndpoint
        let hub: Hub
        let events: EventLog
        let store: SQLiteStore
        private var unread = ByteBuffer()

        /// - Parameters:
        ///   - readGate: store reads of subscriptions wait until it is open.
        ///   - before: a handler put before the frame encoder (where the HTTP handlers were).
        ///   - upgraded: whether NIO's `upgradeComplete` is fired once the handlers are in.
        init(
            deflates: Bool = false,
            heartbeat: Duration = .seconds(30),
            maxMessageBytes: Int = 65_536,
            readGate: Gate? = nil,
            before: (any ChannelHandler & Sendable)? = nil,
            upgraded: Bool = true,
            draining: Bool = false
        ) async throws {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-ws-\(UUID())")
            let store = try SQLiteStore(directory: directory, retention: .init())
            self.store = store
            hub = Hub()
            events = EventLog(store: store, broker: LocalBroker(hub: hub))
            let runner = CheckRunner(
                events: events,
                resolver: TargetResolver(allowPrivateTargets: false),
                configuration: .init()
            )
            let log: any ChannelLog = readGate.map { GatedLog(store: store, gate: $0) } ?? store
            endpoint = WebSocketEndpoint(
                follower: ChannelFollower(store: log, hub: hub, pageSize: 100, heartbeat: heartbeat),
                checks: CheckService(
                    events: events,
                    runner: runner,
                    resolver: TargetResolver(allowPrivateTargets: false)
                ),
                events: events,
                access: Access(keys: ServerKeys(list: "0123456789abcdef")!),
                configuration: WebSocketConfiguration(maxMessageBytes: maxMessageBytes),
                logger: Logger(label: "test")
            )
            if draining { endpoint.loops.drain() }
            try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
            try await channel.eventLoop.submit { [channel, endpoint] in
                if let before { try channel.pipeline.syncOperations.addHandler(before) }
                try channel.pipeline.syncOperations.addHandler(WebSocketFrameEncoder())
                try channel.pipeline.syncOperations.addHandler(
                    endpoint.handler(bearer: nil, address: nil, deflates: deflates)
                )
            }.get()
            if upgraded { try await upgrade() }
        }

        /// What NIO's upgrade handler fires once the HTTP handlers are gone.
        func upgrade() async throws {
            let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/api/v1/ws")
            try await channel.eventLoop.submit { [channel] in
                channel.pipeline.fireUserInboundEventTriggered(
                    HTTPServerUpgradeEvents.upgradeComplete(toProtocol: "websocket", upgradeRequest: head)
                )
            }.get()
        }

        func send(_ opcode: WebSocketOpcode, _ text: String, fin: Bool = true, rsv1: Bool = false) async throws {
            try await send(opcode, ByteBuffer(string: text), fin: fin, rsv1: rsv1)
        }

        func send(_ opcode: WebSocketOpcode, _ data: ByteBuffer, fin: Bool = true, rsv1: Bool = false) async throws {
            try await channel.writeInbound(Self.frame(opcode, data, fin: fin, rsv1: rsv1))
        }

        /// A client's frame: masked, as a client must mask (RFC 6455 section 5.1), unless not.
        static func frame(
            _ opcode: WebSocketOpcode,
            _ data: ByteBuffer,
            fin: Bool = true,
            rsv1: Bool = false,
            rsv2: Bool = false,
            masked: Bool = true
        ) -> WebSocketFrame {
            let key: WebSocketMaskingKey? = masked ? [1, 2, 3, 4] : nil
            var data = data
            if let key { data.webSocketMask(key) }
            return WebSocketFrame(fin: fin, rsv1: rsv1, rsv2: rsv2, opcode: opcode, maskKey: key, data: data)
        }

        /// The next frame the server wrote (5 s at most).
        mutating func next() async throws -> Frame? {
            let deadline = ContinuousClock.now.advanced(by: .seconds(5))
            while ContinuousClock.now < deadline {
                if let frame = Self.parse(&unread) { return frame }
                if var bytes = try await channel.readOutbound(as: ByteBuffer.self) {
                    unread.writeBuffer(&bytes)
                } else {
                    try await Task.sleep(for: .milliseconds(5))
                }
            }
            return nil
        }

        /// The next frame, inflated if compressed, as JSON.
        mutating func nextOp() async throws -> [String: Any] {
            let frame = try #require(try await next())
            guard frame.compressed else { return frame.json }
            return Frame(opcode: frame.opcode, compressed: false, payload: try Self.inflate(frame.payload)).json
        }

        static func parse(_ buffer: inout ByteBuffer) -> Frame? {
            var copy = buffer
            guard let first = copy.readInteger(as: UInt8.self), let second = copy.readInteger(as: UInt8.self) else {
                return nil
            }
            var length = Int(second & 0x7F)
            if length == 126 {
                guard let value = copy.readInteger(as: UInt16.self) else { return nil }
                length = Int(value)
            } else if length == 127 {
                guard let value = copy.readInteger(as: UInt64.self) else { return nil }
                length = Int(value)
            }
            guard let payload = copy.readSlice(length: length) else { return nil }
            buffer = copy
            return Frame(opcode: first & 0x0F, compressed: first & 0x40 != 0, payload: payload)
        }

        static func deflate(_ text: String) throws -> ByteBuffer {
            let compressor = try ZlibCompressor(algorithm: .deflate)
            var input = ByteBuffer(string: text)
            var output = try input.compressStream(with: compressor, flush: .sync)
            output.moveWriterIndex(to: output.writerIndex - 4)
            return output
        }

        static func inflate(_ payload: ByteBuffer) throws -> ByteBuffer {
            let decompressor = try ZlibDecompressor(algorithm: .deflate)
            var input = payload
            input.writeBytes([0, 0, 0xFF, 0xFF])
            return try input.decompressStream(with: decompressor)
        }
    }

    @Test func aFragmentedMessageIsReassembledAndAnswered() async throws {
        var connection = try await Connection()
        try await connection.send(.text, #"{"op": "ping", "#, fin: false)
        try await connection.send(.continuation, #""id": "#, fin: false)
        try await connection.send(.continuation, #"7}"#)
        let answer = try await connection.nextOp()
        #expect(answer["op"] as? String == "pong" && answer["id"] as? Int == 7)
    }

    @Test func deflatedMessagesAreInflatedAndLargeAnswersCompressed() async throws {
        var connection = try await Connection(deflates: true)
        let id = String(repeating: "x", count: 1000)
        var compressed = try Connection.deflate(#"{"op": "ping", "id": "\#(id)"}"#)
        let first = compressed.readSlice(length: compressed.readableBytes / 2)!
        try await connection.send(.text, first, fin: false, rsv1: true)
        try await connection.send(.continuation, compressed)
        let frame = try #require(try await connection.next())
        #expect(frame.compressed)  // over 256 bytes
        let answer = Frame(opcode: 1, compressed: false, payload: try Connection.inflate(frame.payload)).json
        #expect(answer["op"] as? String == "pong" && answer["id"] as? String == id)
        // A small answer goes out as it is.
        try await connection.send(.text, #"{"op": "ping", "id": 1}"#)
        #expect(try await connection.next()?.compressed == false)
    }

    @Test(arguments: [
        ("compressed without deflate", 1002),
        ("a continuation with no message", 1002),
        ("a reserved bit", 1002),
        ("invalid UTF-8", 1007),
        ("corrupt compressed data", 1007),
        ("fragments over the limit", 1009),
        ("an unmasked frame", 1002),
    ])
    func aProtocolErrorClosesWithItsCode(_ error: String, _ code: Int) async throws {
        var connection = try await Connection(deflates: error.hasPrefix("corrupt"), maxMessageBytes: 100)
        switch error {
        case "compressed without deflate": try await connection.send(.text, "{}", rsv1: true)
        case "a continuation with no message": try await connection.send(.continuation, "{}")
        case "a reserved bit":
            try await connection.channel.writeInbound(Connection.frame(.text, ByteBuffer(string: "{}"), rsv2: true))
        case "an unmasked frame":
            try await connection.channel.writeInbound(
                Connection.frame(.text, ByteBuffer(string: #"{"op": "ping"}"#), masked: false)
            )
        case "invalid UTF-8": try await connection.send(.text, ByteBuffer(bytes: [0x22, 0xFF, 0xFE, 0x22]))
        case "corrupt compressed data":
            try await connection.send(.text, ByteBuffer(bytes: [0xFF, 0xFF, 0xFF]), rsv1: true)
        default:
            try await connection.send(.text, String(repeating: "x", count: 60), fin: false)
            try await connection.send(.continuation, String(repeating: "x", count: 60))
        }
        let frame = try #require(try await connection.next())
        #expect(frame.closeCode == UInt16(code))
    }

    @Test(arguments: [
        (NIOWebSocketError.invalidFrameLength, UInt16(1009)), (.multiByteControlFrameLength, 1002),
        (.fragmentedControlFrame, 1002),
    ])
    func aFrameTheDecoderCannotReadClosesWithItsCodeAndWithoutWaiting(
        _ error: NIOWebSocketError,
        _ code: UInt16
    ) async throws {
        var connection = try await Connection()
        connection.channel.pipeline.fireErrorCaught(error)
        let frame = try #require(try await connection.next())
        #expect(frame.closeCode == code)
        // The decoder reads nothing more, so no close from the client can come: closed at once.
        let channel = connection.channel
        #expect(try await channel.eventLoop.submit { channel.isActive }.get() == false)
    }

    @Test func aBinaryMessageIsAnsweredWithAnErrorNotAClose() async throws {
        var connection = try await Connection()
        try await connection.send(.binary, "{}")
        let answer = try await connection.nextOp()
        #expect(answer["op"] as? String == "error" && answer["code"] as? String == "malformed")
    }

    @Test func pingsAreAnsweredAndACloseIsEchoedThenTheConnectionEnds() async throws {
        var connection = try await Connection()
        try await connection.send(.ping, "hello")
        let pong = try #require(try await connection.next())
        #expect(pong.opcode == 0xA && pong.text == "hello")
        var code = ByteBuffer()
        code.writeInteger(UInt16(1000))
        try await connection.send(.connectionClose, code)
        #expect(try await connection.next()?.closeCode == 1000)
        try await connection.channel.closeFuture.get()
    }

    @Test func aSilentConnectionIsPingedThenClosed() async throws {
        var connection = try await Connection(heartbeat: .seconds(1))
        await connection.channel.testingEventLoop.advanceTime(by: .seconds(1))
        #expect(try await connection.next()?.opcode == 0x9)
        try await connection.send(.pong, "")  // heard: pinged again, not closed
        await connection.channel.testingEventLoop.advanceTime(by: .seconds(1))
        #expect(try await connection.next()?.opcode == 0x9)
        await connection.channel.testingEventLoop.advanceTime(by: .seconds(1))
        #expect(try await connection.next()?.closeCode == 1001)
    }

    @Test func shutdownClosesWith1012() async throws {
        var connection = try await Connection()
        connection.endpoint.loops.drain()
        #expect(try await connection.next()?.closeCode == 1012)
    }

    @Test func anUpgradeDuringShutdownIsRefusedWith503() async throws {
        let connection = try await Connection()
        let request = HTTPRequest(method: .get, scheme: "http", authority: "herald", path: "/api/v1/ws")
        #expect(connection.endpoint.refusal(for: request) == nil)
        connection.endpoint.loops.drain()
        let refusal = try #require(connection.endpoint.refusal(for: request))
        #expect(refusal.status == .serviceUnavailable && refusal.headers[.retryAfter] == "1")
    }

    @Test func opsAreAnsweredInOrderWhileOneWaitsForIO() async throws {
        var connection = try await Connection()
        // `auth` is checked off the loop; the ping read right after it waits for its answer.
        try await connection.channel.eventLoop.submit { [channel = connection.channel] in
            for text in [#"{"op": "auth", "token": "not-a-token", "id": 1}"#, #"{"op": "ping", "id": 2}"#] {
                channel.pipeline.fireChannelRead(Connection.frame(.text, ByteBuffer(string: text)))
            }
        }.get()
        let first = try await connection.nextOp()
        let second = try await connection.nextOp()
        #expect(first["id"] as? Int == 1 && first["op"] as? String == "error")
        #expect(second["id"] as? Int == 2 && second["op"] as? String == "pong")
    }

    @Test func aSubscriptionGetsEachEventAsItsSharedFrame() async throws {
        var connection = try await Connection()
        let channel = ChannelName("orders")!
        try await connection.send(.text, #"{"op": "subscribe", "channel": "orders", "id": "s"}"#)
        let subscribed = try await connection.nextOp()
        #expect(subscribed["op"] as? String == "subscribed" && subscribed["id"] as? String == "s")
        let event = try await connection.events.publish(type: "t", data: .int(1), to: channel)
        let frame = try #require(try await connection.next())
        #expect(WebSocketWire.frame(.text, frame.payload) == EncodedEvent(event).webSocketFrame)
        try await connection.send(.text, #"{"op": "unsubscribe", "channel": "orders", "id": "u"}"#)
        #expect(try await connection.nextOp()["op"] as? String == "unsubscribed")
        #expect(!connection.hub.isFollowed(channel))
    }

    @Test func anEventAnnouncedAgainIsSkippedAndWhatFollowsWritten() async throws {
        var connection = try await Connection()
        let channel = ChannelName("orders")!
        try await connection.send(.text, #"{"op": "subscribe", "channel": "orders"}"#)
        #expect(try await connection.nextOp()["op"] as? String == "subscribed")
        let first = try await connection.events.publish(type: "t", data: .int(1), to: channel)
        #expect(try await connection.nextOp()["offset"] as? Int == 1)
        let second = try await connection.store.append(type: "t", data: "2", to: channel, at: .now())
        // One batch: the first again (another node's late announcement), then the next.
        try await connection.channel.eventLoop.submit { [hub = connection.hub] in
            hub.publish(first)
            hub.publish(second)
        }.get()
        #expect(try await connection.nextOp()["offset"] as? Int == 2)
        try await connection.send(.text, #"{"op": "ping", "id": 1}"#)
        #expect(try await connection.nextOp()["op"] as? String == "pong")  // nothing else came before it
    }

    @Test func nothingIsWrittenBeforeTheUpgradeCompletes() async throws {
        // A shutdown under way closes at once; the HTTP handler still before the encoder (the
        // shield) must not see that frame, which is not HTTP.
        let seen = HTTPOnly()
        var connection = try await Connection(before: seen, upgraded: false, draining: true)
        #expect(seen.frames.withLock { $0 } == 0)
        try await connection.channel.pipeline.removeHandler(seen).get()
        try await connection.upgrade()
        #expect(try await connection.next()?.closeCode == 1012)
    }

    @Test func aClientThatDoesNotReadGetsOnePongForItsLatestPing() async throws {
        var connection = try await Connection()
        connection.channel.isWritable = false
        try await connection.channel.eventLoop.submit { [channel = connection.channel] in
            channel.pipeline.fireChannelWritabilityChanged()
        }.get()
        for payload in ["a", "b", "c"] { try await connection.send(.ping, payload) }
        connection.channel.isWritable = true
        try await connection.channel.eventLoop.submit { [channel = connection.channel] in
            channel.pipeline.fireChannelWritabilityChanged()
        }.get()
        let pong = try #require(try await connection.next())
        #expect(pong.opcode == 0xA && pong.text == "c")
        try await connection.send(.text, #"{"op": "ping", "id": 1}"#)
        #expect(try await connection.nextOp()["op"] as? String == "pong")  // no other pong before it
    }

    @Test(arguments: [(UInt16(1005), 1002), (999, 1002), (2000, 1002), (1000, 1000), (4000, 4000)])
    func aClientCloseIsCheckedThenEchoed(_ code: UInt16, _ answer: Int) async throws {
        var connection = try await Connection()
        var payload = ByteBuffer()
        payload.writeInteger(code)
        try await connection.send(.connectionClose, payload)
        #expect(try await connection.next()?.closeCode == UInt16(answer))
    }

    @Test func anUnsubscribeWaitsForItsFollowersStoreReadBeforeTheNextOp() async throws {
        let gate = Gate()
        var connection = try await Connection(readGate: gate)
        try await connection.send(.text, #"{"op": "subscribe", "channel": "c", "id": "s"}"#)
        try await connection.send(.text, #"{"op": "unsubscribe", "channel": "c", "id": "u"}"#)
        let canceled = try await connection.nextOp()
        #expect(canceled["code"] as? String == "canceled" && canceled["id"] as? String == "s")
        #expect(try await connection.nextOp()["op"] as? String == "unsubscribed")
        try await connection.send(.text, #"{"op": "ping", "id": "p"}"#)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try await connection.channel.readOutbound(as: ByteBuffer.self) == nil)  // the read still runs
        gate.open.withLock { $0 = true }
        #expect(try await connection.nextOp()["op"] as? String == "pong")
    }
}

/// permessage-deflate as Herald negotiates it: no context takeover either way, one window.
@Suite struct SharedDeflateTests {
    @Test func offersAreAcceptedWithoutContextTakeoverOrDeclined() {
        let answer = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        #expect(SharedDeflate.accept([("permessage-deflate", ["client_max_window_bits": nil])]) == answer)
        // An offer naming the server's window is accepted by naming it back (7.1.2.1).
        #expect(
            SharedDeflate.accept([("permessage-deflate", ["server_max_window_bits": "15"])])
                == answer + "; server_max_window_bits=15"
        )
        #expect(SharedDeflate.accept([("permessage-deflate", ["server_max_window_bits": "10"])]) == nil)
        #expect(SharedDeflate.accept([("permessage-deflate", ["unknown": nil])]) == nil)
        #expect(SharedDeflate.accept([("x-webkit-deflate-frame", [:])]) == nil)
        // The first acceptable offer wins.
        #expect(
            SharedDeflate.accept([
                ("permessage-deflate", ["server_max_window_bits": "9"]),
                ("permessage-deflate", ["client_no_context_takeover": nil]),
            ]) == answer
        )
    }

    @Test func anEventIsCompressedOncePerLoop() throws {
        let deflate = SharedDeflate()
        let event = EncodedEvent(
            Event(
                channel: ChannelName("c")!,
                offset: 1,
                epoch: Epoch("e"),
                type: "t",
                time: .now(),
                data: "\"" + String(repeating: "a", count: 500) + "\""
            )
        )
        let first = try deflate.frame(of: event)
        let second = try deflate.frame(of: event)
        #expect(first.readableBytes < event.webSocketFrame.readableBytes)
        first.withUnsafeReadableBytes { a in
            second.withUnsafeReadableBytes { b in #expect(a.baseAddress == b.baseAddress) }  // the same bytes
        }
        var payload = first
        payload.moveReaderIndex(forwardBy: 2)
        #expect(try deflate.inflate(payload, maxSize: 10_000) == event.webSocketPayload)
        #expect(throws: CompressNIOError.self) { try deflate.inflate(payload, maxSize: 100) }
    }
}

/// Store reads that wait until the gate opens.
final class Gate: Sendable {
    let open = Mutex(false)
}

struct GatedLog: ChannelLog {
    let store: SQLiteStore
    let gate: Gate

    func append(type: String, data: String, to channel: ChannelName, at time: Timestamp) async throws -> Event {
        try await store.append(type: type, data: data, to: channel, at: time)
    }

    func events(in channel: ChannelName, after offset: Offset?, epoch: Epoch?, limit: Int) async throws -> EventRead {
        while !gate.open.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
        return try await store.events(in: channel, after: offset, epoch: epoch, limit: limit)
    }
}

/// Stands where the HTTP handlers were before the upgrade: counts what reaches it that is not
/// an HTTP response part.
final class HTTPOnly: ChannelOutboundHandler, RemovableChannelHandler, Sendable {
    typealias OutboundIn = Any
    let frames = Mutex(0)

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        frames.withLock { $0 += 1 }
        context.write(data, promise: promise)
    }
}

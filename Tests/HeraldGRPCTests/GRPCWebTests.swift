import Foundation
import GRPCCore
import HeraldCore
import NIOCore
import SwiftProtobuf
import Synchronization
import Testing

@testable import HeraldGRPC

@Suite struct GRPCWebFramingTests {
    @Test func framesAreReadBackAndTrailerFramesSkipped() throws {
        let first = GRPCWebTransport.frame(flags: 0x00, [1, 2, 3], text: false)
        let trailer = GRPCWebTransport.frame(flags: 0x80, Array("grpc-status: 0\r\n".utf8), text: false)
        let second = GRPCWebTransport.frame(flags: 0x00, [], text: false)
        let body = Array(first.readableBytesView) + Array(trailer.readableBytesView) + Array(second.readableBytesView)
        #expect(GRPCWebTransport.messages(in: body) == [[1, 2, 3], []])
    }

    @Test func aCutOrCompressedFrameIsRefused() {
        #expect(GRPCWebTransport.messages(in: [0, 0, 0, 0, 5, 1]) == nil)
        #expect(GRPCWebTransport.messages(in: [1, 0, 0, 0, 1, 9]) == nil)
        #expect(GRPCWebTransport.messages(in: [0, 0, 0]) == nil)
    }

    @Test func textModeFramesAreBase64EachOnItsOwnAndDecodeTogether() throws {
        let a = GRPCWebTransport.frame(flags: 0x00, [7], text: true)
        let b = GRPCWebTransport.frame(flags: 0x00, [8, 9], text: true)
        let joined = Array(a.readableBytesView) + Array(b.readableBytesView)
        #expect(String(decoding: joined, as: UTF8.self).contains("="))  // padded pieces, one after another
        let decoded = try #require(GRPCWebTransport.decodeBase64(joined))
        #expect(GRPCWebTransport.messages(in: decoded) == [[7], [8, 9]])
        #expect(GRPCWebTransport.decodeBase64(Array("not base64!".utf8)) == nil)
    }

    @Test func trailersCarryTheStatusAndEscapeTheMessage() {
        var trailers = Metadata()
        trailers.addString("7", forKey: "herald-offset")
        let block = GRPCWebTransport.trailerBlock(Status(code: .notFound, message: "no check 100%"), [:], trailers)
        #expect(
            String(decoding: block, as: UTF8.self)
                == "grpc-status: 5\r\ngrpc-message: no check 100%25\r\nherald-offset: 7\r\n"
        )
    }
}

@Suite struct MessagesTests {
    @Test func jsonSurvivesTheTripThroughProtobufValues() {
        let value = JSONValue.object([
            "ms": .int(300), "ratio": .double(0.5), "name": .string("x"), "flags": .array([.bool(true), .null]),
            "nested": .object(["n": .int(-2)]),
        ])
        #expect(JSONValue(value.protobufValue) == value)
    }

    @Test func heraldErrorsMapToTheContractsStatusCodes() {
        let table: [(HeraldError, RPCError.Code)] = [
            (.invalid("x"), .invalidArgument), (HeraldError(.malformed, "x"), .invalidArgument),
            (.notFound("x"), .notFound), (.conflict("x"), .failedPrecondition),
            (HeraldError(.unauthorized, "x"), .unauthenticated), (HeraldError(.overloaded, "x"), .resourceExhausted),
            (HeraldError(.tooLarge, "x"), .resourceExhausted), (HeraldError(.unavailable, "x"), .unavailable),
        ]
        for (error, code) in table { #expect(RPCError(error).code == code) }
        let hidden = RPCError(HeraldError(.internal, "disk on fire"))
        #expect(hidden.code == .internalError && hidden.message == "an internal error occurred")
    }
}

@Suite(.timeLimit(.minutes(1))) struct OutboxTests {
    @Test func itemsArriveInOrderAndEachSendWaitsForItsWrite() async throws {
        let outbox = Outbox<Int>()
        let written = Mutex<[Int]>([])
        let producer = Task {
            for item in 1...5 { try await outbox.send(item) }
            outbox.finish()
        }
        try await outbox.drain { item in written.withLock { $0.append(item) } }
        try await producer.value
        #expect(written.withLock { $0 } == [1, 2, 3, 4, 5])
    }

    @Test func aFailureReachesTheWriterAndEverySender() async {
        struct Cut: Error {}
        let outbox = Outbox<Int>()
        let waiting = Task { try await outbox.send(1) }
        let writer = Task { try await outbox.drain { _ in throw Cut() } }
        await #expect(throws: Cut.self) { try await writer.value }
        await #expect(throws: Cut.self) { try await waiting.value }
        await #expect(throws: Cut.self) { try await outbox.send(2) }
    }
}

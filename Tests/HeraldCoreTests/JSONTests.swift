import Foundation
import NIOCore
import Testing

@testable import HeraldCore

@Suite struct JSONTests {
    @Test func stringsAreSafeInsideScriptAndJSONP() {
        var out = ""
        JSONWriter.appendString("</script><b>&\u{2028}\u{2029}\"\\\n\u{01}", to: &out)
        #expect(out == #""\u003c/script\u003e\u003cb\u003e\u0026\u2028\u2029\"\\\n\u0001""#)
        #expect(!out.contains("<") && !out.contains(">"))
    }

    @Test func multiByteTextIsCopiedIntact() {
        var out = ""
        JSONWriter.appendString("é 😀 \u{2027} ✓<", to: &out)
        #expect(out == "\"é 😀 \u{2027} ✓\\u003c\"")
    }

    @Test func valuesRoundTripWithIntegersKept() throws {
        let text = #"{"b":[1,2.5,true,null,"x"],"a":{"n":-7}}"#
        let value = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        #expect(value.jsonText == #"{"a":{"n":-7},"b":[1,2.5,true,null,"x"]}"#)
        let again = try JSONDecoder().decode(JSONValue.self, from: Data(value.jsonText.utf8))
        #expect(again == value)
    }

    @Test func writerKeepsOrderAndWritesNulls() {
        var writer = JSONWriter()
        writer.string("id", "x")
        writer.value("result", nil)
        writer.int("version", 3)
        writer.raw("data", "[1]")
        #expect(writer.result == #"{"id":"x","result":null,"version":3,"data":[1]}"#)
    }
}

@Suite struct EncodedEventTests {
    @Test func theSharedPollAnswerIsTheSingleEventRead() throws {
        let channel = try #require(ChannelName("orders"))
        let event = Event(
            channel: channel,
            offset: 4,
            epoch: Epoch("e1"),
            type: "t",
            time: .now(),
            data: #"{"x":"<b>"}"#
        )
        let encoded = EncodedEvent(event)
        #expect(encoded.json == event.json)
        #expect(
            encoded.pollAnswer
                == EventRead(epoch: Epoch("e1"), recovered: true, events: [event], next: 4).json(channel: channel)
        )
    }

    @Test(arguments: [0, 125, 126, 65_535, 65_536])
    func theWebSocketFrameIsAServerTextFrameWithTheEventOp(_ padding: Int) throws {
        let event = Event(
            channel: try #require(ChannelName("c")),
            offset: 1,
            epoch: Epoch("e"),
            type: "t",
            time: .now(),
            data: "\"" + String(repeating: "x", count: padding) + "\""
        )
        let encoded = EncodedEvent(event)
        let payload = "{\"op\":\"event\"," + event.json.dropFirst()
        var frame = encoded.webSocketFrame
        #expect(frame.readInteger(as: UInt8.self) == 0x81)  // final, text, no RSV, unmasked
        let marker = frame.readInteger(as: UInt8.self) ?? 0
        let length: Int
        switch payload.utf8.count {
        case ..<126: length = Int(marker)
        case ...65_535:
            #expect(marker == 126)
            length = Int(frame.readInteger(as: UInt16.self) ?? 0)
        default:
            #expect(marker == 127)
            length = Int(frame.readInteger(as: UInt64.self) ?? 0)
        }
        #expect(length == payload.utf8.count && frame.readableBytes == length)
        #expect(String(buffer: frame) == payload && String(buffer: encoded.webSocketPayload) == payload)
    }
}

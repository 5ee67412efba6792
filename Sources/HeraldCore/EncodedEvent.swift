package import NIOCore
internal import Synchronization

/// An event encoded once, shared by every reader it is delivered to.
///
/// Built once per published event; the bytes are then handed to every subscriber as they
/// are (centrifuge's "encode once" rule), never re-encoded or copied per reader: a
/// `ByteBuffer` written to many connections shares one storage.
package final class EncodedEvent: Sendable {
    package let event: Event
    /// The event as JSON.
    package let json: String
    /// The answer of a poll positioned right before this event:
    /// `{"channel", "epoch", "recovered": true, "next": offset, "events": [event]}`.
    package let pollAnswer: String
    /// The event as one Server-Sent Events message: `id: <epoch>:<offset>`, `event: <type>`,
    /// `data: <event JSON>` (JSON text never contains a raw newline).
    package let sse: ByteBuffer
    /// The event as one line of newline-delimited JSON.
    package let ndjson: ByteBuffer
    /// ``sse`` and ``ndjson`` framed as HTTP/1.1 chunks, written as they are below the HTTP
    /// encoder by a stream served on its event loop.
    package let sseChunk: ByteBuffer
    package let ndjsonChunk: ByteBuffer
    /// The event as a WebSocket text frame, header included: `{"op": "event", ...the event
    /// fields...}`.
    package let webSocketFrame: ByteBuffer

    package init(_ event: Event) {
        self.event = event
        self.json = event.json
        var writer = JSONWriter()
        writer.string("channel", event.channel.rawValue)
        writer.string("epoch", event.epoch.rawValue)
        writer.bool("recovered", true)
        writer.int("next", event.offset)
        writer.raw("events", "[" + json + "]")
        self.pollAnswer = writer.result
        self.webSocketFrame = WebSocketWire.frame(.text, ByteBuffer(string: "{\"op\":\"event\"," + json.dropFirst()))
        self.sse = ByteBuffer(string: "id: \(event.epoch):\(event.offset)\nevent: \(event.type)\ndata: \(json)\n\n")
        self.ndjson = ByteBuffer(string: json + "\n")
        self.sseChunk = Self.chunk(sse)
        self.ndjsonChunk = Self.chunk(ndjson)
    }

    /// Built on first use by whoever needs it (a WebSocket connection's permessage-deflate
    /// frame), then shared: an event is compressed once, however many connections and loops
    /// send it.
    private let deflatedFrame = Mutex<ByteBuffer?>(nil)

    /// The compressed WebSocket frame, made by `make` the first time (two loops may both make
    /// it; the first stored wins). `make` runs outside the lock.
    package func deflatedWebSocketFrame(_ make: () throws -> ByteBuffer) rethrows -> ByteBuffer {
        if let frame = deflatedFrame.withLock({ $0 }) { return frame }
        let frame = try make()
        return deflatedFrame.withLock { stored in
            if let stored { return stored }
            stored = frame
            return frame
        }
    }

    /// The payload of ``webSocketFrame``, without its header.
    package var webSocketPayload: ByteBuffer {
        let length = webSocketFrame.getInteger(at: webSocketFrame.readerIndex + 1, as: UInt8.self) ?? 0
        var payload = webSocketFrame
        payload.moveReaderIndex(forwardBy: length < 126 ? 2 : length == 126 ? 4 : 10)
        return payload
    }

    /// `bytes` as one HTTP/1.1 chunk: its size in hex, CRLF, the bytes, CRLF.
    package static func chunk(_ bytes: ByteBuffer) -> ByteBuffer {
        let size = String(bytes.readableBytes, radix: 16)
        var chunk = ByteBuffer()
        chunk.reserveCapacity(size.utf8.count + bytes.readableBytes + 4)
        chunk.writeString(size)
        chunk.writeStaticString("\r\n")
        chunk.writeImmutableBuffer(bytes)
        chunk.writeStaticString("\r\n")
        return chunk
    }
}

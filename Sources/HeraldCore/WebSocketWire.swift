package import NIOCore

/// A server's WebSocket frames as bytes (RFC 6455 section 5.2): unmasked, so an event's frame is
/// the same for every connection, built once and written as it is.
package enum WebSocketWire {
    package enum Opcode: UInt8 {
        case text = 0x1
        case close = 0x8
        case ping = 0x9
        case pong = 0xA
    }

    /// One final frame carrying `payload`; `compressed` sets RSV1 (permessage-deflate).
    package static func frame(_ opcode: Opcode, _ payload: ByteBuffer, compressed: Bool = false) -> ByteBuffer {
        let length = payload.readableBytes
        var frame = ByteBuffer()
        frame.reserveCapacity(headerSize(length) + length)
        frame.writeInteger(0x80 | (compressed ? 0x40 : 0) | opcode.rawValue)
        if length < 126 {
            frame.writeInteger(UInt8(length))
        } else if length <= Int(UInt16.max) {
            frame.writeInteger(UInt8(126))
            frame.writeInteger(UInt16(length))
        } else {
            frame.writeInteger(UInt8(127))
            frame.writeInteger(UInt64(length))
        }
        frame.writeImmutableBuffer(payload)
        return frame
    }

    /// The size of a header before a payload of `length` bytes.
    package static func headerSize(_ length: Int) -> Int {
        length < 126 ? 2 : length <= Int(UInt16.max) ? 4 : 10
    }
}

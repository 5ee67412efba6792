internal import CompressNIO
internal import HeraldCore
internal import NIOCore
internal import Synchronization

/// The WebSocket connections of each event loop: one ping sweep per loop rather than a timer
/// per connection, one permessage-deflate codec per loop shared by its connections, and the
/// drain on shutdown. A loop's connections are touched only on that loop.
final class WebSocketLoops: Sendable {
    /// What only the loop touches.
    final class Local {
        var connections: [ObjectIdentifier: WebSocketConnection] = [:]
        let deflate = SharedDeflate()
    }

    private final class Shard: Sendable {
        let loop: any EventLoop
        let local: NIOLoopBound<Local>

        init(loop: any EventLoop) {
            self.loop = loop
            self.local = NIOLoopBound(Local(), eventLoop: loop)
        }
    }

    private struct State {
        var shards: [ObjectIdentifier: Shard] = [:]
        var isDraining = false
    }

    private let state = Mutex(State())
    /// Between two pings of a connection; a connection that sent nothing (no pong) since the
    /// last one is closed at the next.
    let pingInterval: TimeAmount

    init(pingInterval: TimeAmount) {
        self.pingInterval = pingInterval
    }

    /// Connections sent pings per loop task; the loop reads its sockets between two, so a sweep
    /// does not hold up the loop's other work.
    static let slice = 64

    /// Whether the server is closing every connection: new ones are refused.
    var isDraining: Bool { state.withLock { $0.isDraining } }

    /// Registers `connection`; call on `loop`.
    /// - Returns: the loop's shared state, or nil when the server is draining.
    func add(_ connection: WebSocketConnection, on loop: any EventLoop) -> Local? {
        let key = ObjectIdentifier(loop)
        let (shard, isNew) = state.withLock { state -> (Shard?, Bool) in
            guard !state.isDraining else { return (nil, false) }
            if let shard = state.shards[key] { return (shard, false) }
            let shard = Shard(loop: loop)
            state.shards[key] = shard
            return (shard, true)
        }
        guard let shard else { return nil }
        if isNew {
            loop.scheduleRepeatedTask(initialDelay: pingInterval, delay: pingInterval) { _ in self.sweep(shard) }
        }
        let local = shard.local.value
        local.connections[ObjectIdentifier(connection)] = connection
        return local
    }

    /// Forgets `connection`; call on `loop`.
    func remove(_ connection: WebSocketConnection, on loop: any EventLoop) {
        guard let shard = state.withLock({ $0.shards[ObjectIdentifier(loop)] }) else { return }
        shard.local.value.connections[ObjectIdentifier(connection)] = nil
    }

    /// Closes every connection with 1012 (service restart), on its loop; later ones are refused.
    func drain() {
        let shards = state.withLock { state in
            state.isDraining = true
            return Array(state.shards.values)
        }
        for shard in shards {
            shard.loop.execute {
                for connection in shard.local.value.connections.values { connection.finish(.restart) }
            }
        }
    }

    private func sweep(_ shard: Shard) {
        let all = Array(shard.local.value.connections.values)
        sweep(NIOLoopBound(all, eventLoop: shard.loop), on: shard.loop, from: 0)
    }

    private func sweep(_ connections: NIOLoopBound<[WebSocketConnection]>, on loop: any EventLoop, from start: Int) {
        let all = connections.value
        let end = min(start + Self.slice, all.count)
        for index in start..<end { all[index].ping() }
        if end < all.count { loop.executeAfterPolling { self.sweep(connections, on: loop, from: end) } }
    }
}

/// permessage-deflate (RFC 7692) shared by every connection of a loop.
///
/// Herald answers every offer it accepts with `server_no_context_takeover` and
/// `client_no_context_takeover` (both allowed unoffered, sections 7.1.1.1 and 7.1.1.2), so each
/// message is compressed alone: an event's compressed frame is the same for every connection
/// and is built once, kept with the event (``EncodedEvent/deflatedWebSocketFrame(_:)``), and one
/// inflater per loop, reset after each message, reads every connection's. An idle connection holds no zlib state at all (a context per connection
/// reserves about 256 KiB). Messages under ``minimumSize`` go out uncompressed.
final class SharedDeflate {
    static let minimumSize = 256
    /// The response to a client's offers, or nil when none can be accepted: an offer whose
    /// `server_max_window_bits` is under 15 (every message is compressed with a 15-bit window)
    /// or that has a parameter RFC 7692 does not define is declined.
    static func accept(_ offers: [(name: String, parameters: [String: String?])]) -> String? {
        let known: Set = [
            "server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits",
            "client_max_window_bits",
        ]
        for offer in offers where offer.name == "permessage-deflate" {
            guard offer.parameters.keys.allSatisfy(known.contains) else { continue }
            if let bits = offer.parameters["server_max_window_bits"] {
                guard let bits, Int(bits) == 15 else { continue }
            }
            if let bits = offer.parameters["client_max_window_bits"], let bits {
                guard let value = Int(bits), (8...15).contains(value) else { continue }
            }
            // An offer that names server_max_window_bits is accepted by answering with it (7.1.2.1).
            let window = offer.parameters["server_max_window_bits"] == nil ? "" : "; server_max_window_bits=15"
            return "permessage-deflate; server_no_context_takeover; client_no_context_takeover" + window
        }
        return nil
    }

    private var compressor: ZlibCompressor?
    private var decompressor: ZlibDecompressor?

    /// The compressed text frame of `event`, built once per event (kept with it).
    func frame(of event: EncodedEvent) throws -> ByteBuffer {
        try event.deflatedWebSocketFrame {
            WebSocketWire.frame(.text, try deflate(event.webSocketPayload), compressed: true)
        }
    }

    /// One message compressed alone (the trailing `00 00 ff ff` removed, section 7.2.1).
    func deflate(_ payload: ByteBuffer) throws -> ByteBuffer {
        if compressor == nil {
            compressor = try ZlibCompressor(algorithm: .deflate, configuration: .init(windowSize: 15))
        }
        guard let compressor else { return payload }
        var input = payload
        defer { try? compressor.reset() }
        var output = try input.compressStream(with: compressor, flush: .sync)
        output.moveWriterIndex(to: output.writerIndex - 4)
        return output
    }

    /// One message decompressed, at most `maxSize` bytes (`bufferOverflow` beyond).
    func inflate(_ payload: ByteBuffer, maxSize: Int) throws -> ByteBuffer {
        if decompressor == nil { decompressor = try ZlibDecompressor(algorithm: .deflate, windowSize: 15) }
        guard let decompressor else { return payload }
        var input = payload
        input.writeBytes([0, 0, 0xFF, 0xFF])  // section 7.2.2
        defer { try? decompressor.reset() }
        // One byte more: CompressNIO refuses an output of exactly its limit.
        return try input.decompressStream(with: decompressor, maxSize: maxSize + 1)
    }
}

internal import HTTPTypes
internal import HeraldCore
internal import HeraldHub
internal import HeraldStore
internal import Hummingbird
internal import NIOCore

extension HTTPField.Name {
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
    static let xAccelBuffering = HTTPField.Name("X-Accel-Buffering")!
}

extension HeraldAPI {
    /// `GET .../events` as a stream in `format`: the preamble at once, then the backlog after
    /// the client's position (`Last-Event-ID: <epoch>:<offset>`, or `?since=&epoch=`), then
    /// live events, with a heartbeat on idle.
    ///
    /// A check's stream starts with its current snapshot when no position is given, and ends
    /// after the terminal event; an SSE reconnect to an ended check's stream answers `204`,
    /// which stops `EventSource`. A lost position is announced by one `herald.reset` message
    /// before the events still kept. A subscriber that falls behind its queue bound is cut
    /// off; it resumes from the store with its last position. A client that vanished is
    /// noticed at the next write, at most one heartbeat later.
    func stream(_ request: Request, format: StreamFormat, channel: ChannelName, check: Check?) async throws -> Response
    {
        var since = try request.query("since").flatMap { text throws(HeraldError) -> Offset? in
            guard let offset = Offset(text), offset >= 0 else { throw .invalid("since must be a non-negative integer") }
            return offset
        }
        var epoch = request.query("epoch").map(Epoch.init)
        let resuming = request.headers[.lastEventID] != nil
        if let lastEventID = request.headers[.lastEventID] {
            let parts = lastEventID.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let offset = Offset(parts[1]), offset >= 0 else {
                throw HeraldError.invalid("Last-Event-ID must be <epoch>:<offset>, as sent in id: lines")
            }
            (epoch, since) = (Epoch(String(parts[0])), offset)
        }
        if format == .sse, let check, check.state.isTerminal, resuming, let since, since >= check.version {
            // The client saw the terminal event (a check's offsets follow its versions).
            return Response(status: .noContent)
        }
        let (position, positionEpoch) = (since, epoch)
        let limit = configuration.maxEventsPerPoll
        let heartbeat = configuration.heartbeat
        let isCheck = check != nil
        return Response(
            status: .ok,
            headers: format.headers,
            body: ResponseBody { writer in
                try await hub.withSubscription(to: channel) { subscription in
                    var stream = EventStream(format: format, channel: channel, isCheck: isCheck)
                    var out = format.preamble
                    // The backlog, read after subscribing so nothing published meanwhile is missed.
                    var read = try await store.events(
                        in: channel,
                        after: position ?? (isCheck ? 0 : nil),
                        epoch: positionEpoch,
                        limit: limit
                    )
                    if isCheck && position == nil { read.events = read.events.suffix(1) }  // the snapshot
                    if !read.recovered { out += stream.reset(read) }
                    stream.last = read.events.first.map { $0.offset - 1 } ?? read.next
                    out += stream.append(read.events)
                    try await writer.write(ByteBuffer(string: out))
                    while !stream.isEnded && read.events.count == limit {
                        read = try await store.events(in: channel, after: stream.last, epoch: nil, limit: limit)
                        try await writer.write(ByteBuffer(string: stream.append(read.events)))
                    }
                    while !stream.isEnded {
                        switch await subscription.next(heartbeat: heartbeat) {
                        case .events(let batch):
                            var text = ""
                            for encoded in batch where encoded.event.offset > stream.last && !stream.isEnded {
                                if encoded.event.offset > stream.last + 1 {
                                    // Announced out of order or coalesced: fill the gap from the store.
                                    let gap = try await store.events(
                                        in: channel,
                                        after: stream.last,
                                        epoch: nil,
                                        limit: limit
                                    )
                                    text += stream.append(gap.events.filter { $0.offset < encoded.event.offset })
                                }
                                text += stream.append(encoded)
                            }
                            if !text.isEmpty { try await writer.write(ByteBuffer(string: text)) }
                        case .heartbeat:
                            try await writer.write(ByteBuffer(string: format.heartbeat))
                        case .slowConsumer, .ended:
                            stream.isEnded = true
                        }
                    }
                }
                if !format.epilogue.isEmpty { try await writer.write(ByteBuffer(string: format.epilogue)) }
                try await writer.finish(nil)
            }
        )
    }
}

/// The state of one stream: the last offset written, and whether it is over.
struct EventStream {
    let format: StreamFormat
    let channel: ChannelName
    let isCheck: Bool
    var last: Offset = 0
    var isEnded = false

    /// Events after `last` in the stream's format; a check's stream ends after its terminal event.
    mutating func append(_ events: [Event]) -> String {
        var text = ""
        for event in events where event.offset > last && !isEnded {
            text += append(EncodedEvent(event))
        }
        return text
    }

    mutating func append(_ encoded: EncodedEvent) -> String {
        guard encoded.event.offset > last, !isEnded else { return "" }
        last = encoded.event.offset
        if isCheck && ["check.done", "check.failed", "check.canceled"].contains(encoded.event.type) { isEnded = true }
        return format.encode(encoded)
    }

    /// The loss signal: the position asked for is gone; what follows is what is kept.
    func reset(_ read: EventRead) -> String {
        var writer = JSONWriter()
        writer.string("type", "herald.reset")
        writer.string("channel", channel.rawValue)
        writer.string("epoch", read.epoch.rawValue)
        writer.bool("recovered", false)
        writer.int("next", read.next)
        return format.reset(writer.result)
    }
}

package import HTTPTypes
internal import HeraldCore
internal import HeraldHub
internal import HeraldStore
internal import Hummingbird
internal import NIOCore

extension HTTPField.Name {
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
    /// `no` asks nginx not to buffer a streamed answer.
    package static let xAccelBuffering = HTTPField.Name("X-Accel-Buffering")!
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
    ///
    /// With `welcome=1` the stream opens with a `herald.welcome` message and its heartbeats
    /// are messages a script sees (`{"type": "herald.heartbeat", "channel"}`), so a client can
    /// tell a stream that flows from one a proxy holds back. `tag` names the iframe stream in
    /// its `parent.heraldEvent(event, tag)` calls. `heartbeat=S` asks for heartbeats at least
    /// every S seconds (1 or more; the server's own interval is the most), for paths whose
    /// proxies cut idle connections sooner.
    ///
    /// At `expiry` (the reader's token expired) the stream sends a `herald.expired` message
    /// with its position and ends; the client comes back with a fresh token from there.
    func stream(
        _ request: Request,
        format: StreamFormat,
        channel: ChannelName,
        check: Check?,
        until expiry: ContinuousClock.Instant?
    ) async throws -> Response {
        let framing = StreamFraming(
            format: format,
            announces: try request.welcome(),
            tag: try request.frameTag()
        )
        let heartbeat = try request.heartbeat(cap: configuration.heartbeat)
        // EventSource resumes with Last-Event-ID, which wins over the query.
        let lastEventID = request.headers[.lastEventID]
        let (position, positionEpoch): (Offset?, Epoch?)
        if let lastEventID {
            let parts = lastEventID.split(separator: ":", maxSplits: 1)
            guard parts.count == 2, let offset = Offset(parts[1]), offset >= 0 else {
                throw HeraldError.invalid("Last-Event-ID must be <epoch>:<offset>, as sent in id: lines")
            }
            (position, positionEpoch) = (offset, Epoch(String(parts[0])))
        } else {
            (position, positionEpoch) = try request.position()
        }
        if format == .sse, lastEventID != nil, let check, check.state.isTerminal, let position,
            position >= check.version
        {
            // The client saw the terminal event (a check's offsets follow its versions).
            return Response(status: .noContent)
        }
        if request.method == .get, let takeover = StreamTakeover.current, takeover.kind == .stream {
            // Served on the connection's event loop (StreamConnection).
            takeover.plan = StreamPlan(
                framing: framing,
                channel: channel,
                position: position,
                epoch: positionEpoch,
                heartbeat: heartbeat,
                expiry: expiry,
                store: store,
                hub: hub,
                pageSize: configuration.maxEventsPerPoll
            )
            return Response(status: .ok, headers: format.headers)
        }
        let follower = ChannelFollower(
            store: store,
            hub: hub,
            pageSize: configuration.maxEventsPerPoll,
            heartbeat: heartbeat
        )
        return Response(
            status: .ok,
            headers: format.headers,
            body: ResponseBody { writer in
                try await writer.write(ByteBuffer(string: format.preamble))
                var epoch = positionEpoch
                let (end, last) = try await follower.follow(
                    channel,
                    after: position,
                    epoch: positionEpoch,
                    until: expiry,
                    onStart: { read in
                        epoch = read.epoch
                        guard framing.announces else { return }
                        try await writer.write(
                            ByteBuffer(
                                string: framing.marker(read.welcomeJSON(channel: channel), type: "herald.welcome")
                            )
                        )
                    }
                ) { item in
                    let bytes: ByteBuffer
                    switch item {
                    case .reset(let read, _):
                        epoch = read.epoch
                        bytes = ByteBuffer(
                            string: framing.marker(read.resetJSON(channel: channel), type: "herald.reset")
                        )
                    case .events(let events):
                        epoch = events.last?.event.epoch ?? epoch
                        bytes = framing.encode(events)
                    case .heartbeat: bytes = ByteBuffer(string: framing.heartbeat(channel: channel))
                    }
                    if bytes.readableBytes > 0 { try await writer.write(bytes) }
                }
                if end == .expired {
                    var json = JSONWriter()
                    json.string("type", "herald.expired")
                    json.string("channel", channel.rawValue)
                    json.string("epoch", epoch?.rawValue)
                    json.int("last", last)
                    try await writer.write(ByteBuffer(string: framing.marker(json.result, type: "herald.expired")))
                }
                if !format.epilogue.isEmpty { try await writer.write(ByteBuffer(string: format.epilogue)) }
                try await writer.finish(nil)
            }
        )
    }
}

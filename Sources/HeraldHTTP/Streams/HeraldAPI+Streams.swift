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
        let follower = ChannelFollower(
            store: store,
            hub: hub,
            pageSize: configuration.maxEventsPerPoll,
            heartbeat: configuration.heartbeat
        )
        return Response(
            status: .ok,
            headers: format.headers,
            body: ResponseBody { writer in
                try await writer.write(ByteBuffer(string: format.preamble))
                _ = try await follower.follow(channel, after: position, epoch: positionEpoch) { item in
                    let text: String
                    switch item {
                    case .reset(let read): text = format.reset(read.resetJSON(channel: channel))
                    case .events(let events): text = events.map(format.encode).joined()
                    case .heartbeat: text = format.heartbeat
                    }
                    if !text.isEmpty { try await writer.write(ByteBuffer(string: text)) }
                }
                if !format.epilogue.isEmpty { try await writer.write(ByteBuffer(string: format.epilogue)) }
                try await writer.finish(nil)
            }
        )
    }
}

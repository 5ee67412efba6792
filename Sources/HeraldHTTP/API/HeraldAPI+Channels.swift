internal import Foundation
internal import HTTPTypes
internal import HeraldAccess
internal import HeraldCore
internal import HeraldHub
internal import HeraldStore
internal import Hummingbird

extension HeraldAPI {
    func registerChannels<Context: RequestContext & RemoteAddressRequestContext>(on router: Router<Context>) {
        router.post("/api/v1/channels/{name}/events") { request, context in
            try await publish(request, channel: try channelName(context), from: clientAddress(request, context))
        }
        router.get("/api/v1/channels/{name}/events") { request, context in
            let channel = try channelName(context)
            let (_, expiry) = try await reader(request, of: channel)
            return try await pollChannel(request, channel: channel, until: expiry)
        }
    }

    private func channelName(_ context: some RequestContext) throws(HeraldError) -> ChannelName {
        let text = context.parameters.get("name") ?? ""
        guard let name = ChannelName(text.removingPercentEncoding ?? text) else {
            throw .invalid("channel name must match ^[A-Za-z0-9_\\-:.@]{1,200}$")
        }
        return name
    }

    /// `POST /api/v1/channels/{name}/events`: an application publishes `{"type", "data"}`.
    private func publish(_ request: Request, channel: ChannelName, from address: String?) async throws -> Response {
        let principal = try await principal(request)
        try access.authorizePublish(channel, by: principal)
        try access.limits.take(.publishes, by: principal, address: address)
        try channel.requireApplicationChannel()
        let body = try await request.jsonBody(limit: configuration.maxBodyBytes)
        guard let members = body.objectValue else { throw HeraldError.invalid("the body must be a JSON object") }
        if let unknown = members.keys.sorted().first(where: { $0 != "type" && $0 != "data" }) {
            throw HeraldError.invalid("\(unknown) is not a known field (known: data, type)")
        }
        guard case .string(let type)? = members["type"] else { throw HeraldError.invalid(Event.typeRule) }
        let event = try await events.publish(
            type: type,
            data: members["data"] ?? .null,
            to: channel
        )
        return jsonResponse(.created, event.json)
    }

    /// Polls, or with `wait` long-polls, a channel for the events after `since`; or streams it.
    /// The reader was authorized; a stream ends at `expiry`, when its token does.
    func pollChannel(
        _ request: Request,
        channel: ChannelName,
        check: Check? = nil,
        until expiry: ContinuousClock.Instant? = nil
    ) async throws -> Response {
        if let format = try StreamFormat(request.query("format"), accept: request.headers[.accept]) {
            var check = check
            if check == nil, let id = channel.checkID { check = try await store.check(id) }
            return try await stream(request, format: format, channel: channel, check: check, until: expiry)
        }
        // A stream's options are refused on polls too (a stream checks them itself), so whether
        // a request is refused does not depend on its format.
        _ = try (request.welcome(), request.frameTag(), request.heartbeat(cap: configuration.heartbeat))
        let callback = try request.jsonpCallback(enabled: configuration.jsonp)
        let wait = try request.waitDuration(cap: configuration.maxWait)
        let (since, epoch) = try request.position()
        let limit = configuration.maxEventsPerPoll
        // A caught-up long poll (the common case) waits without reading the store.
        func caughtUp(at position: Offset) -> Bool {
            guard let head = hub.head(of: channel) else { return false }
            return head.offset == position && head.epoch.accepts(epoch)
        }
        // A held poll never outlives the token that opened it.
        let deadline = min(ContinuousClock.now.advanced(by: wait), expiry ?? .now.advanced(by: wait))
        /// Leaves the poll to the connection's event loop (LoopRequest), which holds it and
        /// writes the answer; `nil` on the async path (HTTP/2, a connection Hummingbird serves).
        func heldOnLoop(at position: Offset, timeoutAnswer: String?) -> Response? {
            guard request.method == .get, let takeover = StreamTakeover.current, takeover.kind == .request else {
                return nil
            }
            takeover.poll = PollPlan(
                channel: channel,
                position: position,
                epoch: epoch,
                deadline: deadline,
                timeoutAnswer: timeoutAnswer,
                callback: callback,
                store: store,
                hub: hub,
                pageSize: limit
            )
            return jsonResponse(.ok, "", callback: callback)
        }
        // What a long poll at the channel's head would read, from the hub.
        var caughtUpRead: EventRead?
        if wait > .zero, let since {
            if let head = hub.head(of: channel), head.offset == since, head.epoch.accepts(epoch) {
                caughtUpRead = EventRead(epoch: head.epoch, recovered: true, events: [], next: since)
            }
            // Unless the hub shows the channel caught up, a poll held on the loop reads the store
            // there, once it follows the channel: its routing task never waits (10,000 polls
            // arriving at once would otherwise keep 10,000 routing tasks, and their memory, alive
            // for their reads).
            if let held = heldOnLoop(at: since, timeoutAnswer: caughtUpRead?.json(channel: channel)) { return held }
        }
        let read: EventRead
        if let caughtUpRead {
            read = caughtUpRead
        } else {
            read = try await store.events(in: channel, after: since, epoch: epoch, limit: limit)
        }
        if wait > .zero && read.recovered && read.events.isEmpty {
            // "From now" becomes a fixed position, so an event published while we wait is not skipped.
            let position = since ?? read.next
            if let held = heldOnLoop(at: position, timeoutAnswer: read.json(channel: channel)) { return held }
            let answer = try await heldPoll {
                try await hub.wait(on: channel, until: deadline) { woke -> String? in
                    // The usual case: the event that woke us is the next one; its answer is shared.
                    if let woke, woke.event.offset == position + 1, woke.event.epoch.accepts(epoch) {
                        return woke.pollAnswer
                    }
                    if woke == nil && caughtUp(at: position) { return nil }
                    let next = try await store.events(in: channel, after: position, epoch: epoch, limit: limit)
                    return next.events.isEmpty && next.recovered ? nil : next.json(channel: channel)
                }
            }
            if let answer { return jsonResponse(.ok, answer, callback: callback) }
        }
        return jsonResponse(.ok, read.json(channel: channel), callback: callback)
    }
}

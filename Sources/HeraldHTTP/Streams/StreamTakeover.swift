internal import HeraldCore
internal import HeraldHub
internal import HeraldStore
internal import Synchronization

/// A stream the router prepared (parsed, authorized, looked up) for the connection's event
/// loop to serve: everything ``StreamConnection`` needs to follow the channel without a task.
struct StreamPlan: Sendable {
    let framing: StreamFraming
    let channel: ChannelName
    /// The client's position, `nil` for "from now" (a check's stream: its current snapshot).
    let position: Offset?
    let epoch: Epoch?
    let heartbeat: Duration
    /// When the reader's credential expires.
    let expiry: ContinuousClock.Instant?
    let store: any ChannelLog
    let hub: Hub
    let pageSize: Int
}

/// Where a route leaves what the connection's handler serves on the event loop: a stream
/// route its ``StreamPlan`` (``StreamConnection`` routes a request with one set), a long poll
/// that has to wait its ``PollPlan`` (``LoopRequest``, which routes every other request on a
/// keep-alive HTTP/1.1 connection). Without one the route streams through its response body,
/// or waits in its task, as on HTTP/2.
package final class StreamTakeover: Sendable {
    /// What the handler that set the slot serves.
    enum Kind: Sendable {
        case stream
        /// Any other request: a long poll that waits may leave its plan.
        case request
    }

    @TaskLocal static var current: StreamTakeover?

    let kind: Kind
    private let slot = Mutex<StreamPlan?>(nil)
    private let pollSlot = Mutex<PollPlan?>(nil)

    init(_ kind: Kind = .stream) {
        self.kind = kind
    }

    /// Set by a stream route when ``kind`` is `.stream`.
    var plan: StreamPlan? {
        get { slot.withLock { $0 } }
        set { slot.withLock { $0 = newValue } }
    }

    /// Set by a long poll that waits when ``kind`` is `.request`.
    var poll: PollPlan? {
        get { pollSlot.withLock { $0 } }
        set { pollSlot.withLock { $0 = newValue } }
    }

    /// What a request's head asks for that a handler on the event loop may serve.
    package enum Candidate {
        /// A `GET` of `/api/v1/.../events` without a body, in a stream format (`format=` or
        /// `Accept`): for ``StreamConnection``.
        case stream
        /// Any other request of the API but `HEAD` (a poll, a publish, a check's creation):
        /// for ``LoopRequest``.
        case request
    }

    /// What a request under `/api/v1/` asks for, from its head alone (it runs for every
    /// request, so it reads bytes, not characters); `nil` for a `HEAD` or a request outside
    /// the API. The router still decides: a request that turns out to be something else is
    /// answered as usual.
    package static func candidate(method: String, uri: String, accept: String?, hasBody: Bool) -> Candidate? {
        guard method != "HEAD", uri.utf8.starts(with: "/api/v1/".utf8) else { return nil }
        guard method == "GET", !hasBody else { return .request }
        let question = uri.utf8.firstIndex(of: UInt8(ascii: "?")) ?? uri.utf8.endIndex
        let path = uri.utf8[..<question]
        guard path.count > 7, path.suffix(7).elementsEqual("/events".utf8) else { return .request }
        var format: Substring.UTF8View?
        for pair in uri.utf8[question...].dropFirst().split(separator: UInt8(ascii: "&"))
        where pair.starts(with: "format=".utf8) {
            format = Substring(pair.dropFirst(7)).utf8
            break
        }
        if let format {
            // Percent-encoded: the router decodes it (and a stream route then streams through
            // its response body).
            let streams = ["sse", "ndjson", "html"].contains { format.elementsEqual($0.utf8) }
            return streams ? .stream : .request
        }
        if let accept, StreamFormat.acceptsStream(accept) { return .stream }
        return .request
    }
}

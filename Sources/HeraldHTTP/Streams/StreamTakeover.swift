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

/// Where a stream route leaves its ``StreamPlan`` when the connection's handler can serve it
/// on the event loop (``StreamConnection`` routes a request with one set); without one the
/// route streams through its response body, as on HTTP/2.
package final class StreamTakeover: Sendable {
    @TaskLocal static var current: StreamTakeover?

    private let slot = Mutex<StreamPlan?>(nil)

    var plan: StreamPlan? {
        get { slot.withLock { $0 } }
        set { slot.withLock { $0 = newValue } }
    }

    /// Whether a request's head asks for a stream that ``StreamConnection`` may serve: a `GET`
    /// of `/api/v1/.../events` without a body, in a stream format. The router still decides:
    /// a request that turns out not to be a stream is answered as usual.
    package static func isCandidate(method: String, uri: String, accept: String?, hasBody: Bool) -> Bool {
        guard method == "GET", !hasBody, uri.hasPrefix("/api/v1/") else { return false }
        let (path, query) =
            uri.firstIndex(of: "?").map { (uri[..<$0], uri[uri.index(after: $0)...]) } ?? (uri[...], ""[...])
        guard path.hasSuffix("/events") else { return false }
        for pair in query.split(separator: "&") where pair.hasPrefix("format=") {
            return ["format=sse", "format=ndjson", "format=html"].contains(pair)
        }
        return accept?.contains("text/event-stream") == true || accept?.contains("application/x-ndjson") == true
    }
}

internal import HeraldCore
internal import HeraldStore
internal import Synchronization

/// Ends a streaming call whose client stopped reading: a write that has not completed after
/// `limit` (`write-timeout`) cancels the call.
///
/// On the gRPC port HTTP/2 flow control holds a stream whose client reads the connection (it
/// answers pings, so keepalive never fires) but not the stream: its window closes, and a write
/// waits for as long as the client likes, holding the call's task and its hub subscriptions.
/// Writes are marked here, and one watchdog per call looks at the write in progress every
/// quarter of `limit`, so a call pays no timer per message.
final class WriteWatch: Sendable {
    let limit: Duration
    private let origin = ContinuousClock.now
    /// When the write in progress began, in milliseconds since `origin`; 0 when none is.
    private let writeStarted = Atomic<Int64>(0)
    private let didStall = Atomic<Bool>(false)

    init(limit: Duration) {
        self.limit = limit
    }

    /// Whether the watchdog found a write stalled (and cancelled the call).
    var stalled: Bool { didStall.load(ordering: .acquiring) }

    /// Runs `write` as one write the watchdog watches.
    func write(_ write: () async throws -> Void) async throws {
        writeStarted.store(max(1, now), ordering: .relaxed)
        defer { writeStarted.store(0, ordering: .relaxed) }
        try await write()
    }

    /// Looks at the write in progress every quarter of `limit` until cancelled; calls `onStall`
    /// once, and returns, when one has lasted `limit`.
    func watch(onStall: () -> Void) async {
        while (try? await Task.sleep(for: limit / 4)) != nil {
            let started = writeStarted.load(ordering: .relaxed)
            if started != 0, now - started >= limit.milliseconds {
                didStall.store(true, ordering: .releasing)
                onStall()
                return
            }
        }
    }

    private var now: Int64 { (ContinuousClock.now - origin).milliseconds }
}

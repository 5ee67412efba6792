internal import Synchronization

#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// How many client connections Herald holds at once (`max-connections`).
///
/// A connection past the bound is refused at once, before any handler or task exists for
/// it: over plain HTTP with a `503` problem document and `Retry-After`, over TLS by closing
/// it. The bound keeps Herald's descriptors below the process's open-file limit, so running
/// out of them is a refusal, not a crash.
final class ConnectionLimit: Sendable {
    let maximum: Int
    /// How the bound came about, logged once the port is open.
    let summary: String
    private let open = Atomic<Int>(0)

    init(maximum: Int, summary: String = "") {
        self.maximum = maximum
        self.summary = summary
    }

    /// Counts a new connection in; false when the bound is reached.
    func admit() -> Bool {
        if open.wrappingAdd(1, ordering: .relaxed).newValue <= maximum { return true }
        open.wrappingSubtract(1, ordering: .relaxed)
        return false
    }

    /// Counts a closed connection out.
    func release() {
        open.wrappingSubtract(1, ordering: .relaxed)
    }
}

/// The process's limit on open files.
enum OpenFileLimit {
    /// Descriptors kept for everything that is not a client connection: the SQLite files,
    /// outbound HTTP and TCP checks, webhook deliveries, the gRPC port, logs.
    static let reserve = 256

    /// Raises the soft limit to the hard one (a new process usually gets 1,024 of, here,
    /// 20,000) and returns both, before and after.
    static func raise() -> (before: Int, after: Int) {
        var limit = rlimit()
        guard getrlimit(resource, &limit) == 0 else { return (1024, 1024) }
        let before = Int(clamping: limit.rlim_cur)
        guard limit.rlim_cur < limit.rlim_max else { return (before, before) }
        var raised = limit
        raised.rlim_cur = limit.rlim_max
        guard setrlimit(resource, &raised) == 0 else { return (before, before) }
        return (before, Int(clamping: raised.rlim_cur))
    }

    #if canImport(Glibc)
    private static let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    private static let resource = RLIMIT_NOFILE
    #endif
}

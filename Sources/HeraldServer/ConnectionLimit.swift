internal import HeraldAccess
internal import Synchronization

#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// How many client connections Herald holds at once (`max-connections`), how many one
/// address may hold (`max-connections-per-ip`), and how fast one address may open them
/// (`rate-limit-connects`).
///
/// A connection past a bound is refused at once, before any handler or task exists for
/// it: over plain HTTP with a problem document and `Retry-After` (503 past a cap, 429 past
/// the rate), over TLS by closing it. The total bound keeps Herald's descriptors below the
/// process's open-file limit, so running out of them is a refusal, not a crash. A trusted
/// proxy's address (`trusted-proxies`) is exempt from the per-address bounds: it carries
/// many clients.
final class ConnectionLimit: Sendable {
    /// Why a connection is refused.
    enum Refusal: Sendable, Equatable {
        case full
        case addressFull(Int)
        case tooFast(retryAfter: Int)
    }

    let maximum: Int
    /// How the bound came about, logged once the port is open.
    let summary: String
    private let perAddress: Int?
    private let connects: RateLimiter?
    private let exempt: ClientAddresses
    private let open = Atomic<Int>(0)
    /// Connections per address; an address is present only while it holds one.
    private let byAddress = Mutex<[String: Int]>([:])

    init(
        maximum: Int,
        summary: String = "",
        perAddress: Int? = nil,
        connects: RateLimiter? = nil,
        exempt: ClientAddresses = .init()
    ) {
        self.maximum = maximum
        self.summary = summary
        self.perAddress = perAddress
        self.connects = connects
        self.exempt = exempt
    }

    /// Counts a new connection from `address` in; the refusal when a bound is reached.
    func admit(_ peer: String?) -> Refusal? {
        let address = peer.map(Network.clientKey)
        if let peer, let address, !exempt.isTrusted(peer) {
            if let wait = connects?.take(address) { return .tooFast(retryAfter: Int(wait.components.seconds)) }
            if let perAddress {
                let admitted = byAddress.withLock { counts -> Bool in
                    guard counts[address, default: 0] < perAddress else { return false }
                    counts[address, default: 0] += 1
                    return true
                }
                guard admitted else { return .addressFull(perAddress) }
            }
        }
        if open.wrappingAdd(1, ordering: .relaxed).newValue <= maximum { return nil }
        open.wrappingSubtract(1, ordering: .relaxed)
        release(peer, total: false)
        return .full
    }

    /// Returns once no connection is open, or when the task is cancelled (past
    /// `shutdown-timeout`). Shutdown waits here: Hummingbird's server returns once its listener
    /// closed and the tasks it started ended, and a connection served on its event loop has none.
    func closed() async {
        while open.load(ordering: .relaxed) > 0, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Counts a closed connection from `peer` out.
    func release(_ peer: String?, total: Bool = true) {
        if total { open.wrappingSubtract(1, ordering: .relaxed) }
        guard perAddress != nil, let peer, !exempt.isTrusted(peer) else { return }
        let address = Network.clientKey(peer)
        byAddress.withLock { counts in
            let left = counts[address, default: 1] - 1
            counts[address] = left > 0 ? left : nil
        }
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

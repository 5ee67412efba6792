internal import AsyncHTTPClient
internal import HeraldCore
internal import HeraldNet
internal import Synchronization

/// Keep-alive for webhook targets: one pinned client (see `HTTPClient.pinned`) per host and
/// checked address, shared by every delivery to it, so a busy target's deliveries reuse their
/// connections. A host that resolves to another address gets another client: the connection
/// always goes to the address the SSRF guard checked.
///
/// Clients nobody uses are shut down once idle for `idle` (looked for every tenth of it, as
/// deliveries end), and at once beyond `capacity` of them.
final class PinnedClients: Sendable {
    private struct Key: Hashable {
        var host: String
        var address: String
    }

    private struct Entry {
        let client: HTTPClient
        var users = 0
        var lastUsed: ContinuousClock.Instant
    }

    private struct State {
        var clients: [Key: Entry] = [:]
        /// When the idle clients were last looked for.
        var swept = ContinuousClock.now
    }

    private let state = Mutex(State())
    private let timeout: Duration
    private let connectionsPerHost: Int
    private let capacity: Int
    private let idle: Duration

    init(timeout: Duration, connectionsPerHost: Int, capacity: Int = 256, idle: Duration = .seconds(60)) {
        self.timeout = timeout
        self.connectionsPerHost = connectionsPerHost
        self.capacity = capacity
        self.idle = idle
    }

    /// Runs `body` with the client for `host` at `address`.
    func with<Result>(
        host: String,
        address: IPAddress,
        _ body: (HTTPClient) async -> Result
    ) async -> Result {
        let key = Key(host: host, address: address.description)
        let client = state.withLock { state in
            var entry =
                state.clients[key]
                ?? Entry(
                    client: .pinned(
                        host: host,
                        to: address,
                        timeout: timeout,
                        connectionsPerHost: connectionsPerHost,
                        idleTimeout: idle
                    ),
                    lastUsed: .now
                )
            entry.users += 1
            state.clients[key] = entry
            return entry.client
        }
        let result = await body(client)
        let retired = state.withLock { state in
            let now = ContinuousClock.now
            state.clients[key]?.users -= 1
            state.clients[key]?.lastUsed = now
            // Not per delivery: every few seconds, or when there are too many.
            guard state.clients.count > capacity || now - state.swept >= idle / 10 else { return [HTTPClient]() }
            state.swept = now
            return Self.retire(from: &state.clients, now: now, capacity: capacity, idle: idle)
        }
        for client in retired { client.shutdown { _ in } }
        return result
    }

    /// Shuts every client down; call it once nothing is sent any more.
    func shutdown() async {
        let all = state.withLock { state in
            defer { state.clients = [:] }
            return state.clients.values.map(\.client)
        }
        for client in all { try? await client.shutdown() }
    }

    /// Takes out the clients nobody uses that were idle for `idle`, and the longest idle ones
    /// beyond `capacity`.
    private static func retire(
        from clients: inout [Key: Entry],
        now: ContinuousClock.Instant,
        capacity: Int,
        idle: Duration
    ) -> [HTTPClient] {
        let unused = clients.filter { $0.value.users == 0 }
        let surplus = max(0, clients.count - capacity)
        let stale = unused.filter { now - $0.value.lastUsed >= idle }
        guard !stale.isEmpty || surplus > 0 else { return [] }
        var out = Set(stale.keys)
        for (key, _) in unused.sorted(by: { $0.value.lastUsed < $1.value.lastUsed }) where out.count < surplus {
            out.insert(key)
        }
        return out.compactMap { clients.removeValue(forKey: $0)?.client }
    }
}

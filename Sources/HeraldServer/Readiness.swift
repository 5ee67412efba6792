internal import Synchronization

/// Announces readiness once, when the HTTP port and (unless off) the gRPC port are bound.
final class Readiness: Sendable {
    private struct State {
        var url: String?
        var grpcPort: Int?
        var isAnnounced = false
    }

    private let state = Mutex(State())
    private let expectsGRPC: Bool
    private let announce: @Sendable (String, Int?) -> Void

    init(expectsGRPC: Bool, announce: @escaping @Sendable (String, Int?) -> Void) {
        self.expectsGRPC = expectsGRPC
        self.announce = announce
    }

    func http(_ url: String) { update { $0.url = url } }

    /// The HTTP base URL, once the port is bound.
    var url: String { state.withLock { $0.url ?? "" } }

    func grpc(_ port: Int) { update { $0.grpcPort = port } }

    private func update(_ change: (inout State) -> Void) {
        let ready = state.withLock { state -> (String, Int?)? in
            change(&state)
            guard !state.isAnnounced, let url = state.url, !expectsGRPC || state.grpcPort != nil else { return nil }
            state.isAnnounced = true
            return (url, state.grpcPort)
        }
        if let (url, port) = ready { announce(url, port) }
    }
}

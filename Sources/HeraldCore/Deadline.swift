/// An operation did not finish before its deadline.
package struct DeadlineExceeded: Error, Sendable {
    package let limit: Duration
}

/// Runs `operation` with one hard deadline over all of it: past `limit` it is cancelled and
/// `DeadlineExceeded` is thrown.
///
/// AsyncHTTPClient's own deadline ends when the response head arrives, so a target that
/// answers its head and then trickles its body a byte a second held an outbound slot (a
/// webhook delivery, an `http` check) for as long as it liked; this covers resolving,
/// connecting, the head and the whole body.
package func withDeadline<Value: Sendable>(
    _ limit: Duration,
    _ operation: @escaping @Sendable () async throws -> Value
) async throws -> Value {
    try await withThrowingTaskGroup(of: Value?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let value = try await group.next() ?? nil else { throw DeadlineExceeded(limit: limit) }
        return value
    }
}

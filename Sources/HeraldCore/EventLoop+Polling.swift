package import NIOCore

extension EventLoop {
    /// How long after now ``executeAfterPolling(_:)`` schedules its task.
    package static var pollingPause: TimeAmount { .microseconds(20) }

    /// Runs `task` on this loop after the loop has polled its sockets (as a rule: unless its
    /// other tasks kept it busy past ``pollingPause``).
    ///
    /// NIO runs every queued task, and every task those queue, before it polls again, so work
    /// split into slices queued with `execute` keeps the loop deaf to its sockets until all of
    /// it is done. A slice scheduled a moment later is not due when the loop next looks at its
    /// queue: the loop polls, then runs it.
    package func executeAfterPolling(_ task: @escaping @Sendable () -> Void) {
        scheduleTask(in: Self.pollingPause, task)
    }
}

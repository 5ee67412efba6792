internal import DequeModule
internal import Synchronization

/// Many producers, one writer: each `send` returns once the writer wrote its item, so nothing
/// piles up here (at most one item per producer) and a slow client slows its producers, whose
/// bounded hub queues then decide when it is too slow.
///
/// Used where several tasks answer on one stream (the channels of one `Subscribe` call) and
/// where a gRPC response meets an HTTP response body (gRPC-Web).
final class Outbox<Item: Sendable>: Sendable {
    private typealias Ack = CheckedContinuation<Void, any Error>

    private struct State {
        var pending = Deque<(Item, Ack)>()
        var writer: CheckedContinuation<(Item, Ack)?, any Error>?
        var isFinished = false
        var failure: (any Error)?
    }

    private enum SendAction {
        case hand(CheckedContinuation<(Item, Ack)?, any Error>)
        case refuse(any Error)
        case wait
    }

    private enum NextAction {
        case take((Item, Ack))
        case end
        case fail(any Error)
        case wait
    }

    private let state = Mutex(State())

    /// Hands `item` to the writer and waits until it was written.
    /// - Throws: the error the outbox failed with, or the writer's write error.
    func send(_ item: Item) async throws {
        try await withCheckedThrowingContinuation { (ack: Ack) in
            let action = state.withLock { state -> SendAction in
                if let failure = state.failure { return .refuse(failure) }
                if state.isFinished { return .refuse(CancellationError()) }
                if let writer = state.writer {
                    state.writer = nil
                    return .hand(writer)
                }
                state.pending.append((item, ack))
                return .wait
            }
            switch action {
            case .hand(let writer): writer.resume(returning: (item, ack))
            case .refuse(let error): ack.resume(throwing: error)
            case .wait: break
            }
        }
    }

    /// Writes items with `write`, in order, until ``finish()`` (then returns) or ``fail(_:)``
    /// (then throws that error). A failed write fails the outbox with its error.
    func drain(_ write: (Item) async throws -> Void) async throws {
        while let (item, ack) = try await next() {
            do {
                try await write(item)
                ack.resume()
            } catch {
                ack.resume(throwing: error)
                fail(error)
                throw error
            }
        }
    }

    /// No more items: the writer returns once the pending ones are written.
    func finish() {
        let writer = state.withLock { state -> CheckedContinuation<(Item, Ack)?, any Error>? in
            state.isFinished = true
            defer { state.writer = nil }
            return state.pending.isEmpty ? state.writer : nil
        }
        writer?.resume(returning: nil)
    }

    /// Ends the stream with `error`: the writer throws it, and every waiting or later `send` too.
    func fail(_ error: any Error) {
        let (writer, pending) = state.withLock { state in
            if state.failure == nil { state.failure = error }
            defer {
                state.writer = nil
                state.pending.removeAll()
            }
            return (state.writer, state.pending)
        }
        writer?.resume(throwing: error)
        for (_, ack) in pending { ack.resume(throwing: error) }
    }

    private func next() async throws -> (Item, Ack)? {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (writer: CheckedContinuation<(Item, Ack)?, any Error>) in
                let action = state.withLock { state -> NextAction in
                    if let failure = state.failure { return .fail(failure) }
                    if Task.isCancelled { return .fail(CancellationError()) }
                    if let first = state.pending.popFirst() { return .take(first) }
                    if state.isFinished { return .end }
                    state.writer = writer
                    return .wait
                }
                switch action {
                case .take(let entry): writer.resume(returning: entry)
                case .end: writer.resume(returning: nil)
                case .fail(let error): writer.resume(throwing: error)
                case .wait: break
                }
            }
        } onCancel: {
            fail(CancellationError())
        }
    }
}

internal import DequeModule
package import HeraldCore
package import HeraldHub
package import HeraldNet
internal import HeraldStore
package import Logging
internal import ServiceLifecycle
internal import Synchronization

/// Bounds of the runner.
package struct RunnerConfiguration: Sendable, Hashable {
    /// Network checks (`http`, `tcp`) running at once (`runner-concurrency`,
    /// `HERALD_RUNNER_CONCURRENCY`, default 64). Timers (`delay`, `external` timeouts) cost no slot.
    package var maxConcurrentChecks: Int
    /// Network checks waiting for a slot before new ones are refused with 429
    /// (`runner-queue`, `HERALD_RUNNER_QUEUE`, default 10000; 10000 × ~200 B ≈ 2 MB).
    package var maxQueuedChecks: Int
    /// How long an `external` check waits for its completion before it fails with
    /// `timeout` (`external-timeout`, `HERALD_EXTERNAL_TIMEOUT`, default 86400 s).
    package var externalTimeout: Duration

    package init(
        maxConcurrentChecks: Int = 64,
        maxQueuedChecks: Int = 10_000,
        externalTimeout: Duration = .seconds(86_400)
    ) {
        self.maxConcurrentChecks = maxConcurrentChecks
        self.maxQueuedChecks = maxQueuedChecks
        self.externalTimeout = externalTimeout
    }
}

/// Runs checks to their end: timers for `delay` (and `external` timeouts), a bounded pool of
/// slots for network kinds.
///
/// Lifecycle: ``run()`` first resumes every check the store still has as `processing` (a
/// `delay` check keeps its original deadline, computed from `created_at`), then serves
/// until graceful shutdown, when in-flight work is cancelled; what was cancelled is still
/// `processing` in the store and resumes at the next start. Ending a check goes through
/// ``Store/finishCheck(_:as:result:error:at:requiring:)``, so a cancel or an external
/// completion that won the race makes the runner's result a no-op.
package final class CheckRunner: Service, Sendable {
    private struct State {
        var queue = Deque<Check>()
        var running = 0
        var waiter: CheckedContinuation<Check?, Never>?
        var isStopped = false
        var mostQueued = 0
    }

    private let events: EventLog
    private var store: any CheckStore { events.store }
    private let probe: NetworkProbe
    private let configuration: RunnerConfiguration
    private let logger: Logger
    private let state = Mutex(State())
    private let timers = DeadlineQueue<CheckID>()

    package init(
        events: EventLog,
        resolver: TargetResolver,
        configuration: RunnerConfiguration,
        logger: Logger = Logger(label: "herald.runner")
    ) {
        self.events = events
        self.probe = NetworkProbe(resolver: resolver)
        self.configuration = configuration
        self.logger = logger
    }

    /// Throws `.overloaded` when the queue of network checks is full, before anything is written.
    package func admit(_ spec: CheckSpec) throws(HeraldError) {
        guard spec.kind == .http || spec.kind == .tcp else { return }
        let queued = state.withLock { $0.queue.count }
        if queued >= configuration.maxQueuedChecks {
            throw HeraldError(.overloaded, "\(queued) network checks are waiting to run; retry later")
        }
    }

    /// Schedules a check that was just created (or found processing at start-up).
    package func submit(_ check: Check) {
        switch check.spec.parameters {
        case .delay(let ms, _, _):
            timers.schedule(check.id, at: instant(of: check.createdAt.adding(milliseconds: ms)))
        case .external:
            timers.schedule(
                check.id,
                at: instant(of: check.createdAt.adding(milliseconds: configuration.externalTimeout.milliseconds))
            )
        case .http, .tcp:
            let handoff = state.withLock { state in
                state.queue.append(check)
                state.mostQueued = max(state.mostQueued, state.queue.count)
                return dispatch(&state)
            }
            handoff.map { $0.waiter.resume(returning: $0.check) }
        }
    }

    /// Drops the timer of a check that ended by other means (completed, canceled), so the
    /// timers hold only checks still waiting.
    package func forget(_ id: CheckID) {
        timers.remove(id)
    }

    /// Timer entries held (waiting or not yet dropped): at most twice the checks waiting.
    package var timerStorage: Int { timers.storage }

    /// Network checks queued, waiting for a slot.
    package var queued: Int { state.withLock { $0.queue.count } }

    /// How many more network checks the queue takes before `runner-queue` (a cluster node takes
    /// over no more checks than this).
    package var room: Int { configuration.maxQueuedChecks - queued }

    /// The most network checks ever queued at once (never above `runner-queue`).
    package var mostQueued: Int { state.withLock { $0.mostQueued } }

    package func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    await self.timers.run(tick: .milliseconds(10)) { id in await self.fire(id) }
                }
                group.addTask { await self.resume() }
                while let check = await self.nextWork() {
                    group.addTask {
                        await self.execute(check)
                        self.release()
                    }
                }
                group.cancelAll()
            }
        }
        let waiter = state.withLock { state in
            state.isStopped = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// Submits the checks found processing at start-up, a page at a time, waiting while the
    /// queue of network checks has no room for a page, so a backlog of any size is resumed
    /// within `runner-queue`.
    private func resume() async {
        let page = min(Self.resumePage, configuration.maxQueuedChecks)
        var cursor: ProcessingCursor?
        var resumed = 0
        repeat {
            while queued > configuration.maxQueuedChecks - page {
                guard (try? await Task.sleep(for: .milliseconds(50))) != nil else { return }
            }
            do {
                let found = try await store.processingChecks(after: cursor, limit: page)
                for check in found.checks { submit(check) }
                resumed += found.checks.count
                cursor = found.next
            } catch is CancellationError {
                return
            } catch {
                logger.error("resuming processing checks failed", metadata: ["error": "\(error)"])
                guard (try? await Task.sleep(for: .seconds(1))) != nil else { return }
            }
        } while cursor != nil && !Task.isCancelled
        logger.debug("runner resumed checks", metadata: ["herald.resumed": "\(resumed)"])
    }

    /// Processing checks read per page at start-up.
    static let resumePage = 500

    // MARK: Slots

    /// When a slot is free, work waits and the loop is parked: takes the slot and the first
    /// queued check, to be handed to the loop after unlocking.
    private func dispatch(_ state: inout State) -> (waiter: CheckedContinuation<Check?, Never>, check: Check)? {
        guard state.running < configuration.maxConcurrentChecks, let waiter = state.waiter,
            let check = state.queue.popFirst()
        else { return nil }
        state.waiter = nil
        state.running += 1
        return (waiter, check)
    }

    private func nextWork() async -> Check? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = state.withLock { state -> Check?? in
                    if state.isStopped || Task.isCancelled { return .some(nil) }
                    if state.running < configuration.maxConcurrentChecks, let check = state.queue.popFirst() {
                        state.running += 1
                        return .some(check)
                    }
                    state.waiter = continuation
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                state.isStopped = true
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }

    private func release() {
        let handoff = state.withLock { state in
            state.running -= 1
            return dispatch(&state)
        }
        handoff.map { $0.waiter.resume(returning: $0.check) }
    }

    // MARK: Work

    private func execute(_ check: Check) async {
        let outcome: CheckOutcome
        switch check.spec.parameters {
        case .http(let url, let method, let expect, let timeout):
            outcome = await probe.http(url: url, method: method, expectStatus: expect, timeoutMilliseconds: timeout)
        case .tcp(let host, let port, let timeout):
            outcome = await probe.tcp(host: host, port: port, timeoutMilliseconds: timeout)
        case .delay, .external:
            return
        }
        // Interrupted by shutdown: leave it processing, it runs again at the next start.
        guard !Task.isCancelled else { return }
        await finish(check.id, outcome)
    }

    private func fire(_ id: CheckID) async {
        do {
            guard let check = try await store.check(id), check.state == .processing else { return }
            switch check.spec.parameters {
            case .delay(_, let outcome, let result):
                let error = Check.errorValue(code: "failed", message: "the delay check was asked to fail")
                await finish(id, CheckOutcome(state: outcome, result: result, error: outcome == .failed ? error : nil))
            case .external:
                await finish(
                    id,
                    .failed(
                        code: "timeout",
                        "no completion within \(configuration.externalTimeout.milliseconds / 1000) s"
                    )
                )
            case .http, .tcp:
                return
            }
        } catch {
            logger.error("cannot read a due check", metadata: ["herald.check_id": "\(id)", "error": "\(error)"])
        }
    }

    private func finish(_ id: CheckID, _ outcome: CheckOutcome) async {
        do {
            _ = try await events.finishCheck(
                id,
                as: outcome.state,
                result: outcome.result,
                error: outcome.error,
                requiring: .any
            )
        } catch {
            logger.error(
                "cannot record a check's outcome",
                metadata: ["herald.check_id": "\(id)", "error": "\(error)"]
            )
        }
    }

    private func instant(of time: Timestamp) -> ContinuousClock.Instant {
        ContinuousClock.now.advanced(
            by: .milliseconds(time.millisecondsSince1970 - Timestamp.now().millisecondsSince1970)
        )
    }
}

internal import AsyncHTTPClient
internal import Foundation
internal import HeraldCore
package import HeraldNet
package import HeraldStore
package import Logging
internal import NIOCore
internal import NIOHTTP1
internal import ServiceLifecycle
internal import Synchronization

/// Sends the outbox: makes deliveries from the webhook event log, claims due ones, signs and
/// POSTs them, and records each attempt.
///
/// At-least-once: a delivery is leased while it is sent, so a crash mid-send makes it due
/// again after the lease, with the same `webhook-id`. Every attempt goes through the SSRF
/// guard after DNS resolution and connects to the checked address; no redirect is followed.
/// Targets are isolated by ``CircuitBreakers``: a capped number in flight each, and an open
/// circuit after consecutive failures, so dead or hanging targets do not hold healthy ones up.
package final class WebhookDispatcher: Service, Sendable {
    private let store: any DeliveryQueue
    private let resolver: TargetResolver
    private let configuration: WebhookConfiguration
    private let breakers: CircuitBreakers
    private let clients: PinnedClients
    private let doorbell = Doorbell()
    /// The store's ``DeliveryQueue/localQueueings`` when the loop last read the queue.
    private let readAt = Atomic<Int>(-1)
    /// Attempts started and not yet recorded.
    private let inFlight = Mutex(0)
    private let finished = Mutex(Finished())
    private let logger: Logger
    /// Whether this process is the only one claiming deliveries (not a node of a cluster).
    private let isAlone: Bool
    private let policy: WebhookPolicy

    /// - Parameter isAlone: `false` on a node of a cluster: the parks other nodes made stay.
    package init(
        store: any DeliveryQueue,
        resolver: TargetResolver,
        configuration: WebhookConfiguration,
        logger: Logger,
        isAlone: Bool = true
    ) {
        self.isAlone = isAlone
        self.store = store
        self.resolver = resolver
        self.configuration = configuration
        self.policy = WebhookPolicy(disableAfter: configuration.disableAfter)
        self.breakers = CircuitBreakers(configuration: configuration)
        self.clients = PinnedClients(
            timeout: configuration.timeout,
            connectionsPerHost: configuration.maxInFlightPerTarget
        )
        self.logger = logger
    }

    /// Says that deliveries may have been queued (after an event's commit): rings, unless the
    /// store tells that nothing was queued since the loop last read the queue.
    package func wake() {
        if let count = store.localQueueings, count == readAt.load(ordering: .acquiring) { return }
        doorbell.ring()
    }

    package func run() async throws {
        // Parks were made for attempts in flight and circuits of the process before this one.
        // In a cluster, other nodes' parks are theirs: they end on their own.
        do {
            if isAlone { try await store.unparkAll(at: .now()) }
        } catch {
            logger.warning("unparking targets at start failed", metadata: ["error": "\(error)"])
        }
        await cancelWhenGracefulShutdown { await self.loop() }
        await clients.shutdown()
    }

    private func loop() async {
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                // Suspects queued for a token: unparked with the next records, a few per write.
                let admission = breakers.admitWaiting(now: .now)
                if !admission.unpark.isEmpty {
                    finished.withLock { $0.unparking += admission.unpark }
                    group.addTask { await self.recordFinished() }
                }
                // A read first: most wake-ups (one per published event) find nothing due, and
                // a claim is a write that would queue behind the events themselves.
                if let count = store.localQueueings { readAt.store(count, ordering: .releasing) }
                let due = try? await store.nextDeliveryDue(now: .now(), window: configuration.fanOutWindow)
                let free = min(configuration.maxInFlight - inFlight.withLock { $0 }, 256)
                guard let due, due <= .now(), free > 0 else {
                    let read = ContinuousClock.now
                    var pause = Self.pause(until: free > 0 ? due : nil)
                    if let next = admission.next { pause = min(pause, max(next, .milliseconds(50))) }
                    await doorbell.wait(upTo: pause)
                    // In a cluster a read is a round trip to the database, and every event on
                    // any node rings: wake-ups coalesce to one read per `clusterReadSpacing`.
                    if !isAlone { try? await Task.sleep(until: read + Self.clusterReadSpacing) }
                    continue
                }
                let claimed: [Delivery]
                do {
                    claimed = try await store.claimDeliveries(
                        now: .now(),
                        lease: configuration.timeout + .seconds(5),
                        limit: free,
                        perTarget: configuration.maxInFlightPerTarget,
                        window: configuration.fanOutWindow,
                        healthy: breakers.healthyTargets()
                    )
                } catch {
                    logger.warning("claiming deliveries failed", metadata: ["error": "\(error)"])
                    await doorbell.wait(upTo: .seconds(1))
                    continue
                }
                if claimed.isEmpty {
                    // Due, yet nothing claimed: another node holds those rows (a cluster).
                    await doorbell.wait(upTo: .milliseconds(50))
                    continue
                }
                // What cannot go now goes back in one write: a delivery whose healthy target is
                // at its cap, and the whole backlog of a target that is parked.
                var held: [(id: String, until: Timestamp)] = []
                var parked: [String: Timestamp] = [:]
                for delivery in claimed {
                    let target = delivery.target
                    if let until = parked[target] {
                        held.append((delivery.id, until))  // claimed, so leased: held by id
                        continue
                    }
                    switch breakers.acquire(target, now: .now) {
                    case .wait(let duration):
                        held.append((delivery.id, Timestamp.now().adding(milliseconds: duration.milliseconds)))
                    case .park(let duration):
                        let until = Timestamp.now().adding(milliseconds: duration.milliseconds)
                        parked[target] = until
                        held.append((delivery.id, until))
                    case .send(let suspect):
                        inFlight.withLock { $0 += 1 }
                        group.addTask {
                            let record = await self.attempt(delivery)
                            // Shutting down: the attempt was cut, and the delivery stays leased,
                            // so the next run sends it again with the same id.
                            guard !Task.isCancelled else { return }
                            let succeeded = record.outcome == .delivered
                            let unpark = self.breakers.release(
                                target,
                                suspect: suspect,
                                succeeded: succeeded,
                                now: .now
                            )
                            self.finished.withLock { finished in
                                finished.records.append(record)
                                finished.unparking += unpark
                            }
                            await self.recordFinished()
                        }
                    }
                }
                guard !held.isEmpty || !parked.isEmpty else { continue }
                do {
                    try await store.holdDeliveries(held, parking: parked.map { ($0.key, $0.value) }, at: .now())
                } catch {
                    logger.warning("holding deliveries failed", metadata: ["error": "\(error)"])
                }
            }
        }
    }

    /// The least time between two empty reads of the queue on a node of a cluster: a delivery
    /// waits at most this much more than on a single process.
    static let clusterReadSpacing: Duration = .milliseconds(25)

    /// How long to sleep: until `due`, at most a second (a finished attempt or a new event
    /// rings earlier).
    private static func pause(until due: Timestamp?) -> Duration {
        guard let due else { return .seconds(1) }
        let wait = due.millisecondsSince1970 - Timestamp.now().millisecondsSince1970
        return .milliseconds(min(max(wait, 10), 1000))
    }

    /// Attempts that ended, waiting to be recorded.
    private struct Finished {
        var records: [AttemptRecord] = []
        /// Targets whose parked backlog may go, once these are recorded.
        var unparking: [String] = []
        var writing = false
    }

    /// Records what attempts have ended, many in one write: the task that finds no write under
    /// way writes everything queued, and again what queued meanwhile, so a thousand targets
    /// timing out together cost a few writes, not a thousand.
    private func recordFinished() async {
        let leads = finished.withLock { finished in
            if finished.writing { return false }
            finished.writing = true
            return true
        }
        guard leads else { return }
        while true {
            let batch = finished.withLock { finished -> (records: [AttemptRecord], unparking: [String])? in
                guard !finished.records.isEmpty || !finished.unparking.isEmpty else {
                    finished.writing = false
                    return nil
                }
                // Small writes, so a claim for a healthy target never waits long behind one.
                let records = Array(finished.records.prefix(64))
                finished.records.removeFirst(records.count)
                let unparking = finished.unparking
                finished.unparking = []
                return (records, unparking)
            }
            guard let batch else { return }
            do {
                try await store.recordAttempts(
                    batch.records,
                    unparking: batch.unparking,
                    policy: policy,
                    at: .now()
                )
            } catch is CancellationError {
                // Shutting down: still leased, each is sent again by the next run.
                finished.withLock { $0.writing = false }
                return
            } catch {
                // Still leased: each is attempted again after its lease, with the same id.
                logger.warning(
                    "recording delivery attempts failed",
                    metadata: ["herald.deliveries": "\(batch.records.count)", "error": "\(error)"]
                )
            }
            inFlight.withLock { $0 -= batch.records.count }
            doorbell.ring()
        }
    }

    /// One attempt of `delivery`, and what it saw.
    private func attempt(_ delivery: Delivery) async -> AttemptRecord {
        let started = ContinuousClock.now
        let result = await send(delivery)
        let attempt = DeliveryAttempt(
            at: .now(),
            statusCode: result.status,
            durationMilliseconds: (ContinuousClock.now - started).milliseconds,
            error: result.error,
            snippet: result.snippet
        )
        return AttemptRecord(deliveryID: delivery.id, attempt: attempt, outcome: result.outcome, lease: delivery.lease)
    }

    private struct Result {
        var outcome: DeliveryOutcome
        var status: Int?
        var error: String?
        var snippet: String?
    }

    private func send(_ delivery: Delivery) async -> Result {
        let attempts = delivery.attempts + 1
        let url: TargetURL
        let address: IPAddress
        do {
            url = try TargetURL(delivery.targetURL, field: "target_url")
            address = try await resolver.resolve(url.host)
        } catch {
            return Result(outcome: retry(after: attempts), error: "\(error)")
        }
        let timestamp = Timestamp.now().millisecondsSince1970 / 1000
        guard
            let signature = WebhookSigner.signature(
                secrets: delivery.secrets,
                id: delivery.id,
                timestamp: timestamp,
                body: delivery.payload
            )
        else { return Result(outcome: .failed, error: "the signing secret is not valid") }
        var request = HTTPClientRequest(url: delivery.targetURL)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/json")
        request.headers.add(name: "user-agent", value: "herald-webhooks/1")
        request.headers.add(name: "webhook-id", value: delivery.id)
        request.headers.add(name: "webhook-timestamp", value: "\(timestamp)")
        request.headers.add(name: "webhook-signature", value: signature)
        request.body = .bytes(ByteBuffer(string: delivery.payload))
        return await clients.with(host: url.host, address: address) { http in
            await self.post(request, with: http, attempts: attempts)
        }
    }

    /// POSTs `request` (attempt number `attempts`) and makes the outcome of its answer.
    private func post(_ request: HTTPClientRequest, with http: HTTPClient, attempts: Int) async -> Result {
        do {
            // One deadline over the head and the whole body: a trickling target is cut too.
            let (status, headers, snippet) = try await withDeadline(configuration.timeout) {
                let response = try await http.execute(request, timeout: .init(self.configuration.timeout))
                var body = try await response.body.collect(upTo: 64 * 1024)
                return (
                    Int(response.status.code), response.headers, body.readString(length: min(body.readableBytes, 256))
                )
            }
            let outcome: DeliveryOutcome
            switch status {
            case 200..<300: outcome = .delivered
            case 410: outcome = .gone
            case 429, 503:
                let asked = headers.first(name: "retry-after").flatMap { Int64($0) }
                outcome = retry(after: attempts, atLeast: asked.map { .seconds(min($0, 86_400)) })
            default: outcome = retry(after: attempts)
            }
            return Result(outcome: outcome, status: status, snippet: snippet)
        } catch let error as HTTPClientError where error.isTimeout {
            return Result(outcome: retry(after: attempts), error: "no answer within \(configuration.timeout)")
        } catch is DeadlineExceeded {
            return Result(outcome: retry(after: attempts), error: "no answer within \(configuration.timeout)")
        } catch {
            return Result(outcome: retry(after: attempts), error: "\(error)")
        }
    }

    /// The next try after `attempts` failed ones, on the schedule with ±10 % jitter, or `.failed`
    /// once the schedule is used up.
    private func retry(after attempts: Int, atLeast floor: Duration? = nil) -> DeliveryOutcome {
        guard attempts <= configuration.retrySchedule.count else { return .failed }
        let base = configuration.retrySchedule[attempts - 1].milliseconds
        let jittered = base + Int64.random(in: -(base / 10)...(base / 10))
        let wait = max(jittered, floor?.milliseconds ?? 0)
        return .retry(at: Timestamp.now().adding(milliseconds: wait))
    }
}

/// Wakes the dispatcher: `ring` from anywhere, `wait` in the dispatcher's loop.
final class Doorbell: Sendable {
    private let state = Mutex<(rung: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    func ring() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.rung = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Returns at the next ring (or at once if one came since the last wait), at most after `limit`.
    func wait(upTo limit: Duration) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                // Not after cancellation: a stale ring would make the next wait return at once.
                guard (try? await Task.sleep(for: limit)) != nil else { return }
                self.ring()
            }
            // Cancellation (shutdown) rings, so the waiter never outlives its task.
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let ready = state.withLock { state -> Bool in
                        if state.rung {
                            state.rung = false
                            return true
                        }
                        state.waiter = continuation
                        return false
                    }
                    if ready { continuation.resume() }
                }
            } onCancel: {
                ring()
            }
            group.cancelAll()
        }
    }
}

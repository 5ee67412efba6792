import Foundation
import HeraldCore
import HeraldHub
import HeraldNet
import HeraldSQLite
import HeraldStore
import Testing

@testable import HeraldRunner

@Suite(.timeLimit(.minutes(1))) struct CheckRunnerTests {
    private func makeRunner(allowPrivate: Bool = false) throws -> (SQLiteStore, Hub, CheckRunner) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "herald-runner-\(UUID().uuidString)"
        )
        let store = try SQLiteStore(directory: directory, retention: .init())
        let hub = Hub()
        let runner = CheckRunner(
            events: EventLog(store: store, broker: LocalBroker(hub: hub)),
            resolver: TargetResolver(allowPrivateTargets: allowPrivate),
            configuration: .init()
        )
        return (store, hub, runner)
    }

    private func waitUntilEnded(_ store: SQLiteStore, _ id: CheckID) async throws -> Check {
        while true {
            if let check = try await store.check(id), check.state.isTerminal { return check }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test func aResumedDelayCheckKeepsItsOriginalDeadline() async throws {
        let (store, _, runner) = try makeRunner()
        // Created 10 s ago with a 12 s delay, as if Herald had been down for 10 s.
        let created = Timestamp.now().adding(milliseconds: -10_000)
        let check = Check(
            id: .random(),
            spec: CheckSpec(parameters: .delay(milliseconds: 12_000, outcome: .done, result: .string("r"))),
            createdAt: created
        )
        _ = try await store.createCheck(check, idempotency: nil)
        let running = Task { try await runner.run() }
        let ended = try await waitUntilEnded(store, check.id)
        running.cancel()
        let elapsed = try #require(ended.completedAt).millisecondsSince1970 - created.millisecondsSince1970
        #expect(ended.state == .done && ended.result == .string("r"))
        // Never early, and nowhere near the 22 s a fresh timer would have taken.
        #expect(elapsed >= 12_000 && elapsed < 17_000)
    }

    @Test func aNetworkCheckToAPrivateAddressFailsWithoutConnecting() async throws {
        let (store, _, runner) = try makeRunner()
        let check = Check(
            id: .random(),
            spec: CheckSpec(parameters: .tcp(host: "127.0.0.1", port: 9, timeoutMilliseconds: 1000)),
            createdAt: .now()
        )
        _ = try await store.createCheck(check, idempotency: nil)
        runner.submit(check)
        let running = Task { try await runner.run() }
        let ended = try await waitUntilEnded(store, check.id)
        running.cancel()
        #expect(ended.state == .failed)
        #expect(ended.error?.objectValue?["code"] == .string("target_refused"))
    }

    @Test func theRunnerLosesTheRaceToACancelGracefully() async throws {
        let (store, hub, runner) = try makeRunner()
        let check = Check(
            id: .random(),
            spec: CheckSpec(parameters: .delay(milliseconds: 300, outcome: .done, result: nil)),
            createdAt: .now()
        )
        _ = try await store.createCheck(check, idempotency: nil)
        runner.submit(check)
        _ = try await store.finishCheck(check.id, as: .canceled, result: nil, error: nil, at: .now(), requiring: .any)
        let running = Task { try await runner.run() }
        try await Task.sleep(for: .milliseconds(600))
        running.cancel()
        let stored = try #require(try await store.check(check.id))
        #expect(stored.state == .canceled && stored.version == 2)
        _ = hub
    }

    @Test func aCompletedExternalCheckLeavesNoTimerBehind() async throws {
        let (store, hub, runner) = try makeRunner()
        let service = CheckService(
            events: EventLog(store: store, broker: LocalBroker(hub: hub)),
            runner: runner,
            resolver: TargetResolver(allowPrivateTargets: false)
        )
        var ids: [CheckID] = []
        for _ in 0..<100 {
            ids.append(try await service.create(CheckSpec(parameters: .external(nil)), idempotency: nil).check.id)
        }
        #expect(runner.timerStorage == 100)
        for id in ids.prefix(99) {
            _ = try await service.finish(id, as: .done, result: nil, error: nil, requiring: .externalKind)
        }
        // One check still waits for its 24 h timeout; the 99 completed ones are gone.
        #expect(runner.timerStorage <= 2)
    }

    @Test func aBacklogLargerThanTheQueueIsResumedWithinIt() async throws {
        let (store, hub, _) = try makeRunner()
        let runner = CheckRunner(
            events: EventLog(store: store, broker: LocalBroker(hub: hub)),
            resolver: TargetResolver(allowPrivateTargets: false),
            configuration: .init(maxConcurrentChecks: 2, maxQueuedChecks: 100)
        )
        // 1,200 network checks found processing at start: each fails fast (a private address).
        var last: CheckID?
        for _ in 0..<1_200 {
            let check = Check(
                id: .random(),
                spec: CheckSpec(parameters: .tcp(host: "127.0.0.1", port: 9, timeoutMilliseconds: 1000)),
                createdAt: .now()
            )
            _ = try await store.createCheck(check, idempotency: nil)
            last = check.id
        }
        let running = Task { try await runner.run() }
        _ = try await waitUntilEnded(store, try #require(last))
        running.cancel()
        #expect(runner.mostQueued <= 100)
        #expect(try await store.processingChecks(after: nil, limit: 10).checks.isEmpty)
    }

    @Test func aFullQueueRefusesNetworkChecksOnly() throws {
        let (store, hub, _) = try makeRunner()
        let runner = CheckRunner(
            events: EventLog(store: store, broker: LocalBroker(hub: hub)),
            resolver: TargetResolver(allowPrivateTargets: false),
            configuration: .init(maxConcurrentChecks: 1, maxQueuedChecks: 1)
        )
        let tcp = CheckSpec(parameters: .tcp(host: "example.com", port: 1, timeoutMilliseconds: 1))
        runner.submit(Check(id: .random(), spec: tcp, createdAt: .now()))
        #expect(throws: HeraldError.self) { try runner.admit(tcp) }
        #expect(throws: Never.self) {
            try runner.admit(CheckSpec(parameters: .delay(milliseconds: 1, outcome: .done, result: nil)))
        }
    }
}

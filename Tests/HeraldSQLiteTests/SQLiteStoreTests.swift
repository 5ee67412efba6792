import Foundation
import HeraldCore
import HeraldStore
import Testing

@testable import HeraldSQLite

/// Opens a store in a fresh temporary directory.
func makeStore(_ retention: RetentionConfiguration = .init()) throws -> (SQLiteStore, URL) {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-test-\(UUID().uuidString)")
    return (try SQLiteStore(directory: directory, retention: retention), directory)
}

private func delayCheck(_ ms: Int64 = 100) -> Check {
    Check(
        id: .random(),
        spec: CheckSpec(parameters: .delay(milliseconds: ms, outcome: .done, result: nil)),
        createdAt: .now()
    )
}

@Suite struct SQLiteStoreTests {
    @Test func creatingACheckWritesItsFirstEvent() async throws {
        let (store, _) = try makeStore()
        let check = delayCheck()
        let creation = try await store.createCheck(check, idempotency: nil)
        let event = try #require(creation.event)
        #expect(event.offset == 1 && event.type == "check.created" && event.channel == check.id.channel)
        #expect(try await store.check(check.id) == check)
        let read = try await store.events(in: check.id.channel, after: 0, epoch: nil, limit: 10)
        #expect(read.events == [event] && read.recovered && read.next == 1)
    }

    @Test func anIdempotencyKeyReturnsTheFirstCheck() async throws {
        let (store, _) = try makeStore()
        let key = IdempotencyKey(key: "k1", fingerprint: "f")
        let first = try await store.createCheck(delayCheck(), idempotency: key)
        let second = try await store.createCheck(delayCheck(), idempotency: key)
        #expect(second.check.id == first.check.id && !second.isNew)
        await #expect(throws: HeraldError.self) {
            try await store.createCheck(delayCheck(), idempotency: IdempotencyKey(key: "k1", fingerprint: "other"))
        }
    }

    @Test func exactlyOneFinishWins() async throws {
        let (store, _) = try makeStore()
        let check = delayCheck()
        _ = try await store.createCheck(check, idempotency: nil)
        let results = try await withThrowingTaskGroup(of: Bool.self) { group in
            for state in [CheckState.done, .failed, .canceled, .done] {
                group.addTask {
                    if case .finished = try await store.finishCheck(
                        check.id,
                        as: state,
                        result: nil,
                        error: nil,
                        at: .now(),
                        requiring: .any
                    ) {
                        return true
                    }
                    return false
                }
            }
            return try await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(results.filter { $0 }.count == 1)
        let stored = try #require(try await store.check(check.id))
        #expect(stored.version == 2 && stored.state.isTerminal && stored.completedAt != nil)
    }

    @Test func onlyExternalChecksAreCompletedByTheAPI() async throws {
        let (store, _) = try makeStore()
        let check = delayCheck()
        _ = try await store.createCheck(check, idempotency: nil)
        guard
            case .wrongKind = try await store.finishCheck(
                check.id,
                as: .done,
                result: nil,
                error: nil,
                at: .now(),
                requiring: .externalKind
            )
        else {
            Issue.record("a delay check was completed externally")
            return
        }
    }

    @Test func offsetsGrowByOneAndHistoryIsBounded() async throws {
        let (store, _) = try makeStore(.init(maxEventsPerChannel: 3))
        let channel = try #require(ChannelName("orders"))
        var events: [Event] = []
        for index in 1...5 {
            events.append(try await store.append(type: "t", data: "\(index)", to: channel, at: .now()))
        }
        #expect(events.map(\.offset) == [1, 2, 3, 4, 5])
        #expect(Set(events.map(\.epoch)).count == 1)
        let kept = try await store.events(in: channel, after: 2, epoch: events[0].epoch, limit: 10)
        #expect(kept.recovered && kept.events.map(\.offset) == [3, 4, 5])
        let lost = try await store.events(in: channel, after: 1, epoch: events[0].epoch, limit: 10)
        #expect(!lost.recovered && lost.events.map(\.offset) == [3, 4, 5] && lost.next == 5)
        let otherEpoch = try await store.events(in: channel, after: 4, epoch: Epoch("stale"), limit: 10)
        #expect(!otherEpoch.recovered)
        let fromNow = try await store.events(in: channel, after: nil, epoch: nil, limit: 10)
        #expect(fromNow.recovered && fromNow.events.isEmpty && fromNow.next == 5)
    }

    @Test func aLostPositionOnACheckChannelGetsTheSnapshot() async throws {
        let (store, _) = try makeStore()
        let check = delayCheck()
        _ = try await store.createCheck(check, idempotency: nil)
        _ = try await store.finishCheck(check.id, as: .done, result: .int(1), error: nil, at: .now(), requiring: .any)
        let read = try await store.events(in: check.id.channel, after: 0, epoch: Epoch("gone"), limit: 10)
        #expect(!read.recovered && read.events.map(\.offset) == [2] && read.events[0].type == "check.done")
    }

    @Test func pruningRemovesOldEventsAndEndedChecks() async throws {
        let (store, _) = try makeStore(.init(maxEventAge: .seconds(60), checkRetention: .seconds(60)))
        let channel = try #require(ChannelName("old"))
        _ = try await store.append(type: "t", data: "1", to: channel, at: .now())
        let ended = delayCheck()
        _ = try await store.createCheck(ended, idempotency: nil)
        _ = try await store.finishCheck(ended.id, as: .done, result: nil, error: nil, at: .now(), requiring: .any)
        let running = delayCheck()
        _ = try await store.createCheck(running, idempotency: nil)
        let removed = try await store.prune(now: Timestamp.now().adding(milliseconds: 120_000))
        #expect(removed > 0)
        #expect(try await store.check(ended.id) == nil)
        #expect(try await store.check(running.id) != nil)
        let read = try await store.events(in: channel, after: 0, epoch: nil, limit: 10)
        #expect(read.events.isEmpty && read.epoch.rawValue.isEmpty)
    }

    @Test func pagingWalksEveryCheckNewestFirst() async throws {
        let (store, _) = try makeStore()
        var ids: [CheckID] = []
        for _ in 0..<7 {
            let check = delayCheck()
            ids.append(check.id)
            _ = try await store.createCheck(check, idempotency: nil)
        }
        var seen: [CheckID] = []
        var cursor: String?
        repeat {
            let page = try await store.checks(matching: CheckQuery(limit: 3, cursor: cursor))
            seen += page.checks.map(\.id)
            cursor = page.nextCursor
        } while cursor != nil
        #expect(seen == ids.reversed())
    }

    @Test func dataSurvivesReopening() async throws {
        let (store, directory) = try makeStore()
        let check = delayCheck()
        _ = try await store.createCheck(check, idempotency: nil)
        let reopened = try SQLiteStore(directory: directory, retention: .init())
        #expect(try await reopened.processingChecks().map(\.id) == [check.id])
    }
}

import Foundation
import HeraldCore
import HeraldSQLite
import HeraldStore
import Synchronization
import Testing

@testable import HeraldHub

/// The follower never skips silently: a page that the store can no longer continue, and a
/// live event of a new epoch, both produce the loss signal before what follows.
@Suite(.timeLimit(.minutes(1))) struct ChannelFollowerTests {
    private struct Done: Error {}

    /// What a transport would have written: events as `epoch:offset`, resets as `reset:epoch:next`.
    private enum Seen: Equatable, CustomStringConvertible {
        case event(String, Offset)
        case reset(String, Offset)
        var epoch: String {
            switch self {
            case .event(let epoch, _), .reset(let epoch, _): epoch
            }
        }
        var description: String {
            switch self {
            case .event(let epoch, let offset): "\(epoch):\(offset)"
            case .reset(let epoch, let next): "reset:\(epoch):\(next)"
            }
        }
    }

    private func makeStore(maxEvents: Int = 1000) throws -> SQLiteStore {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "herald-test-\(UUID().uuidString)"
        )
        return try SQLiteStore(directory: directory, retention: .init(maxEventsPerChannel: maxEvents))
    }

    @Test func eventsTrimmedWhileAReaderPagesAreAnnounced() async throws {
        let store = try makeStore(maxEvents: 5)
        let hub = Hub()
        let channel = ChannelName("orders")!
        for _ in 1...5 { _ = try await store.append(type: "t", data: "1", to: channel, at: .now()) }
        let follower = ChannelFollower(store: store, hub: hub, pageSize: 2, heartbeat: .seconds(60))
        var seen: [Seen] = []
        await #expect(throws: Done.self) {
            _ = try await follower.follow(channel, after: 0, epoch: nil) { item in
                switch item {
                case .events(let events):
                    let first = seen.isEmpty
                    seen += events.map { .event($0.event.epoch.rawValue, $0.event.offset) }
                    // While the slow reader writes its first page, ten more events trim 1...10.
                    if first {
                        for _ in 1...10 { _ = try await store.append(type: "t", data: "1", to: channel, at: .now()) }
                    }
                    if seen.last == .event(seen[0].epoch, 15) { throw Done() }
                case .reset(_, atStart: true):
                    Issue.record("the start was recovered; no reset belongs there")
                case .reset(let read, atStart: false):
                    #expect(!read.recovered)
                    seen.append(.reset(read.epoch.rawValue, read.next))
                case .heartbeat:
                    break
                }
            }
        }
        let epoch = seen[0].epoch
        #expect(seen == [.event(epoch, 1), .event(epoch, 2), .reset(epoch, 12)] + (11...15).map { .event(epoch, $0) })
    }

    /// The real store, counting the reads a follower makes.
    private final class CountingLog: ChannelLog {
        let store: SQLiteStore
        let reads = Mutex(0)
        init(_ store: SQLiteStore) { self.store = store }
        func append(type: String, data: String, to channel: ChannelName, at time: Timestamp) async throws -> Event {
            try await store.append(type: type, data: data, to: channel, at: time)
        }
        func events(in channel: ChannelName, after offset: Offset?, epoch: Epoch?, limit: Int) async throws -> EventRead
        {
            reads.withLock { $0 += 1 }
            return try await store.events(in: channel, after: offset, epoch: epoch, limit: limit)
        }
    }

    @Test func eventsAnnouncedOutOfOrderInOneBatchAreReorderedWithoutAStoreRead() async throws {
        let log = CountingLog(try makeStore())
        let hub = Hub()
        let channel = ChannelName("orders")!
        let follower = ChannelFollower(store: log, hub: hub, pageSize: 100, heartbeat: .seconds(60))
        var batches: [[Offset]] = []
        await #expect(throws: Done.self) {
            _ = try await follower.follow(channel, after: 0, epoch: nil) { item in
                guard case .events(let events) = item else { return }
                if batches.isEmpty {
                    // Caught up (nothing yet): two publishers commit 1 and 2, and 2 is announced
                    // first; both wait for the follower as one batch.
                    let first = try await log.append(type: "t", data: "1", to: channel, at: .now())
                    let second = try await log.append(type: "t", data: "2", to: channel, at: .now())
                    hub.publish(second)
                    hub.publish(first)
                }
                batches.append(events.map(\.event.offset))
                if batches.count == 2 { throw Done() }
            }
        }
        #expect(batches == [[], [1, 2]])
        #expect(log.reads.withLock { $0 } == 1)  // the start's; no hole was read from the store
    }

    @Test func aLiveEventOfANewEpochIsAnnouncedNotDropped() async throws {
        let store = try makeStore()
        let hub = Hub()
        let channel = ChannelName("quiet")!
        for _ in 1...3 { hub.publish(try await store.append(type: "t", data: "1", to: channel, at: .now())) }
        let follower = ChannelFollower(store: store, hub: hub, pageSize: 100, heartbeat: .seconds(60))
        var seen: [Seen] = []
        var dropped = false
        await #expect(throws: Done.self) {
            _ = try await follower.follow(channel, after: 3, epoch: nil) { item in
                switch item {
                case .events(let events) where events.isEmpty && !dropped:
                    // Caught up: the janitor drops the quiet channel (its events expired), and
                    // its next event starts a new epoch at offset 1.
                    dropped = true
                    let later = Timestamp(millisecondsSince1970: Timestamp.now().millisecondsSince1970 + 100_000_000)
                    _ = try await store.prune(now: later)
                    hub.publish(try await store.append(type: "t", data: "1", to: channel, at: .now()))
                case .events(let events):
                    seen += events.map { .event($0.event.epoch.rawValue, $0.event.offset) }
                    if !seen.isEmpty { throw Done() }
                case .reset(_, atStart: true):
                    Issue.record("the start was recovered; no reset belongs there")
                case .reset(let read, atStart: false):
                    seen.append(.reset(read.epoch.rawValue, read.next))
                case .heartbeat:
                    break
                }
            }
        }
        #expect(seen.count == 2)
        guard case .reset(let epoch, 1) = seen.first else {
            Issue.record("no reset first: \(seen)")
            return
        }
        #expect(seen.last == .event(epoch, 1))
    }
}

import Foundation
import HeraldCore
import HeraldSQLite
import HeraldStore
import Synchronization

/// The real store, counting the reads and running `afterRead` after each.
final class CountingLog: ChannelLog {
    let store: SQLiteStore
    let reads = Mutex(0)
    let afterRead: @Sendable (Int) async throws -> Void
    init(_ store: SQLiteStore, afterRead: @escaping @Sendable (Int) async throws -> Void = { _ in }) {
        self.store = store
        self.afterRead = afterRead
    }
    func append(type: String, data: String, to channel: ChannelName, at time: Timestamp) async throws -> Event {
        try await store.append(type: type, data: data, to: channel, at: time)
    }
    func events(in channel: ChannelName, after offset: Offset?, epoch: Epoch?, limit: Int) async throws -> EventRead {
        let read = try await store.events(in: channel, after: offset, epoch: epoch, limit: limit)
        let count = reads.withLock { count in
            count += 1
            return count
        }
        try await afterRead(count)
        return read
    }
}

func makeStore(maxEvents: Int = 1000) throws -> SQLiteStore {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
        "herald-test-\(UUID().uuidString)"
    )
    return try SQLiteStore(directory: directory, retention: .init(maxEventsPerChannel: maxEvents))
}

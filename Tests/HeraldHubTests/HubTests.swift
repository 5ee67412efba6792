import HeraldCore
import Synchronization
import Testing

@testable import HeraldHub

@Suite(.timeLimit(.minutes(1))) struct HubTests {
    let channel = ChannelName("orders")!

    private func event(_ offset: Offset) -> Event {
        Event(channel: channel, offset: offset, epoch: Epoch("e"), type: "t", time: .now(), data: "null")
    }

    @Test func aHeadNotedFromAnotherNodeNeverMovesBack() {
        let hub = Hub()
        hub.publish(event(5))
        // Another node committed 7: the head moves without an announcement.
        hub.noteHead(of: channel, .init(epoch: Epoch("e"), offset: 7))
        #expect(hub.head(of: channel) == .init(epoch: Epoch("e"), offset: 7))
        // A late, older event (this node's 6, or a stale note) leaves it there.
        hub.publish(event(6))
        hub.noteHead(of: channel, .init(epoch: Epoch("e"), offset: 6))
        #expect(hub.head(of: channel)?.offset == 7)
        // Another epoch replaces it.
        hub.noteHead(of: channel, .init(epoch: Epoch("f"), offset: 1))
        #expect(hub.head(of: channel) == .init(epoch: Epoch("f"), offset: 1))
        // Forgetting keeps only the kept channels' heads.
        let other = ChannelName("other")!
        hub.noteHead(of: other, .init(epoch: Epoch("e"), offset: 1))
        hub.forgetHeads(except: [channel])
        #expect(hub.head(of: channel) != nil && hub.head(of: other) == nil)
    }

    @Test func aWaiterIsWokenByThePublicationItself() async throws {
        let hub = Hub()
        let latest = Mutex<Offset>(0)
        let waiting = Task {
            try await hub.wait(on: channel, until: .now.advanced(by: .seconds(30))) { _ in
                let value = latest.withLock { $0 }
                return value > 0 ? value : nil
            }
        }
        while hub.waiterCount == 0 { await Task.yield() }
        latest.withLock { $0 = 1 }
        hub.publish(event(1))
        #expect(try await waiting.value == 1)
        #expect(hub.waiterCount == 0)
    }

    @Test func aChangeBetweenReadAndParkIsNotMissed() async throws {
        let hub = Hub()
        let reads = Mutex(0)
        // The first read "misses" the event, which is published before the waiter parks.
        let value = try await hub.wait(on: channel, until: .now.advanced(by: .seconds(30))) {
            (_: EncodedEvent?) -> Int? in
            let count = reads.withLock {
                $0 += 1
                return $0
            }
            if count == 1 {
                hub.publish(event(1))
                return nil
            }
            return count
        }
        #expect(value == 2)
    }

    @Test func aWaiterEndsAtItsDeadline() async throws {
        let hub = Hub()
        let running = Task { try await hub.run() }
        let value: Int? = try await hub.wait(on: channel, until: .now.advanced(by: .milliseconds(200))) { _ in nil }
        #expect(value == nil)
        running.cancel()
    }

    @Test func cancellationFreesTheWaiter() async throws {
        let hub = Hub()
        let waiting = Task {
            try await hub.wait(on: channel, until: .now.advanced(by: .seconds(30))) { (_: EncodedEvent?) -> Int? in nil
            }
        }
        while hub.waiterCount == 0 { await Task.yield() }
        waiting.cancel()
        #expect(try await waiting.value == nil)
        #expect(hub.waiterCount == 0)
    }

    @Test func otherChannelsDoNotWakeAWaiter() async throws {
        let hub = Hub()
        let reads = Mutex(0)
        let running = Task { try await hub.run() }
        let value: Int? = try await hub.wait(on: channel, until: .now.advanced(by: .milliseconds(300))) { _ in
            if reads.withLock({
                $0 += 1
                return $0
            }) == 1 {
                hub.publish(
                    Event(
                        channel: ChannelName("other")!,
                        offset: 1,
                        epoch: Epoch("e"),
                        type: "t",
                        time: .now(),
                        data: "1"
                    )
                )
            }
            return nil
        }
        #expect(value == nil && reads.withLock { $0 } == 2)
        running.cancel()
    }

    @Test func theWaiterIsHandedTheEventThatWokeIt() async throws {
        let hub = Hub()
        let waiting = Task {
            try await hub.wait(on: channel, until: .now.advanced(by: .seconds(30))) { woke in woke?.event.offset }
        }
        while hub.waiterCount == 0 { await Task.yield() }
        hub.publish(event(7))
        hub.publish(event(8))
        #expect(try await waiting.value == 7)
    }
}

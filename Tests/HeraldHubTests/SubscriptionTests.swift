import HeraldCore
import Testing

@testable import HeraldHub

@Suite(.timeLimit(.minutes(1))) struct SubscriptionTests {
    private func event(_ channel: String, _ offset: Offset) -> Event {
        Event(
            channel: ChannelName(channel)!,
            offset: offset,
            epoch: Epoch("e"),
            type: "t",
            time: .now(),
            data: "\(offset)"
        )
    }

    private func offsets(_ delivery: Delivery) -> [Offset]? {
        if case .events(let batch) = delivery { return batch.map(\.event.offset) }
        return nil
    }

    @Test func queuedEventsArriveTogetherInOrder() async throws {
        let hub = Hub()
        let delivery = try await hub.withSubscription(to: ChannelName("a")!) { subscription in
            for offset: Offset in 1...3 { hub.publish(event("a", offset)) }
            hub.publish(event("other", 1))
            return await subscription.next(heartbeat: .seconds(30))
        }
        #expect(offsets(delivery) == [1, 2, 3])
        #expect(hub.subscriberCount == 0)
    }

    @Test func aSubscriberPastItsBoundIsCutOff() async throws {
        let hub = Hub(limits: SubscriberLimits(maxQueuedEvents: 2, maxQueuedBytes: 1 << 20))
        let delivery = try await hub.withSubscription(to: ChannelName("a")!) { subscription in
            for offset: Offset in 1...3 { hub.publish(event("a", offset)) }
            return await subscription.next(heartbeat: .seconds(30))
        }
        guard case .slowConsumer = delivery else {
            Issue.record("expected the cut, got \(delivery)")
            return
        }
    }

    @Test func aSlowCheckSubscriberIsCoalescedToTheLatestState() async throws {
        let hub = Hub(limits: SubscriberLimits(maxQueuedEvents: 2, maxQueuedBytes: 1 << 20))
        let channel = "check:AAAAAAAAAAAAAAAAAAAAAA"
        let delivery = try await hub.withSubscription(to: ChannelName(channel)!) { subscription in
            for offset: Offset in 1...3 { hub.publish(event(channel, offset)) }
            return await subscription.next(heartbeat: .seconds(30))
        }
        #expect(offsets(delivery) == [3])
    }

    @Test func aParkedSubscriberIsWokenByThePublication() async throws {
        let hub = Hub()
        let delivery = try await hub.withSubscription(to: ChannelName("a")!) { subscription in
            async let next = subscription.next(heartbeat: .seconds(30))
            try await Task.sleep(for: .milliseconds(50))
            hub.publish(event("a", 1))
            return await next
        }
        #expect(offsets(delivery) == [1])
    }

    @Test func anIdleSubscriberGetsAHeartbeat() async throws {
        let hub = Hub()
        let running = Task { try await hub.run() }
        let delivery = try await hub.withSubscription(to: ChannelName("a")!) { subscription in
            await subscription.next(heartbeat: .milliseconds(100))
        }
        running.cancel()
        guard case .heartbeat = delivery else {
            Issue.record("expected a heartbeat, got \(delivery)")
            return
        }
    }

    @Test func cancellationEndsTheWait() async throws {
        let hub = Hub()
        let waiting = Task {
            try await hub.withSubscription(to: ChannelName("a")!) { subscription in
                await subscription.next(heartbeat: .seconds(30))
            }
        }
        while hub.subscriberCount == 0 { await Task.yield() }
        waiting.cancel()
        guard case .ended = try await waiting.value else {
            Issue.record("expected the end")
            return
        }
    }
}

package import HeraldCore
internal import HeraldStore

/// The position a follower emitted last `(epoch, last)`, and whether a check's terminal event
/// was: the rules every streaming transport follows (dedupe, holes, a check's end).
package struct FollowCursor: Sendable {
    /// Where a live event stands against the cursor.
    package enum Placement { case next, duplicate, beyond }

    package let isCheck: Bool
    package var epoch: Epoch
    package var last: Offset
    package var isEnded = false

    package init(isCheck: Bool, epoch: Epoch, last: Offset) {
        self.isCheck = isCheck
        self.epoch = epoch
        self.last = last
    }

    /// Only the next offset of the same epoch follows directly (a channel with no history
    /// yet has an empty epoch and takes the first event's). Anything else of another epoch
    /// is `beyond`, never a duplicate, whatever its offset.
    package func place(_ event: Event) -> Placement {
        guard epoch.rawValue.isEmpty || event.epoch == epoch else { return .beyond }
        if event.offset <= last { return .duplicate }
        return event.offset == last + 1 ? .next : .beyond
    }

    /// After a reset: continue just before the first kept event, in its epoch.
    package mutating func restart(at read: EventRead) {
        epoch = read.epoch
        last = read.events.first.map { $0.offset - 1 } ?? read.next
    }

    /// The events after `last`, in order, up to and including a check's terminal event.
    package mutating func take(_ events: [EncodedEvent]) -> [EncodedEvent] {
        var taken: [EncodedEvent] = []
        for encoded in events where encoded.event.offset > last && !isEnded {
            taken.append(encoded)
            advance(past: encoded.event)
        }
        return taken
    }

    /// Moves past `event`, which follows `last` (``place(_:)`` said `.next`); a check's terminal
    /// event ends the cursor.
    package mutating func advance(past event: Event) {
        last = event.offset
        epoch = event.epoch
        if isCheck && event.type.hasPrefix("check.") && event.type != "check.created" && event.type != "check.updated" {
            isEnded = true
        }
    }

    /// Concurrent publishers' announcements may come out of order; within one batch (one
    /// epoch) order is restored here, so no store read fills a hole whose event is right
    /// there. A batch in order (the usual) is returned as it is.
    package static func ordered(_ batch: [EncodedEvent]) -> [EncodedEvent] {
        guard zip(batch, batch.dropFirst()).contains(where: { $0.event.offset > $1.event.offset }),
            batch.allSatisfy({ $0.event.epoch == batch[0].event.epoch })
        else { return batch }
        return batch.sorted { $0.event.offset < $1.event.offset }
    }
}

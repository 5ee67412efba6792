/// One entry of a channel's log, as every transport carries it.
///
/// `data` is kept as the JSON text it was stored as, so an event is encoded once and the
/// same bytes go to every subscriber.
package struct Event: Sendable, Hashable {
    package var channel: ChannelName
    package var offset: Offset
    package var epoch: Epoch
    package var type: String
    package var time: Timestamp
    /// Valid JSON text: the published data, or the check document for check events.
    package var data: String

    package init(channel: ChannelName, offset: Offset, epoch: Epoch, type: String, time: Timestamp, data: String) {
        self.channel = channel
        self.offset = offset
        self.epoch = epoch
        self.type = type
        self.time = time
        self.data = data
    }

    /// The event as JSON: `{"channel", "offset", "epoch", "type", "time", "data"}`.
    package var json: String {
        var writer = JSONWriter()
        writer.string("channel", channel.rawValue)
        writer.int("offset", offset)
        writer.string("epoch", epoch.rawValue)
        writer.string("type", type)
        writer.string("time", time.rfc3339)
        writer.raw("data", data)
        return writer.result
    }

    /// What a publisher is told when its type is missing or not acceptable.
    package static let typeRule = "type is required: 1 to 100 of A-Z a-z 0-9 _ - . :"

    /// Whether `type` is an acceptable event type: 1 to 100 of `A-Z a-z 0-9 _ - . :`.
    package static func isValidType(_ type: String) -> Bool {
        (1...100).contains(type.utf8.count)
            && type.utf8.allSatisfy { byte in
                (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte)
                    || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-") || byte == UInt8(ascii: ".")
                    || byte == UInt8(ascii: ":")
            }
    }
}

/// What a reader gets from a channel's log after a position.
package struct EventRead: Sendable, Hashable {
    /// The channel's current epoch (a fresh one when the channel has no history yet).
    package var epoch: Epoch
    /// `false` when the position asked for is gone (older than the kept history, or another
    /// epoch): then `events` is what is still kept, and the reader knows it missed some.
    package var recovered: Bool
    /// Events after the position, oldest first.
    package var events: [Event]
    /// The offset to resume after next time: the last event's offset, or the channel's last.
    package var next: Offset

    package init(epoch: Epoch, recovered: Bool, events: [Event], next: Offset) {
        self.epoch = epoch
        self.recovered = recovered
        self.events = events
        self.next = next
    }

    /// The poll answer: `{"channel", "epoch", "recovered", "next", "events"}`.
    package func json(channel: ChannelName) -> String {
        var writer = JSONWriter()
        writer.string("channel", channel.rawValue)
        writer.string("epoch", epoch.rawValue)
        writer.bool("recovered", recovered)
        writer.int("next", next)
        writer.raw("events", jsonArray(events.lazy.map(\.json)))
        return writer.result
    }

    /// The loss signal of streams: `{"type": "herald.reset", "channel", "epoch", "recovered": false, "next"}`.
    package func resetJSON(channel: ChannelName) -> String {
        markerJSON(type: "herald.reset", channel: channel, next: next)
    }

    /// The first message of a stream opened with `welcome=1`, proof that messages flow:
    /// `{"type": "herald.welcome", "channel", "epoch", "recovered", "next"}`, where `next` is
    /// the offset the stream continues after.
    package func welcomeJSON(channel: ChannelName) -> String {
        markerJSON(type: "herald.welcome", channel: channel, next: events.first.map { $0.offset - 1 } ?? next)
    }

    private func markerJSON(type: String, channel: ChannelName, next: Offset) -> String {
        var writer = JSONWriter()
        writer.string("type", type)
        writer.string("channel", channel.rawValue)
        writer.string("epoch", epoch.rawValue)
        writer.bool("recovered", recovered)
        writer.int("next", next)
        return writer.result
    }
}

package import HeraldCore
internal import HeraldStore
internal import PostgresNIO

extension PostgresStore: ChannelLog {
    package func append(type: String, data: String, to channel: ChannelName, at time: Timestamp) async throws -> Event {
        let maxEvents = retention.maxEventsPerChannel
        return try await transaction { connection in
            let (event, subscribed) = try await Self.append(
                connection,
                type: type,
                data: data,
                to: channel,
                at: time,
                maxEvents: maxEvents,
                self.logger
            )
            try await Self.enqueueDeliveries(for: event, of: nil, subscribed: subscribed, connection, self.logger)
            return event
        }
    }

    /// Appends in the caller's transaction, in one statement (one round trip): the channel's
    /// next offset, the event, the history trimmed to `maxEvents`, and whether an active webhook
    /// subscription wants the event. The upsert locks the channel's row until commit, so appends
    /// to one channel take their offsets, and commit, one after another, on any node.
    static func append(
        _ connection: PostgresConnection,
        type: String,
        data: String,
        to channel: ChannelName,
        at time: Timestamp,
        maxEvents: Int?,
        _ logger: Logger
    ) async throws -> (event: Event, subscribed: Bool) {
        let keep = maxEvents.map(Offset.init)  // nil: a check's channel keeps everything
        let rows = try await connection.query(
            """
            WITH head AS (
              INSERT INTO channels (name, epoch, last_offset, updated_at)
              VALUES (\(channel.rawValue), \(Epoch.random().rawValue), 1, \(time.millisecondsSince1970))
              ON CONFLICT (name) DO UPDATE SET last_offset = channels.last_offset + 1, updated_at = EXCLUDED.updated_at
              RETURNING epoch, last_offset),
            appended AS (
              INSERT INTO events (channel, "offset", type, time, data)
              SELECT \(channel.rawValue), last_offset, \(type), \(time.millisecondsSince1970), \(data) FROM head),
            trimmed AS (
              DELETE FROM events WHERE channel = \(channel.rawValue)
                AND "offset" <= (SELECT last_offset FROM head) - \(keep))
            SELECT epoch, last_offset, EXISTS (SELECT 1 FROM subscriptions
              WHERE disabled_at IS NULL AND herald_event_matches(event, \(type))) FROM head
            """,
            logger: logger
        )
        var appended: (String, Int64, Bool)?
        for try await row in rows.decode((String, Int64, Bool).self) { appended = row }
        guard let (epoch, offset, subscribed) = appended else {
            throw HeraldError(.internal, "the append returned no row")
        }
        let event = Event(channel: channel, offset: offset, epoch: Epoch(epoch), type: type, time: time, data: data)
        return (event, subscribed)
    }

    package func events(
        in channel: ChannelName,
        after offset: Offset?,
        epoch: Epoch?,
        limit: Int
    ) async throws -> EventRead {
        // The head and the events from one snapshot, as SQLite reads them.
        try await snapshot { connection in
            try await Self.readEvents(connection, in: channel, after: offset, epoch: epoch, limit: limit, self.logger)
        }
    }

    private static func readEvents(
        _ connection: PostgresConnection,
        in channel: ChannelName,
        after offset: Offset?,
        epoch: Epoch?,
        limit: Int,
        _ logger: Logger
    ) async throws -> EventRead {
        let rows = try await connection.query(
            """
            SELECT epoch, last_offset, (SELECT MIN("offset") FROM events WHERE channel = name)
            FROM channels WHERE name = \(channel.rawValue)
            """,
            logger: logger
        )
        var head: (String, Int64, Int64?)?
        for try await row in rows.decode((String, Int64, Int64?).self) { head = row }
        guard let (epochText, last, kept) = head else {
            // No history yet: any position at 0 (or "now") is current; anything else is lost.
            return EventRead(epoch: Epoch(""), recovered: (offset ?? 0) == 0, events: [], next: 0)
        }
        let current = Epoch(epochText)
        guard let offset else { return EventRead(epoch: current, recovered: true, events: [], next: last) }
        let first = kept ?? (last + 1)
        if current.accepts(epoch) && offset >= first - 1 && offset <= last {
            let events = try await fetchEvents(connection, channel, epoch: current, after: offset, limit: limit, logger)
            return EventRead(epoch: current, recovered: true, events: events, next: events.last?.offset ?? offset)
        }
        // The position is gone. A check channel's latest event carries the full check.
        let events =
            channel.isCheckChannel
            ? try await fetchEvents(connection, channel, epoch: current, after: last - 1, limit: 1, logger)
            : try await fetchEvents(connection, channel, epoch: current, after: first - 1, limit: limit, logger)
        return EventRead(epoch: current, recovered: false, events: events, next: events.last?.offset ?? last)
    }

    private static func fetchEvents(
        _ connection: PostgresConnection,
        _ channel: ChannelName,
        epoch: Epoch,
        after offset: Offset,
        limit: Int,
        _ logger: Logger
    ) async throws -> [Event] {
        let rows = try await connection.query(
            """
            SELECT "offset", type, time, data FROM events
            WHERE channel = \(channel.rawValue) AND "offset" > \(offset) ORDER BY "offset" LIMIT \(limit)
            """,
            logger: logger
        )
        var events: [Event] = []
        for try await (offset, type, time, data) in rows.decode((Int64, String, Int64, String).self) {
            events.append(
                Event(
                    channel: channel,
                    offset: offset,
                    epoch: epoch,
                    type: type,
                    time: Timestamp(millisecondsSince1970: time),
                    data: data
                )
            )
        }
        return events
    }
}

extension PostgresStore {
    /// The newest event of each of `channels` that has one, in one query: what a node reads when
    /// another node tells it a channel moved.
    package func latestEvents(in channels: [ChannelName]) async throws -> [Event] {
        guard !channels.isEmpty else { return [] }
        return try await withConnection { connection in
            let rows = try await connection.query(
                """
                SELECT channels.name, channels.epoch, events."offset", events.type, events.time, events.data
                FROM channels JOIN events ON events.channel = channels.name AND events."offset" = channels.last_offset
                WHERE channels.name = ANY(\(channels.map(\.rawValue)))
                """,
                logger: self.logger
            )
            var events: [Event] = []
            for try await (name, epoch, offset, type, time, data) in rows.decode(
                (String, String, Int64, String, Int64, String).self
            ) {
                guard let channel = ChannelName(name) else { continue }
                events.append(
                    Event(
                        channel: channel,
                        offset: offset,
                        epoch: Epoch(epoch),
                        type: type,
                        time: Timestamp(millisecondsSince1970: time),
                        data: data
                    )
                )
            }
            return events
        }
    }
}

package import HeraldCore
package import HeraldHub
package import HeraldPostgres
package import Logging
internal import PostgresNIO
internal import ServiceLifecycle
internal import Synchronization

/// The broker of a cluster: an event this node committed goes to its own hub at once, and its
/// position to the other nodes through PostgreSQL's `NOTIFY`; a node that hears of a position it
/// has not seen reads the event from the store, if anyone there follows its channel.
///
/// The database decides, notifications only wake: they carry positions, never the event, and a
/// lost one only delays. Positions are coalesced per channel and sent by one notifier task, a
/// few `pg_notify` calls per batch rather than one per event (a `NOTIFY` takes a database-wide
/// lock at commit). The listening connection is a dedicated one, apart from the pool; after
/// every (re)connection the node forgets its channel heads and reads the latest event of every
/// channel it follows, and a slow poll (`backstop`) does the same, so a notification lost with a
/// connection, a PostgreSQL restart or a network cut costs at most one backstop period.
package final class PostgresBroker: Broker, Service {
    /// The `LISTEN`/`NOTIFY` channel of the nodes on `schema` (notifications are database-wide).
    /// A schema whose name is not a plain identifier, or too long, gets a hash of its name too,
    /// so two schemas never share a channel.
    static func notifyChannel(schema: String?) -> String {
        let schema = schema ?? "public"
        let plain = schema.filter { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "_") }
        let name = "herald_events_" + plain
        if plain == schema && name.utf8.count <= 63 { return name }
        // FNV-1a: stable across processes and machines, unlike `hashValue`.
        let hash = schema.utf8.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
        let suffix = "_" + String(hash, radix: 16)
        return String(name.prefix(63 - suffix.utf8.count)) + suffix
    }
    /// Most channels one notifier pass names; past it, a pass tells every node to catch up.
    static let maxPending = 10_000
    /// A payload's limit is 8,000 bytes; leave room.
    static let maxPayload = 7_000

    private struct State {
        /// The newest position per channel not yet sent to the other nodes.
        var pending: [ChannelName: Hub.Head] = [:]
        var overflowed = false
        var listening = false
    }

    private let store: PostgresStore
    private let hub: Hub
    private let node: String
    private let listenURL: PostgresURL
    private let backstop: Duration
    private let logger: Logger
    private let onRemoteEvent: @Sendable () -> Void
    private let channel: String
    private let state = Mutex(State())
    private let doorbell: AsyncStream<Void>
    private let ring: AsyncStream<Void>.Continuation

    /// - Parameters:
    ///   - node: this node's id; its own notifications are ignored.
    ///   - onRemoteEvent: called when another node published (the webhook dispatcher's
    ///     doorbell: the event's deliveries were committed with it).
    package init(
        store: PostgresStore,
        hub: Hub,
        node: String,
        url: PostgresURL,
        backstop: Duration = .seconds(2),
        logger: Logger,
        onRemoteEvent: @escaping @Sendable () -> Void = {}
    ) {
        self.store = store
        self.hub = hub
        self.node = node
        self.listenURL = url
        self.backstop = backstop
        self.logger = logger
        self.onRemoteEvent = onRemoteEvent
        self.channel = Self.notifyChannel(schema: url.searchPath)
        (doorbell, ring) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Whether the notification connection is listening (for `/readyz`).
    package var isListening: Bool { state.withLock { $0.listening } }

    package func publish(_ event: Event) {
        hub.publish(event)
        state.withLock { state in
            let pending = state.pending[event.channel]
            // The newest of the epoch wins, whatever order the publishes came in.
            if let pending, pending.epoch == event.epoch && pending.offset >= event.offset { return }
            if pending == nil && state.pending.count >= Self.maxPending {
                state.overflowed = true
            } else {
                state.pending[event.channel] = Hub.Head(epoch: event.epoch, offset: event.offset)
            }
        }
        ring.yield()
    }

    package func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.notify() }
                group.addTask { await self.listen() }
                group.addTask { await self.poll() }
            }
        }
    }

    // MARK: Sending

    private func notify() async {
        for await _ in doorbell {
            let (pending, overflowed) = state.withLock { state in
                defer { (state.pending, state.overflowed) = ([:], false) }
                return (state.pending, state.overflowed)
            }
            let payloads = Self.payloads(node: node, pending.map { ($0.key, $0.value) }, everything: overflowed)
            do {
                for payload in payloads {
                    try await store.notify(channel, payload)
                }
            } catch {
                // The other nodes' backstop finds these events; keep trying with the next ones.
                logger.warning("cannot notify the other nodes", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }

    /// `node`, then one line per channel (`epoch offset channel`), in payloads of at most
    /// ``maxPayload`` bytes; a line `*` alone asks every node to catch up everything.
    static func payloads(node: String, _ positions: [(ChannelName, Hub.Head)], everything: Bool) -> [String] {
        var payloads: [String] = []
        var current = node
        if everything { current += "\n*" }
        for (channel, position) in positions {
            let line = "\n\(position.epoch.rawValue) \(position.offset) \(channel.rawValue)"
            if current.utf8.count + line.utf8.count > maxPayload {
                payloads.append(current)
                current = node
            }
            current += line
        }
        if current != node { payloads.append(current) }
        return payloads
    }

    // MARK: Receiving

    private func listen() async {
        var delay = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                let configuration = try listenURL.connection()
                let connection = try await PostgresConnection.connect(
                    configuration: configuration,
                    id: 0,
                    logger: logger
                )
                defer { Task { try? await connection.close() } }
                try await connection.listen(on: channel) { notifications in
                    state.withLock { $0.listening = true }
                    delay = .milliseconds(100)
                    // Whatever was published while this node was not listening.
                    await catchUpEverything()
                    try await withThrowingTaskGroup { group in
                        group.addTask {
                            for try await notification in notifications {
                                await self.receive(notification.payload)
                            }
                        }
                        group.addTask { try await self.probe(connection) }
                        // Either ends with the connection: it is given up and made again.
                        _ = try await group.next()
                        group.cancelAll()
                    }
                }
            } catch {
                if Task.isCancelled { break }
                logger.warning("the notification connection failed; reconnecting", metadata: ["error": "\(error)"])
            }
            state.withLock { $0.listening = false }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
        state.withLock { $0.listening = false }
    }

    /// How long the listening connection may take to answer a probe, asked every `backstop`.
    static let probeTimeout: Duration = .seconds(5)

    /// Asks the listening connection a `SELECT 1` every `backstop`: a connection whose path went
    /// silent (a half-open TCP connection, with no reset) would otherwise wait for notifications
    /// forever while `/readyz` said all is well. Throws when an answer is late or fails.
    private func probe(_ connection: PostgresConnection) async throws {
        struct Silent: Error, CustomStringConvertible {
            var description: String {
                "the notification connection did not answer within \(PostgresBroker.probeTimeout)"
            }
        }
        while true {
            try await Task.sleep(for: backstop)
            try await withThrowingTaskGroup { group in
                group.addTask { try await connection.query("SELECT 1", logger: self.logger) }
                group.addTask {
                    try await Task.sleep(for: Self.probeTimeout)
                    // A query is not cancelled by its task: closing the connection fails it (and
                    // ends the notifications).
                    try? await connection.close()
                    throw Silent()
                }
                _ = try await group.next()
                group.cancelAll()
            }
        }
    }

    private func receive(_ payload: String) async {
        var lines = payload.split(separator: "\n", omittingEmptySubsequences: true)[...]
        guard let sender = lines.popFirst(), sender != node else { return }
        onRemoteEvent()
        var behind: [ChannelName] = []
        var heads: [ChannelName: Hub.Head] = [:]
        for line in lines {
            if line == "*" {
                await catchUpEverything()
                return
            }
            let fields = line.split(separator: " ", maxSplits: 2)
            guard fields.count == 3, let offset = Offset(fields[1]), let channel = ChannelName(fields[2]) else {
                continue
            }
            let position = Hub.Head(epoch: Epoch(String(fields[0])), offset: offset)
            let known = hub.head(of: channel)
            if known == position { continue }
            // Note first, then look: a reader that registers after the look reads the store.
            hub.noteHead(of: channel, position)
            guard hub.isFollowed(channel) else { continue }
            behind.append(channel)
            heads[channel] = known
        }
        await announceLatest(behind, announced: heads)
    }

    /// Most events a node reads to announce what another node published since the head it knew;
    /// past it (or in another epoch) it announces the latest, and followers read the rest.
    static let maxRange: Offset = 64

    /// Announces the events of `channel` after `known`, in order: when several were published
    /// between two notifications, the followers get them all from the hub, instead of each
    /// reading the hole before the latest from the store.
    private func announce(_ channel: ChannelName, after known: Hub.Head) async {
        do {
            let read = try await store.events(
                in: channel,
                after: known.offset,
                epoch: known.epoch,
                limit: Int(Self.maxRange)
            )
            // In another epoch now: its latest is enough, the followers reset from the store.
            for event in read.recovered ? read.events : read.events.suffix(1) { hub.publish(event) }
        } catch {
            hub.forgetHeads(except: [])
            logger.warning("cannot read the events other nodes published", metadata: ["error": "\(error)"])
        }
    }

    /// Reads the latest event of each channel and gives the hub those past what it had
    /// (`announced`; a head noted from a notification is not an announcement). When more than
    /// one event came since (published meanwhile), those are read and announced in order, so
    /// the followers need not each read the hole from the store.
    private func announceLatest(_ channels: [ChannelName], announced: [ChannelName: Hub.Head]) async {
        var start = channels.startIndex
        while start < channels.endIndex {
            let end = channels.index(start, offsetBy: 500, limitedBy: channels.endIndex) ?? channels.endIndex
            do {
                for event in try await store.latestEvents(in: Array(channels[start..<end])) {
                    guard let head = announced[event.channel], head.epoch == event.epoch else {
                        hub.publish(event)
                        continue
                    }
                    if head.offset >= event.offset { continue }
                    if event.offset - head.offset > 1 && event.offset - head.offset <= Self.maxRange {
                        await announce(event.channel, after: head)
                    } else {
                        hub.publish(event)
                    }
                }
            } catch {
                // Their heads may have been noted: forget every head, so the backstop announces them.
                hub.forgetHeads(except: [])
                logger.warning("cannot read the events other nodes published", metadata: ["error": "\(error)"])
            }
            start = end
        }
    }

    /// What a lost notification would have said: the heads of channels nobody here follows are
    /// forgotten, and every followed channel whose latest event is newer than its head is announced.
    private func catchUpEverything() async {
        let followed = hub.followedChannels
        hub.forgetHeads(except: followed)
        var heads: [ChannelName: Hub.Head] = [:]
        for channel in followed { heads[channel] = hub.head(of: channel) }
        await announceLatest(Array(followed), announced: heads)
        onRemoteEvent()
    }

    /// The backstop: every `backstop`, what a lost notification would have said.
    private func poll() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: backstop)
            if Task.isCancelled { return }
            await catchUpEverything()
        }
    }
}

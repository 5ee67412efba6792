import ArgumentParser
import Foundation
import HeraldClient
import Synchronization

/// Where the client commands find Herald.
struct ServerOptions: ParsableArguments {
    @Option(help: "Herald's URL (HERALD_URL, default http://127.0.0.1:8080).") var url: String?
    @Option(name: .customLong("api-key"), help: "Server API key, for publish (HERALD_API_KEY).") var apiKey: String?
    @Option(help: "Client token, for private channels and token rights (HERALD_TOKEN).") var token: String?

    var client: HeraldClient {
        let environment = ProcessInfo.processInfo.environment
        return HeraldClient(
            url: url ?? environment["HERALD_URL"] ?? "http://127.0.0.1:8080",
            apiKey: apiKey ?? environment["HERALD_API_KEY"],
            token: token ?? environment["HERALD_TOKEN"]
        )
    }
}

/// `--transport auto|websocket|sse|ndjson|long-polling`.
struct TransportOption: ParsableArguments {
    @Option(help: "auto (race them all, the default), websocket (or ws), sse, ndjson or long-polling.")
    var transport = "auto"

    func transports() throws -> [Transport] {
        if transport == "auto" { return Transport.allCases }
        guard let one = transport == "ws" ? .websocket : Transport(rawValue: transport) else {
            throw ValidationError(
                "--transport must be auto, websocket, sse, ndjson or long-polling, not '\(transport)'"
            )
        }
        return [one]
    }
}

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Create checks.",
        subcommands: [Create.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a check and print it; with --watch, follow it live until it ends."
        )

        @OptionGroup var server: ServerOptions
        @OptionGroup var transport: TransportOption
        @Option(help: "delay, http, tcp or external.") var kind: String
        @Option(help: #"The check's params as JSON, e.g. '{"ms": 2000}'."#) var params = "{}"
        @Flag(help: "Follow the check until it ends, then print it; exit 1 unless it is done.") var watch = false

        func run() async throws {
            let parameters: HeraldJSON
            do {
                parameters = try HeraldJSON(parsing: params)
            } catch {
                throw ValidationError("--params must be JSON: \(params)")
            }
            let client = server.client
            let check = try await client.createCheck(kind: kind, params: parameters)
            guard watch, let id = check["id"]?.string else { return print(check) }
            try await watchToEnd(id, client: client, transports: try transport.transports())
        }
    }
}

struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Follow a check live until it ends, then print it; exit 1 unless it is done."
    )

    @OptionGroup var server: ServerOptions
    @OptionGroup var transport: TransportOption
    @Argument(help: "The check's id.") var id: String

    func run() async throws {
        try await watchToEnd(id, client: server.client, transports: try transport.transports())
    }
}

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish an event to a channel (needs the API key) and print it."
    )

    @OptionGroup var server: ServerOptions
    @Argument(help: "The channel.") var channel: String
    @Option(help: "The event's type.") var type = "message"
    @Option(help: "The event's data as JSON.") var data = "null"

    func run() async throws {
        let value: HeraldJSON
        do {
            value = try HeraldJSON(parsing: data)
        } catch {
            throw ValidationError("--data must be JSON: \(data)")
        }
        let event = try await server.client.publish(channel, type: type, data: value)
        print(try encodeLine(event))
    }
}

struct SubscribeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscribe",
        abstract: "Print a channel's events as they come, one JSON per line (NDJSON), until interrupted.",
        discussion: "Transport changes, cuts and lost positions are reported on standard error."
    )

    @OptionGroup var server: ServerOptions
    @OptionGroup var transport: TransportOption
    @Argument(help: "The channel.") var channel: String
    @Option(help: "Start after this offset (default: from now).") var since: Int?
    @Option(help: "The epoch --since belongs to. Pass it as --epoch=<epoch>: an epoch may begin with '-'.")
    var epoch = ""

    func run() async throws {
        let position = since.map { Position(epoch: epoch, offset: $0) }
        for try await update in server.client.events([channel: position], transports: try transport.transports()) {
            switch update {
            case .event(let event):
                FileHandle.standardOutput.write(Data((try encodeLine(event) + "\n").utf8))
            case .transport(let name): note("connected over \(name.rawValue)")
            case .gap(let channel, let epoch):
                note("position lost on \(channel) (epoch now \(epoch)); what is kept follows")
            case .disconnected(let reason): note("disconnected: \(reason); resuming")
            }
        }
    }
}

/// Follows check `id` to its end and prints it; exit 1 unless it is done.
func watchToEnd(_ id: String, client: HeraldClient, transports: [Transport]) async throws {
    let ended = try await follow(id, client: client, transports: transports)
    print(ended)
    if ended["state"]?.string != "done" { throw ExitCode(1) }
}

/// Follows check `id` to its end, drawing its live state on standard error: a spinner with
/// the state, elapsed time and transport on a terminal, one line per change otherwise.
func follow(_ id: String, client: HeraldClient, transports: [Transport]) async throws -> HeraldJSON {
    let progress = Progress(id: id, animated: isatty(STDERR_FILENO) != 0)
    let spinner =
        progress.animated
        ? Task {
            while !Task.isCancelled {
                progress.draw()
                try? await Task.sleep(for: .milliseconds(100))
            }
        } : nil
    defer { spinner?.cancel() }
    for try await update in client.events(["check:\(id)": nil], transports: transports) {
        switch update {
        case .transport(let name): progress.update { $0.via = " via \(name.rawValue)" }
        case .event(let event):
            progress.update { $0.state = event.data["state"]?.string ?? $0.state }
            if event.endsCheck {
                spinner?.cancel()
                progress.draw(final: true)
                return event.data
            }
        case .disconnected: progress.update { $0.state = "reconnecting" }
        case .gap: break
        }
    }
    throw HeraldClientError("the check's stream ended before the check did")
}

/// The live line of `herald check create --watch` and `herald watch`.
final class Progress: Sendable {
    struct Line {
        var state = "connecting"
        var via = ""
        var frame = 0
    }

    let id: String
    let animated: Bool
    private let started = ContinuousClock.now
    private let line = Mutex(Line())

    init(id: String, animated: Bool) {
        self.id = id
        self.animated = animated
    }

    func update(_ change: (inout Line) -> Void) {
        let changed = line.withLock { line in
            let before = (line.state, line.via)
            change(&line)
            return before != (line.state, line.via)
        }
        if changed && !animated { draw() }
    }

    func draw(final: Bool = false) {
        let elapsed = (ContinuousClock.now - started).components
        let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
        let text = line.withLock { line in
            line.frame += 1
            let mark = final ? "✓" : animated ? String(Array("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")[line.frame % 10]) : "…"
            return "\(mark) \(id) \(line.state) \(String(format: "%.1f", seconds))s\(line.via)"
        }
        if animated {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + text + (final ? "\n" : "")).utf8))
        } else {
            note(text)
        }
    }
}

func encodeLine(_ event: ChannelEvent) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(event), as: UTF8.self)
}

func note(_ line: String) {
    FileHandle.standardError.write(Data((line + "\n").utf8))
}

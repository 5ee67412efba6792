internal import Foundation
internal import HTTPTypes
internal import Hummingbird
internal import Logging
internal import NIOCore
internal import Synchronization

/// Runs tasks on one event loop: a task started with this preference runs its jobs on the
/// loop's thread, so routing a request from a handler and writing its answer back need no
/// thread hop (two futex wake-ups per request otherwise). The route's own awaits (a store
/// read) still run where they run; only the continuations come back to the loop.
final class LoopExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) {
        self.loop = loop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// Routing for the handlers that serve a request on its event loop (``StreamConnection``,
/// ``LoopRequest``): the router runs in a short task with a ``StreamTakeover`` slot set, so every
/// middleware (CORS, problems, authorization) runs as for any request.
enum LoopRouting {
    /// The router's answer, and the slot in which its route left a plan, if it did.
    static func respond<Responder: HTTPResponder>(
        to request: Request,
        serving kind: StreamTakeover.Kind,
        responder: Responder,
        channel: any Channel,
        logger: Logger
    ) async -> (Response, StreamTakeover) where Responder.Context == HeraldRequestContext {
        let takeover = StreamTakeover(kind)
        let context = HeraldRequestContext(source: .init(channel: channel, logger: logger))
        do {
            let response = try await StreamTakeover.$current.withValue(takeover) {
                try await responder.respond(to: request, context: context)
            }
            return (response, takeover)
        } catch {
            logger.debug("unrecognised error", metadata: ["error.type": "\(error)"])
            return (Response(status: .internalServerError), StreamTakeover(kind))
        }
    }
}

extension ResponseBody {
    /// The whole body, for a handler that writes it in one piece with its length.
    consuming func collect() async throws -> ByteBuffer {
        let collected = CollectedBody()
        try await write(CollectingBodyWriter(into: collected))
        return collected.buffer
    }
}

private final class CollectedBody {
    var buffer = ByteBuffer()
}

private struct CollectingBodyWriter: ResponseBodyWriter {
    let into: CollectedBody

    mutating func write(_ buffer: ByteBuffer) async throws {
        var buffer = buffer
        into.buffer.writeBuffer(&buffer)
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {}
}

/// The `Date` header's value (RFC 9110 IMF-fixdate).
enum HTTPDate {
    /// The value for the current second, made once a second.
    private static let latest = Mutex<(second: Int, value: String)>((0, ""))

    static var now: String {
        let second = time(nil)
        if let value = latest.withLock({ $0.second == second ? $0.value : nil }) { return value }
        let value = format(second)
        latest.withLock { $0 = (second, value) }
        return value
    }

    private static func format(_ second: Int) -> String {
        var seconds = second
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        return String(
            format: "%@, %02d %@ %04d %02d:%02d:%02d GMT",
            days[Int(parts.tm_wday)],
            parts.tm_mday,
            months[Int(parts.tm_mon)],
            parts.tm_year + 1900,
            parts.tm_hour,
            parts.tm_min,
            parts.tm_sec
        )
    }
}

internal import AsyncHTTPClient
package import HeraldCore
package import HeraldNet
internal import HeraldStore
internal import NIOCore
internal import NIOHTTP1
internal import NIOPosix

/// How a built-in check ended: a state with its result or error.
package struct CheckOutcome: Sendable, Hashable {
    package var state: CheckState
    package var result: JSONValue?
    package var error: JSONValue?

    package static func done(_ result: JSONValue?) -> CheckOutcome { .init(state: .done, result: result, error: nil) }
    package static func failed(code: String, _ message: String) -> CheckOutcome {
        .init(state: .failed, result: nil, error: Check.errorValue(code: code, message: message))
    }
}

/// Runs the network kinds (`http`, `tcp`) against the address the guard approved.
package struct NetworkProbe: Sendable {
    package var resolver: TargetResolver
    /// At most this much of a GET body is read (and then dropped): 1 MiB.
    package static let maxBodyBytes = 1 << 20

    package init(resolver: TargetResolver) {
        self.resolver = resolver
    }

    /// Requests `url`; done with `status`, `latency_ms`, `ok` when the target answered,
    /// failed when it was refused by the guard, could not be reached, or timed out.
    package func http(
        url text: String,
        method: String,
        expectStatus: Int,
        timeoutMilliseconds: Int64
    ) async
        -> CheckOutcome
    {
        let start = ContinuousClock.now
        let url: TargetURL
        let address: IPAddress
        do {
            url = try TargetURL(text, field: "params.url")
            address = try await resolver.resolve(url.host)
        } catch {
            return .failed(code: "target_refused", "\(message(error))")
        }
        let client = HTTPClient.pinned(host: url.host, to: address, timeout: .milliseconds(timeoutMilliseconds))
        let outcome: CheckOutcome
        do {
            var request = HTTPClientRequest(url: text)
            request.method = method == "HEAD" ? .HEAD : .GET
            request.headers.add(name: "User-Agent", value: "herald-check/1")
            let remaining = max(1, timeoutMilliseconds - Int64((ContinuousClock.now - start).milliseconds))
            // One deadline over the head and the body read: a trickling target is cut too.
            let prepared = request
            let (status, latency) = try await withDeadline(.milliseconds(remaining)) {
                let response = try await client.execute(prepared, timeout: .milliseconds(remaining))
                let latency = (ContinuousClock.now - start).milliseconds
                var read = 0
                for try await chunk in response.body {
                    read += chunk.readableBytes
                    if read >= Self.maxBodyBytes { break }
                }
                return (Int(response.status.code), latency)
            }
            outcome = .done(
                .object([
                    "status": .int(Int64(status)), "latency_ms": .int(latency), "ok": .bool(status == expectStatus),
                ])
            )
        } catch is CancellationError {
            outcome = .failed(code: "canceled", "the check was interrupted")
        } catch let error as HTTPClientError where error.isTimeout {
            outcome = .failed(code: "timeout", "no answer within \(timeoutMilliseconds) ms")
        } catch is DeadlineExceeded {
            outcome = .failed(code: "timeout", "no answer within \(timeoutMilliseconds) ms")
        } catch {
            outcome = .failed(code: "unreachable", "\(message(error))")
        }
        try? await client.shutdown()
        return outcome
    }

    /// Opens a TCP connection; done with `connected` and `latency_ms` (and `error` when it
    /// did not connect), failed only when the guard refused the address.
    package func tcp(host: String, port: Int, timeoutMilliseconds: Int64) async -> CheckOutcome {
        let start = ContinuousClock.now
        let address: IPAddress
        do {
            address = try await resolver.resolve(host)
        } catch {
            return .failed(code: "target_refused", "\(message(error))")
        }
        do {
            let socketAddress = try SocketAddress(ipAddress: address.description, port: port)
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.milliseconds(timeoutMilliseconds))
                .connect(to: socketAddress).get()
            let latency = (ContinuousClock.now - start).milliseconds
            try? await channel.close()
            return .done(.object(["connected": .bool(true), "latency_ms": .int(latency)]))
        } catch {
            let latency = (ContinuousClock.now - start).milliseconds
            return .done(
                .object(["connected": .bool(false), "latency_ms": .int(latency), "error": .string(message(error))])
            )
        }
    }
}

private func message(_ error: any Error) -> String {
    if let error = error as? HeraldError { return error.message }
    if let error = error as? ChannelError, case .connectTimeout = error { return "connection timed out" }
    if let error = error as? IOError { return error.description }
    return String(describing: error)
}

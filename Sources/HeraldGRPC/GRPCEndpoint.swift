internal import GRPCCore
internal import GRPCNIOTransportHTTP2Posix
internal import HeraldCore
internal import ServiceLifecycle

/// The gRPC server on `--grpc-port` (HTTP/2, TLS when the HTTP port has it), as a service of
/// the `ServiceGroup`: graceful shutdown stops accepting calls and waits for those in flight
/// (the hub ends the streams first).
package struct GRPCEndpoint: Service {
    /// A PEM certificate chain and key.
    package struct TLSFiles: Sendable {
        package var certificatePath: String
        package var keyPath: String

        package init(certificatePath: String, keyPath: String) {
            self.certificatePath = certificatePath
            self.keyPath = keyPath
        }
    }

    private let server: GRPCServer<HTTP2ServerTransport.Posix>
    private let host: String
    private let port: Int
    private let onListening: @Sendable (_ port: Int) -> Void

    /// - Parameters:
    ///   - keepalive: how long a connection may stay silent before the server pings it; a
    ///     client that does not answer within 20 s is disconnected.
    ///   - onListening: called with the bound port.
    package init(
        service: HeraldService,
        host: String,
        port: Int,
        tls: TLSFiles?,
        keepalive: Duration,
        maxMessageBytes: Int,
        onListening: @escaping @Sendable (_ port: Int) -> Void
    ) {
        let address: GRPCNIOTransportCore.SocketAddress =
            host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port)
        let security: HTTP2ServerTransport.Posix.TransportSecurity =
            if let tls {
                .tls(
                    certificateChain: [.file(path: tls.certificatePath, format: .pem)],
                    privateKey: .file(path: tls.keyPath, format: .pem)
                )
            } else {
                .plaintext
            }
        let transport = HTTP2ServerTransport.Posix(
            address: address,
            transportSecurity: security,
            config: .defaults { config in
                config.connection.keepalive = .init(
                    time: keepalive,
                    timeout: .seconds(20),
                    clientBehavior: .init(minPingIntervalWithoutCalls: .seconds(5), allowWithoutCalls: true)
                )
                // Past this the transport resets the stream (CANCELLED, no message); below it the
                // service answers an oversized JSON with RESOURCE_EXHAUSTED and a reason.
                config.rpc.maxRequestPayloadSize = max(4 << 20, maxMessageBytes + 4096)
            }
        )
        self.server = GRPCServer(transport: transport, services: [service])
        self.host = host
        self.port = port
        self.onListening = onListening
    }

    package func run() async throws {
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask {
                    do {
                        try await server.serve()
                    } catch {
                        let cause = (error as? RuntimeError)?.cause.map { "\($0)" } ?? "\(error)"
                        throw HeraldError(.unavailable, "cannot listen on \(host):\(port) for gRPC: \(cause)")
                    }
                }
                // Throws when the server stopped before it bound (serve() then says why).
                if let bound = try? await server.listeningAddress {
                    onListening(bound.ipv4?.port ?? bound.ipv6?.port ?? port)
                }
            }
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}

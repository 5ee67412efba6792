internal import Foundation
package import HeraldCore
package import PostgresNIO

/// A `postgres://user:password@host:port/database?sslmode=...&search_path=...` URL
/// (`postgresql://` too), parsed once: the pool and the notification connection both connect
/// with it. `sslmode` is `disable`, `prefer` (the default) or `require`; `search_path` names the
/// schema Herald's tables live in.
package struct PostgresURL: Sendable {
    package var host: String
    package var port: Int
    package var user: String
    package var password: String?
    package var database: String?
    package var sslMode: String
    package var searchPath: String?

    /// - Throws: ``HeraldError`` `.invalid` for a URL that is not one.
    package init(_ text: String) throws(HeraldError) {
        guard let url = URLComponents(string: text), url.scheme == "postgres" || url.scheme == "postgresql",
            let host = url.host, !host.isEmpty
        else {
            throw .invalid("store must be a postgres://user:password@host:port/database URL")
        }
        guard let user = url.user?.removingPercentEncoding, !user.isEmpty else {
            throw .invalid("the postgres URL names no user")
        }
        let query = Dictionary((url.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
        sslMode = query["sslmode"] ?? "prefer"
        guard ["disable", "prefer", "require"].contains(sslMode) else {
            throw .invalid("sslmode \(sslMode) is not one of disable, prefer, require")
        }
        self.host = host
        self.port = url.port ?? 5432
        self.user = user
        self.password = url.password?.removingPercentEncoding
        let database = url.path.dropFirst().removingPercentEncoding
        self.database = database?.isEmpty == false ? database : nil
        self.searchPath = query["search_path"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The URL without its password, for logs and the start line.
    package var redacted: String {
        "postgres://\(user)@\(host):\(port)/\(database ?? "")"
    }

    private var startupParameters: [(String, String)] {
        searchPath.map { [("search_path", $0)] } ?? []
    }

    /// The pool's configuration, with at most `connections` connections.
    package func client(connections: Int) -> PostgresClient.Configuration {
        let tls: PostgresClient.Configuration.TLS =
            switch sslMode {
            case "disable": .disable
            case "require": .require(.makeClientConfiguration())
            default: .prefer(.makeClientConfiguration())
            }
        var configuration = PostgresClient.Configuration(
            host: host,
            port: port,
            username: user,
            password: password,
            database: database,
            tls: tls
        )
        configuration.options.additionalStartupParameters = startupParameters
        configuration.options.maximumConnections = connections
        return configuration
    }

    /// A single connection's configuration (the one that listens for notifications).
    package func connection() throws -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS =
            switch sslMode {
            case "disable": .disable
            case "require": try .require(.init(configuration: .makeClientConfiguration()))
            default: try .prefer(.init(configuration: .makeClientConfiguration()))
            }
        var configuration = PostgresConnection.Configuration(
            host: host,
            port: port,
            username: user,
            password: password,
            database: database,
            tls: tls
        )
        configuration.options.additionalStartupParameters = startupParameters
        return configuration
    }
}

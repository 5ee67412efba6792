internal import Foundation
package import HeraldCore
package import PostgresNIO

extension PostgresClient.Configuration {
    /// The configuration a `postgres://user:password@host:port/database?sslmode=...` URL names
    /// (`postgresql://` too). `sslmode` is `disable`, `prefer` (the default) or `require`;
    /// `search_path` names the schema Herald's tables live in.
    /// - Throws: ``HeraldError`` `.invalid` for a URL that is not one.
    package init(url text: String) throws(HeraldError) {
        guard let url = URLComponents(string: text), url.scheme == "postgres" || url.scheme == "postgresql",
            let host = url.host, !host.isEmpty
        else {
            throw .invalid("store must be a postgres://user:password@host:port/database URL")
        }
        guard let user = url.user?.removingPercentEncoding, !user.isEmpty else {
            throw .invalid("the postgres URL names no user")
        }
        let query = Dictionary((url.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
        let tls: TLS
        switch query["sslmode"] ?? "prefer" {
        case "disable": tls = .disable
        case "prefer": tls = .prefer(.makeClientConfiguration())
        case "require": tls = .require(.makeClientConfiguration())
        case let other: throw .invalid("sslmode \(other) is not one of disable, prefer, require")
        }
        let database = url.path.dropFirst().removingPercentEncoding
        self.init(
            host: host,
            port: url.port ?? 5432,
            username: user,
            password: url.password?.removingPercentEncoding,
            database: database?.isEmpty == false ? database : nil,
            tls: tls
        )
        if let schema = query["search_path"], !schema.isEmpty {
            options.additionalStartupParameters.append(("search_path", schema))
        }
    }
}

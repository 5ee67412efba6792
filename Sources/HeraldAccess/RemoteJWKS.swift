internal import HeraldCore
internal import JWTKit
package import Logging

/// `token-jwks-url`: public keys fetched over HTTPS and cached.
///
/// The set is fetched at the first token, again when it is older than `maxAge`, and again
/// when a token names a `kid` the set does not hold (the issuer rotated its keys), but such
/// refetches come at most once per `minInterval`: a stream of tokens with made-up `kid`s costs
/// the issuer one request a `minInterval`, not one per token. When a fetch fails the last set
/// stays in use.
package actor RemoteJWKS {
    package typealias Fetch = @Sendable (String) async throws -> String

    private let url: String
    private let fetch: Fetch
    private let maxAge: Duration
    private let minInterval: Duration
    private let logger: Logger
    private var keys: KeySet?
    private var fetchedAt: ContinuousClock.Instant?
    /// The last fetch an unknown `kid` caused.
    private var unknownKidFetchedAt: ContinuousClock.Instant?
    private var inFlight: Task<Void, Never>?

    package init(
        url: String,
        maxAge: Duration = .seconds(3600),
        minInterval: Duration = .seconds(30),
        logger: Logger,
        fetch: @escaping Fetch
    ) {
        self.url = url
        self.maxAge = maxAge
        self.minInterval = minInterval
        self.logger = logger
        self.fetch = fetch
    }

    func verify(_ token: String, kid: String?) async throws -> ClientClaims {
        if let inFlight { await inFlight.value }
        let now = ContinuousClock.now
        if fetchedAt.map({ now - $0 > maxAge }) ?? true {
            await refresh()
        } else if !(keys?.knows(kid) ?? false), unknownKidFetchedAt.map({ now - $0 > minInterval }) ?? true {
            unknownKidFetchedAt = now
            await refresh()
        }
        guard let keys, keys.knows(kid) else {
            throw HeraldError.tokenInvalid("no key of token-jwks-url has the token's kid")
        }
        return try await keys.keys.verify(token, as: ClientClaims.self)
    }

    /// Fetches the set; callers that come while a fetch is on its way wait for that one.
    private func refresh() async {
        if let inFlight {
            await inFlight.value
            return
        }
        fetchedAt = .now
        let task = Task<Void, Never> { [url, fetch, logger] in
            do {
                self.keep(try await KeySet(json: try await fetch(url)))
            } catch {
                logger.warning(
                    "token-jwks-url could not be fetched; the last keys stay in use",
                    metadata: ["error": "\(error)"]
                )
            }
        }
        inFlight = task
        await task.value
        inFlight = nil
    }

    private func keep(_ set: KeySet) { keys = set }
}

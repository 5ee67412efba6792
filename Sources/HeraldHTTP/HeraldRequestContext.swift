package import Hummingbird
package import NIOCore

/// The request context of Herald's router: Hummingbird's basic one, plus the peer's address,
/// which rate limits count by (behind a trusted proxy, with `X-Forwarded-For`).
package struct HeraldRequestContext: RequestContext, RemoteAddressRequestContext {
    package var coreContext: CoreRequestContextStorage
    package let remoteAddress: SocketAddress?

    package init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

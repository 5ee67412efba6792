import HTTPTypes
import Hummingbird
import Testing

@testable import HeraldHTTP

/// `Request.query(_:)` reads what Hummingbird's `queryParameters` reads, without parsing the
/// whole query on every call.
@Suite struct RequestQueryTests {
    @Test(arguments: [
        "/a?since=3&wait=30", "/a?wait=30&wait=5", "/a?wait", "/a?wait=", "/a?x=1&wait=%33%30",
        "/a?wait=%zz", "/a?callback=a.b&tag=x%26y", "/a", "/a?", "/a?&&wait=2&", "/a?waiting=1&wait=4",
        "/a?wait=a%20b+c", "/a?epoch=-abc_DEF", "/a?%77ait=1",
    ])
    func aParameterIsWhatHummingbirdReads(path: String) {
        let request = Request(
            head: HTTPRequest(method: .get, scheme: "http", authority: "h", path: path),
            body: RequestBody(buffer: .init())
        )
        for name in ["wait", "since", "callback", "tag", "epoch", "x", "missing"] {
            #expect(request.query(name) == request.uri.queryParameters.get(name), "\(path) \(name)")
        }
    }
}

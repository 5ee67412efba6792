import Testing

@testable import HeraldHTTP

/// What a head alone tells ``StreamGate`` it may serve on the event loop, read from its bytes.
@Suite struct StreamTakeoverTests {
    @Test(
        arguments: [
            ("GET", "/api/v1/channels/a/events?format=sse", nil, false, StreamTakeover.Candidate.stream),
            ("GET", "/api/v1/channels/a/events?since=3&format=ndjson", nil, false, .stream),
            ("GET", "/api/v1/checks/c/events?format=html&tag=x", nil, false, .stream),
            ("GET", "/api/v1/channels/a/events", "text/event-stream", false, .stream),
            ("GET", "/api/v1/channels/a/events", "application/json, application/x-ndjson", false, .stream),
            ("GET", "/api/v1/channels/a/events?format=json", "text/event-stream", false, .request),
            ("GET", "/api/v1/channels/a/events?format=%73se", nil, false, .request),
            ("GET", "/api/v1/channels/a/events?since=3&wait=30", nil, false, .request),
            ("GET", "/api/v1/channels/a/events?format=json&wait=30", nil, false, .request),
            ("GET", "/api/v1/channels/a/events?wait=30&format=sse", nil, false, .stream),
            ("GET", "/api/v1/channels/a/events?since=3", nil, false, .request),
            ("GET", "/api/v1/checks/c?wait=30", nil, false, .request),
            ("GET", "/api/v1/events/other", "text/event-stream", false, .request),
            ("POST", "/api/v1/channels/a/events", "text/event-stream", true, .request),
            ("DELETE", "/api/v1/webhooks/w", nil, false, .request),
            ("GET", "/api/v1/channels/a/events?format=sse", nil, true, .request),
            ("GET", "/healthz?wait=30", nil, false, nil),
            ("GET", "/herald.js", nil, false, nil),
            ("GET", "/api/v1", nil, false, nil),
            ("HEAD", "/api/v1/channels/a/events?format=sse", nil, false, nil),
            ("HEAD", "/api/v1/checks/c", nil, false, nil),
        ] as [(String, String, String?, Bool, StreamTakeover.Candidate?)]
    )
    func aHeadIsReadForWhatItAsks(
        method: String,
        uri: String,
        accept: String?,
        hasBody: Bool,
        expected: StreamTakeover.Candidate?
    ) {
        #expect(StreamTakeover.candidate(method: method, uri: uri, accept: accept, hasBody: hasBody) == expected)
    }

    @Test func aByteSearchFindsWhatContainsFinds() {
        for (text, found) in [
            ("text/event-stream", true), ("a, text/event-stream;q=1", true), ("text/event-strea", false),
            ("", false), ("ttext/event-stream", true), ("text/event-streaM", false),
        ] {
            #expect(text.utf8.contains(ascii: "text/event-stream") == found, "\(text)")
        }
    }
}

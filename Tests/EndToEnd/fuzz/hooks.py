"""Schemathesis hooks for the fuzzing gate (test_fuzz.py).

Streams (format=sse, ndjson, html, or an Accept header asking for one) never end on their own,
so the fuzzer would wait on each until its timeout and count an error. The gate keeps every
other query value it generates and asks for the JSON answer instead; the streaming transports
have their own tests, and their options (since, epoch, heartbeat, tag, welcome) are validated
on polls as well, so the fuzzer still reaches every parser."""

import schemathesis

STREAMING = {"sse", "ndjson", "html"}


@schemathesis.hook
def map_query(ctx, query):
    if query and query.get("format") in STREAMING:
        query["format"] = "json"
    return query


@schemathesis.hook
def map_headers(ctx, headers):
    if headers:
        for name in [name for name in headers if name.lower() == "accept"]:
            del headers[name]
    return headers

"""The OpenAPI document matches what is served: every listed route is called and answers as documented."""

import yaml
from openapi_spec_validator import validate

from conftest import AUTH, create, wait_for


def new_subscription(api):
    return api.post("/api/v1/subscription", json={"target_url": "http://127.0.0.1:9/hook", "event": "*"},
                    headers=AUTH).json()["id"]


def test_every_documented_route_answers_with_a_documented_status(make_herald):
    api = make_herald("--allow-private-targets").client()
    new_subscription(api)
    api.post("/api/v1/channels/openapi-walk/events", json={"type": "t", "data": 1}, headers=AUTH)
    # A subscription's delivery row is made from the webhook event log by the dispatcher.
    delivery = wait_for(lambda: api.get("/api/v1/deliveries", headers=AUTH).json()["deliveries"])[0]["id"]
    response = api.get("/openapi.yaml")
    assert response.status_code == 200
    document = yaml.safe_load(response.text)
    assert document["openapi"].startswith("3.1")
    validate(document)
    called = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            url = path.replace("{name}", "openapi-walk")
            if "{id}" in path:
                url = url.replace("{id}", create(api, {"kind": "external"}).json()["id"])
            url = url.replace("{subscription}", new_subscription(api) if "{subscription}" in url else "")
            url = url.replace("{delivery}", delivery)
            headers = dict(AUTH) if operation.get("security") else {}
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("example")
            answer = api.request(method.upper(), url, json=body, headers=headers)
            documented = {int(code) for code in operation["responses"]}
            assert answer.status_code in documented, (method, path, answer.status_code, answer.text)
            assert 200 <= answer.status_code < 300, (method, path, answer.text)
            if answer.status_code >= 400:
                assert answer.headers["content-type"] == "application/problem+json"
            called += 1
    assert called == 29


def test_every_route_served_is_documented(api):
    document = yaml.safe_load(api.get("/openapi.yaml").text)
    served = {("post", "/api/v1/checks"), ("get", "/api/v1/checks"), ("get", "/api/v1/checks/{id}"),
              ("delete", "/api/v1/checks/{id}"), ("post", "/api/v1/checks/{id}/complete"),
              ("get", "/api/v1/checks/{id}/events"), ("post", "/api/v1/channels/{name}/events"),
              ("get", "/api/v1/channels/{name}/events"), ("get", "/healthz"), ("get", "/readyz"),
              ("get", "/openapi.yaml"), ("get", "/api/v1/herald.proto"), ("get", "/grpc-web"),
              ("get", "/grpc-web.js"), ("get", "/herald.js"), ("get", "/herald.mjs"), ("get", "/herald.d.ts"),
              ("get", "/lab"), ("get", "/api/v1/subscription"), ("post", "/api/v1/subscription"),
              ("get", "/api/v1/subscription/{subscription}"), ("put", "/api/v1/subscription/{subscription}"),
              ("delete", "/api/v1/subscription/{subscription}"), ("post", "/api/v1/subscription/{subscription}/replay"),
              ("post", "/api/v1/subscription/{subscription}/rotate"),
              ("get", "/api/v1/deliveries"), ("get", "/api/v1/deliveries/{delivery}"),
              ("post", "/api/v1/deliveries/{delivery}/retry")}
    listed = {(m, p) for p, item in document["paths"].items() for m in item if m != "parameters"}
    assert served <= listed

"""Issue 15: the fuzzing gate. Schemathesis generates requests for every operation of
/openapi.yaml (examples, boundary values, random values, and stateful sequences that chain
created ids), with and without the API key, and with client tokens on (with a token granting
every channel, and with no credential at all), from a fixed seed. The gate asserts that no answer
is a 5xx, that every answer agrees with the document (status, content type, headers, body
schema), that invalid requests are refused and unknown methods answered 405, and that the
server is alive afterwards.

With a credential, `ignored_auth` is off too: the header is a valid alternative to the cancel
token the fuzzer invalidates, so a DELETE it sends is rightly accepted.

Two checks stay off, on purpose: `positive_data_acceptance`, because a request the schema
allows may still be refused for what a schema cannot say (a callback host that does not
resolve, an opaque cursor that was never issued); and `use_after_free`, because DELETE on a
check cancels it, and a canceled check stays readable until `check-retention` ends."""

import os
import pathlib
import subprocess
import sys
import time

import jwt
import pytest

from conftest import AUTH

HERE = pathlib.Path(__file__).parent
SCHEMATHESIS = pathlib.Path(sys.executable).parent / "schemathesis"


SECRET = "fuzzing-secret-of-at-least-32-bytes-long"


@pytest.mark.parametrize(
    "tokens, credential",
    [("off", "key"), ("off", "none"), ("on", "token"), ("on", "none")],
    ids=["with-key", "without-key", "tokens-on-with-a-token", "tokens-on-without-one"],
)
def test_fuzzing_the_openapi_document_finds_nothing(make_herald, tokens, credential, tmp_path):
    # Long polls hold one second at most, so the fuzzer never waits on one.
    config = {"max-wait": 1}
    if tokens == "on":
        config.update({"token-secret": SECRET, "create-checks": "token"})
    target = make_herald("--allow-private-targets", config=config)
    command = [
        str(SCHEMATHESIS), "run", f"{target.url}/openapi.yaml", "--url", target.url,
        "--checks", "all", "--exclude-checks", "positive_data_acceptance,use_after_free",
        "--seed", "15", "--max-examples", "10", "--request-timeout", "10", "--no-color",
    ]
    if credential != "none":
        # The fixed Authorization header is a valid credential for every operation, an
        # alternative to a cancel token the fuzzer invalidates (DELETE of a check created with
        # the same key or token is rightly accepted); the check stays on without a credential.
        command[command.index("positive_data_acceptance,use_after_free")] += ",ignored_auth"
    if credential == "key":
        command += ["-H", f"Authorization: {AUTH['Authorization']}"]
    if credential == "token":
        claims = {"exp": int(time.time()) + 3600, "sub": "fuzzer", "channels": ["*"], "publish": ["*"],
                  "checks": True}
        command += ["-H", f"Authorization: Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "hooks", "PYTHONPATH": str(HERE / "fuzz")}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    assert "No failures" in run.stdout or " passed" in run.stdout, report
    with target.client() as api:
        assert api.get("/healthz").status_code == 200
    assert target.proc.poll() is None, "the server died during the fuzzing"
    assert not [line for line in target.output if " error " in line or "critical" in line], "".join(target.output[-30:])

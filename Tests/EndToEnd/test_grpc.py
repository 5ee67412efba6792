"""gRPC (issue 5, under way): the served proto, from which a third-party client is generated."""

import importlib
import pathlib
import sys

from grpc_tools import protoc

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_the_proto_is_served_and_a_python_client_generates_from_it(make_herald, tmp_path):
    api = make_herald().client()
    served = api.get("/api/v1/herald.proto")
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/plain")
    assert served.text == (REPO / "Sources/HeraldServer/Public/herald.proto").read_text()
    (tmp_path / "herald.proto").write_text(served.text)
    include = pathlib.Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    assert protoc.main(["protoc", f"-I{tmp_path}", f"-I{include}", f"--python_out={tmp_path}",
                        f"--grpc_python_out={tmp_path}", str(tmp_path / "herald.proto")]) == 0
    sys.path.insert(0, str(tmp_path))
    try:
        messages = importlib.import_module("herald_pb2")
        services = importlib.import_module("herald_pb2_grpc")
    finally:
        sys.path.remove(str(tmp_path))
    assert hasattr(services, "HeraldStub")
    methods = {m.name for m in messages.DESCRIPTOR.services_by_name["Herald"].methods}
    assert methods == {"CreateCheck", "GetCheck", "WatchCheck", "Subscribe", "Publish"}

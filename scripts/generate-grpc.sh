#!/usr/bin/env bash
# Regenerates Herald's gRPC code from Sources/HeraldServer/Public/herald.proto (served at
# GET /api/v1/herald.proto) into
# Sources/HeraldGRPC/Generated (or the directory given), with Debian's protoc and the plugins
# of grpc-swift-protobuf and swift-protobuf built from scripts/grpc-codegen. The generated code
# is committed; scripts/test.sh checks that it is current.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-Sources/HeraldGRPC/Generated}"

command -v protoc >/dev/null || {
  echo "protoc is missing: apt-get install -y protobuf-compiler libprotobuf-dev" >&2
  exit 1
}
scratch="$PWD/.build-codegen"
swift build -c release --package-path scripts/grpc-codegen --scratch-path "$scratch" \
  --product protoc-gen-swift >/dev/null
swift build -c release --package-path scripts/grpc-codegen --scratch-path "$scratch" \
  --product protoc-gen-grpc-swift-2 >/dev/null
bin="$scratch/release"

mkdir -p "$out"
protoc --proto_path=Sources/HeraldServer/Public \
  --plugin=protoc-gen-swift="$bin/protoc-gen-swift" \
  --plugin=protoc-gen-grpc-swift="$bin/protoc-gen-grpc-swift-2" \
  --swift_out="$out" --swift_opt=Visibility=Package,FileNaming=DropPath,UseAccessLevelOnImports=true \
  --grpc-swift_out="$out" --grpc-swift_opt=Visibility=Package,Client=true,Server=true,FileNaming=DropPath,UseAccessLevelOnImports=true \
  herald.proto

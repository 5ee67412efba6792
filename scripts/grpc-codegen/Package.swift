// swift-tools-version:6.1
// Builds the two protoc plugins that generate Herald's gRPC code (scripts/generate-grpc.sh),
// without grpc-swift-protobuf's build plugin, which compiles protoc from C++ for ten minutes.
import PackageDescription

let package = Package(
    name: "grpc-codegen",
    dependencies: [
        .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", exact: "2.4.1"),
        .package(url: "https://github.com/apple/swift-protobuf.git", exact: "1.39.0"),
    ]
)

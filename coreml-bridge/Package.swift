// swift-tools-version:5.9
// coreml-bridge: a static library exporting the C ABI declared in
// include/coreml_bridge.h (the one contract with the Rust crate).
import PackageDescription

let package = Package(
    name: "CoreMLBridge",
    platforms: [.macOS(.v13), .iOS(.v16)],
    products: [
        .library(name: "CoreMLBridge", type: .static, targets: ["CoreMLBridge"]),
    ],
    targets: [
        // The C header as a module, so the Swift side uses the very struct
        // layouts and constants the C/Rust side sees. Its only source file
        // checks the ABI layout at compile time.
        .target(
            name: "CoreMLBridgeC",
            path: "include",
            sources: ["coreml_bridge_abi.c"],
            publicHeadersPath: "."
        ),
        // Declarations-only mirror of the Core ML API we call, so the Core ML
        // adapter type-checks where CoreML.framework does not exist (Linux).
        // Its sources are empty under canImport(CoreML).
        .target(name: "CoreMLShim", path: "Sources/CoreMLShim"),
        .target(
            name: "CoreMLBridge",
            dependencies: [
                "CoreMLBridgeC",
                .target(name: "CoreMLShim", condition: .when(platforms: [.linux])),
            ],
            path: "Sources/CoreMLBridge",
            linkerSettings: [
                .linkedFramework("CoreML", .when(platforms: [.macOS, .iOS])),
                .linkedFramework("Foundation", .when(platforms: [.macOS, .iOS])),
            ]
        ),
        // C code calling the bridge through coreml_bridge.h, for the tests.
        .target(
            name: "CoreMLBridgeCHarness",
            dependencies: ["CoreMLBridgeC"],
            path: "Tests/CHarness"
        ),
        .testTarget(
            name: "CoreMLBridgeTests",
            dependencies: ["CoreMLBridge", "CoreMLBridgeC", "CoreMLBridgeCHarness"],
            path: "Tests/CoreMLBridgeTests"
        ),
    ],
    swiftLanguageVersions: [.v5]
)

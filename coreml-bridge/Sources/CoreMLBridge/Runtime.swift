import Foundation

/// What the C layer needs from an inference runtime. Implemented by the Core
/// ML adapter (`CoreMLRuntime`), the deterministic `TestRuntime`, and
/// `UnavailableRuntime`. Methods are synchronous and may block: the bridge
/// calls them on its own queues, never on the caller's thread.
public protocol ModelRuntime: AnyObject {
    var name: String { get }
    /// Compiles a package; returns a temporary compiled directory that the
    /// bridge takes ownership of (moves into place, or deletes when late).
    func compile(packageAt url: URL) throws -> URL
    func load(compiledAt url: URL, computeUnits: ComputeUnits) throws -> LoadedModel
    /// Loads one function of a multifunction model (`nil`: the default).
    func load(compiledAt url: URL, computeUnits: ComputeUnits, functionName: String?) throws -> LoadedModel
    /// The compute plan as a JSON object (see coreml_compute_plan).
    func computePlan(compiledAt url: URL, computeUnits: ComputeUnits) throws -> [String: Any]
    func runtimeInfo() -> RuntimeInfo
}

/// A loaded model. `predict` is only ever called on the model handle's serial
/// queue, so implementations need no locking of their own.
public protocol LoadedModel: AnyObject {
    var schema: ModelSchema { get }
    /// Inputs are validated against `schema` and owned by the bridge; outputs
    /// must be row-major `HostTensor`s (gather strided storage with
    /// `HostTensor.gather`).
    func predict(_ inputs: [HostTensor]) throws -> [HostTensor]
    /// A fresh state for a stateful model (Core ML: `makeState()`), opaque
    /// to the bridge. Called on the handle's queue.
    func makeState() throws -> AnyObject
    /// One prediction that reads and updates `state` (made by this model's
    /// `makeState`). Called on the handle's queue.
    func predict(_ inputs: [HostTensor], state: AnyObject) throws -> [HostTensor]
    /// Predictions for every member of a batch, in order (Core ML:
    /// `predictions(from:options:)`). Called on the handle's queue.
    func predictBatch(_ batch: [[HostTensor]]) throws -> [[HostTensor]]
    /// One prediction on feature values of any kind (validated against
    /// `schema`); outputs of every kind. Called on the handle's queue.
    func predictFeatures(_ inputs: [NamedFeature]) throws -> [NamedFeature]
    /// One prediction that may write outputs into `backings` (bridge-owned
    /// staging buffers, see BufferPool.swift); returns where each output
    /// is. Called on the handle's queue. Default: `predict`.
    func predictInto(_ inputs: [HostTensor], backings: [OutputBacking]) throws -> [OutputSource]
    /// Storage for an image input of `pixelFormat` (a CoreVideo OSType),
    /// filled by the bridge on the CALLER's thread before the prediction is
    /// queued (Core ML: a CVPixelBuffer; default: `HostPixels`).
    func makePixelStorage(width: Int, height: Int, pixelFormat: UInt32, bytesPerPixel: Int) throws -> PixelStorage
}

extension LoadedModel {
    public func makeState() throws -> AnyObject {
        throw BridgeError(.unsupported, "this runtime's models have no state")
    }
    public func predict(_ inputs: [HostTensor], state: AnyObject) throws -> [HostTensor] {
        throw BridgeError(.unsupported, "this runtime's models have no state")
    }
    /// Multi-array inputs only, through `predict`.
    public func predictFeatures(_ inputs: [NamedFeature]) throws -> [NamedFeature] {
        let tensors: [HostTensor] = try inputs.map { f in
            guard case .tensor(let t) = f.value else {
                throw BridgeError(.unsupported, "input '\(f.name)': this runtime takes multi-arrays only")
            }
            return t
        }
        return try predict(tensors).map { NamedFeature(name: $0.name, value: .tensor($0)) }
    }
    /// Malloc'ed rows.
    public func makePixelStorage(width: Int, height: Int, pixelFormat: UInt32, bytesPerPixel: Int) throws -> PixelStorage {
        try HostPixels(width: width, height: height, pixelFormat: pixelFormat, bytesPerPixel: bytesPerPixel)
    }
    /// One member after another.
    public func predictBatch(_ batch: [[HostTensor]]) throws -> [[HostTensor]] {
        try batch.map { try predict($0) }
    }
}

extension ModelRuntime {
    /// Runtimes without multifunction models: the default function only.
    public func load(compiledAt url: URL, computeUnits: ComputeUnits, functionName: String?) throws -> LoadedModel {
        guard functionName == nil else {
            throw BridgeError(.unsupported, "the \(name) runtime has no multifunction models")
        }
        return try load(compiledAt: url, computeUnits: computeUnits)
    }
}

public struct RuntimeInfo {
    public var coremlAvailable = false
    public var coremlVersion: String?
    public var neuralEnginePresent: Bool?
    public var neuralEngineCores: Int?
    public var computePlanAvailable = false
    public var reason: String?

    public init() {}

    var jsonObject: [String: Any] {
        func opt(_ v: Any?) -> Any { v ?? NSNull() }
        return [
            "bridge_abi_version": Int(bridgeABIVersion),
            "platform": Platform.name,
            "os_version": ProcessInfo.processInfo.operatingSystemVersionString,
            "os_build": opt(Platform.osBuild),
            "chip": opt(Platform.chip),
            "coreml_available": coremlAvailable,
            "coreml_version": opt(coremlVersion),
            "neural_engine_present": opt(neuralEnginePresent),
            "neural_engine_cores": opt(neuralEngineCores),
            "compute_plan_available": computePlanAvailable,
            "test_runtime": testRuntimeEnabled(),
            "reason": opt(reason),
        ]
    }
}

/// Mirrors COREML_BRIDGE_ABI_VERSION.
public let bridgeABIVersion: Int32 = 2

/// Where Core ML does not exist and the test runtime is not enabled: every
/// model call fails with `unavailable` and says why.
public final class UnavailableRuntime: ModelRuntime {
    public init() {}
    public var name: String { "unavailable" }
    private var error: BridgeError { BridgeError(.unavailable, Platform.unavailableReason) }
    public func compile(packageAt url: URL) throws -> URL { throw error }
    public func load(compiledAt url: URL, computeUnits: ComputeUnits) throws -> LoadedModel { throw error }
    public func computePlan(compiledAt url: URL, computeUnits: ComputeUnits) throws -> [String: Any] { throw error }
    public func runtimeInfo() -> RuntimeInfo {
        var info = RuntimeInfo()
        info.reason = Platform.unavailableReason
        return info
    }
}

public enum Runtimes {
    public static let test = TestRuntime()
    #if canImport(CoreML)
    public static let platform: ModelRuntime = CoreMLRuntime()
    #else
    public static let platform: ModelRuntime = UnavailableRuntime()
    #endif

    /// The runtime serving a call made now.
    public static var current: ModelRuntime {
        testRuntimeEnabled() ? test : platform
    }
}

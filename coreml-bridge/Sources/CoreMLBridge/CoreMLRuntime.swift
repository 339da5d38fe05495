// The Core ML adapter. On Apple platforms it runs against CoreML.framework;
// elsewhere it is compiled against CoreMLShim (declarations only) so that it
// type-checks on Linux, but it is never selected there (see Runtimes), and
// nothing in this file has been run on Linux or anywhere else in our CI.
#if canImport(CoreML)
import CoreML
#else
import CoreMLShim
#endif
import Foundation

/// Whether this build talks to the real CoreML.framework.
let linkedAgainstCoreML: Bool = {
    #if canImport(CoreML)
    return true
    #else
    return false
    #endif
}()

public final class CoreMLRuntime: ModelRuntime {
    public init() {}
    public var name: String { "coreml" }

    static func configuration(_ units: ComputeUnits) -> MLModelConfiguration {
        let config = MLModelConfiguration()
        switch units {
        case .all: config.computeUnits = .all
        case .cpuOnly: config.computeUnits = .cpuOnly
        case .cpuAndGPU: config.computeUnits = .cpuAndGPU
        case .cpuAndNeuralEngine: config.computeUnits = .cpuAndNeuralEngine
        }
        return config
    }

    /// Compiles into a temporary .mlmodelc chosen by Core ML; the bridge moves it.
    public func compile(packageAt url: URL) throws -> URL {
        try blockingAwait { try await MLModel.compileModel(at: url) }
    }

    public func load(compiledAt url: URL, computeUnits: ComputeUnits) throws -> LoadedModel {
        try load(compiledAt: url, computeUnits: computeUnits, functionName: nil)
    }

    /// `MLModelConfiguration.functionName` selects the function (macOS 15+;
    /// `.unsupported` before); `MLModelAsset(url:).functionNames` lists them.
    public func load(compiledAt url: URL, computeUnits: ComputeUnits, functionName: String?) throws -> LoadedModel {
        let config = Self.configuration(computeUnits)
        var functions: [String] = []
        if #available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *) {
            config.functionName = functionName
            // A model whose functions cannot be listed still loads (a
            // single-function model answers one name or none).
            if let asset = try? MLModelAsset(url: url) {
                functions = (try? blockingAwait { try await asset.functionNames }) ?? []
            }
        } else if let f = functionName {
            throw BridgeError(.unsupported, "loading function '\(f)': multifunction models (MLModelConfiguration.functionName) need macOS 15 / iOS 18 or later")
        }
        let model = try MLModel(contentsOf: url, configuration: config)
        var schema = Self.schema(of: model.modelDescription)
        schema.classifier = Self.classifier(of: model.modelDescription)
        schema.functions = functions.count > 1 ? functions.sorted() : []
        schema.function = functionName
        return CoreMLLoadedModel(model: model, schema: schema)
    }

    // MARK: Schema

    static func featureTypeName(_ t: MLFeatureType) -> String {
        switch t {
        case .invalid: return "invalid"
        case .int64: return "int64"
        case .double: return "double"
        case .string: return "string"
        case .image: return "image"
        case .multiArray: return "multiArray"
        case .dictionary: return "dictionary"
        case .sequence: return "sequence"
        default: return t.rawValue == 8 ? "state" : "unknown" // .state: macOS 15+
        }
    }

    static func feature(_ d: MLFeatureDescription) -> FeatureSchema {
        let typeName = featureTypeName(d.type)
        guard d.type == .multiArray, let c = d.multiArrayConstraint else {
            let scalar: DType? = d.type == .double ? .f64 : (d.type == .int64 ? .i64 : nil)
            var f = FeatureSchema(name: d.name, featureType: typeName, optional: d.isOptional,
                                  dtype: scalar, shape: scalar == nil ? [] : [1], constraint: .none)
            if d.type == .image, let ic = d.imageConstraint { f.image = imageSchema(ic) }
            return f
        }
        let sc = c.shapeConstraint
        let constraint: ShapeConstraint
        switch sc.type {
        case .enumerated:
            constraint = .enumerated(sc.enumeratedShapes.map { $0.map { $0.intValue } })
        case .range:
            // NSRange per dimension: lower = location; upper = location +
            // length (read as inclusive, the lenient reading: Core ML itself
            // still rejects what it does not accept). Huge lengths = unbounded.
            constraint = .range(sc.sizeRangeForDimension.map { v -> DimRange in
                let r = v.rangeValue
                let unbounded = r.length >= Int(Int32.max) || r.location > Int.max - r.length
                return DimRange(lower: r.location, upper: unbounded ? nil : r.location + r.length)
            })
        default:
            constraint = .unspecified
        }
        return FeatureSchema(name: d.name, featureType: typeName, optional: d.isOptional,
                             dtype: DType(multiArrayRawValue: c.dataType.rawValue),
                             shape: c.shape.map { $0.intValue }, constraint: constraint)
    }

    static func schema(of description: MLModelDescription) -> ModelSchema {
        var meta = ModelMetadata()
        let md = description.metadata
        meta.author = md[.author] as? String ?? ""
        meta.description = md[.description] as? String ?? ""
        meta.version = md[.versionString] as? String ?? ""
        meta.license = md[.license] as? String ?? ""
        meta.userDefined = md[.creatorDefinedKey] as? [String: String] ?? [:]
        return ModelSchema(inputs: description.inputDescriptionsByName.values.map(feature),
                           outputs: description.outputDescriptionsByName.values.map(feature),
                           states: states(of: description),
                           metadata: meta)
    }

    /// A classifier's outputs and labels; nil for other models.
    static func classifier(of description: MLModelDescription) -> ClassifierSchema? {
        guard let label = description.predictedFeatureName else { return nil }
        var c = ClassifierSchema(labelOutput: label, probabilitiesOutput: description.predictedProbabilitiesName)
        // classLabels is macOS 11 / iOS 14: below the package's floor, no availability check.
        if let labels = description.classLabels {
            if let strings = labels as? [String] {
                c.stringLabels = strings
            } else {
                c.int64Labels = labels.compactMap { ($0 as? NSNumber)?.int64Value }
            }
        }
        return c
    }

    /// A stateful model's states (macOS 15+): name, element type, buffer shape.
    static func states(of description: MLModelDescription) -> [FeatureSchema] {
        guard #available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *) else { return [] }
        return description.stateDescriptionsByName.values.map { d in
            let c = d.stateConstraint
            return FeatureSchema(name: d.name, featureType: "state", optional: d.isOptional,
                                 dtype: c.flatMap { DType(multiArrayRawValue: $0.dataType.rawValue) },
                                 shape: c?.bufferShape.map { $0.intValue } ?? [], constraint: .none)
        }
    }

    // MARK: Compute plan

    public func computePlan(compiledAt url: URL, computeUnits: ComputeUnits) throws -> [String: Any] {
        guard #available(macOS 14.4, iOS 17.4, tvOS 17.4, watchOS 10.4, *) else {
            throw BridgeError(.unavailable, "MLComputePlan needs macOS 14.4 / iOS 17.4 or later (this OS: \(ProcessInfo.processInfo.operatingSystemVersionString))")
        }
        let config = Self.configuration(computeUnits)
        let plan = try blockingAwait { try await MLComputePlan.load(contentsOf: url, configuration: config) }
        return Self.describe(plan)
    }

    @available(macOS 14.0, iOS 17.0, tvOS 17.0, watchOS 10.0, *)
    static func deviceName(_ d: MLComputeDevice) -> String {
        switch d {
        case .cpu: return "cpu"
        case .gpu: return "gpu"
        case .neuralEngine: return "neural_engine"
        @unknown default: return "unknown"
        }
    }

    @available(macOS 14.4, iOS 17.4, tvOS 17.4, watchOS 10.4, *)
    static func describe(_ plan: MLComputePlan) -> [String: Any] {
        var ops: [[String: Any]] = []

        func record(function: String, op: String, outputs: [String],
                    usage: MLComputePlan.DeviceUsage?, cost: Double?) {
            ops.append([
                "function": function,
                "index": ops.count,
                "operator": op,
                "outputs": outputs,
                "preferred_device": usage.map { deviceName($0.preferred) as Any } ?? NSNull(),
                "supported_devices": usage.map { $0.supported.map(deviceName) } ?? [],
                "estimated_cost": cost.map { $0 as Any } ?? NSNull(),
            ])
        }

        func walk(block: MLModelStructure.Program.Block, function: String) {
            for op in block.operations {
                record(function: function, op: op.operatorName, outputs: op.outputs.map { $0.name },
                       usage: plan.deviceUsage(for: op), cost: plan.estimatedCost(of: op)?.weight)
                for nested in op.blocks { walk(block: nested, function: function) }
            }
        }

        func walk(structure: MLModelStructure, prefix: String) -> String {
            switch structure {
            case .program(let program):
                for (name, function) in program.functions.sorted(by: { $0.key < $1.key }) {
                    walk(block: function.block, function: prefix + name)
                }
                return "program"
            case .neuralNetwork(let network):
                for layer in network.layers {
                    record(function: prefix, op: layer.type, outputs: layer.outputNames,
                           usage: plan.deviceUsage(for: layer), cost: nil)
                }
                return "neuralNetwork"
            case .pipeline(let pipeline):
                for (i, sub) in pipeline.subModels.enumerated() {
                    let name = i < pipeline.subModelNames.count ? pipeline.subModelNames[i] : String(i)
                    _ = walk(structure: sub, prefix: prefix + name + "/")
                }
                return "pipeline"
            case .unsupported:
                return "unsupported"
            @unknown default:
                return "unsupported"
            }
        }

        let modelType = walk(structure: plan.modelStructure, prefix: "")
        return computePlanObject(modelType: modelType, operations: ops)
    }

    // MARK: Runtime info

    public func runtimeInfo() -> RuntimeInfo {
        var info = RuntimeInfo()
        guard linkedAgainstCoreML else {
            info.reason = Platform.unavailableReason + " (the Core ML adapter is compiled against CoreMLShim)"
            return info
        }
        info.coremlAvailable = true
        info.coremlVersion = Bundle(for: MLModel.self).object(forInfoDictionaryKey: "CFBundleShortVersionString") as? String
        if #available(macOS 14.0, iOS 17.0, tvOS 17.0, watchOS 10.0, *) {
            var present = false
            var cores: Int?
            for device in MLComputeDevice.allComputeDevices {
                if case .neuralEngine(let ne) = device {
                    present = true
                    cores = ne.totalCoreCount
                }
            }
            info.neuralEnginePresent = present
            info.neuralEngineCores = cores
        }
        if #available(macOS 14.4, iOS 17.4, tvOS 17.4, watchOS 10.4, *) {
            info.computePlanAvailable = true
        }
        return info
    }
}

/// An MLModel behind a handle. `predict` runs on the handle's serial queue only.
final class CoreMLLoadedModel: LoadedModel {
    let model: MLModel
    let schema: ModelSchema

    init(model: MLModel, schema: ModelSchema) {
        self.model = model
        self.schema = schema
    }

    /// Wraps a bridge-owned input without copying; the array's deallocator
    /// keeps the buffer alive for as long as Core ML holds the array.
    static func multiArray(for t: HostTensor) throws -> MLMultiArray {
        guard let raw = t.dtype.multiArrayRawValue, let dataType = MLMultiArrayDataType(rawValue: raw) else {
            throw BridgeError(.unsupported, "input '\(t.name)': dtype \(t.dtype.name) cannot be a Core ML multi-array")
        }
        if t.dtype == .i8 {
            guard #available(macOS 26.0, iOS 26.0, tvOS 26.0, watchOS 26.0, *) else {
                throw BridgeError(.unsupported, "input '\(t.name)': int8 multi-arrays need macOS 26 / iOS 26")
            }
        }
        let buffer = t.buffer
        return try MLMultiArray(dataPointer: buffer.pointer,
                                shape: t.shape.map { NSNumber(value: $0) },
                                dataType: dataType,
                                strides: Strided.rowMajorStrides(t.shape).map { NSNumber(value: $0) },
                                deallocator: { _ in withExtendedLifetime(buffer) {} })
    }

    /// Copies a (possibly padded) output array through its strides.
    static func hostTensor(name: String, array: MLMultiArray) throws -> HostTensor {
        guard let dtype = DType(multiArrayRawValue: array.dataType.rawValue) else {
            throw BridgeError(.unsupported, "output '\(name)' has an unsupported data type (raw \(array.dataType.rawValue))")
        }
        let shape = array.shape.map { $0.intValue }
        let strides = array.strides.map { $0.intValue }
        return try array.withUnsafeBytes { raw in
            try HostTensor.gather(name: name, dtype: dtype, shape: shape, strides: strides, from: raw)
        }
    }

    static func scalar<T>(name: String, dtype: DType, value: T) throws -> HostTensor {
        let buffer = try TensorBuffer(byteCount: MemoryLayout<T>.size)
        buffer.pointer.storeBytes(of: value, as: T.self)
        return try HostTensor(name: name, dtype: dtype, shape: [1], buffer: buffer)
    }

    /// The inputs as a feature provider; the arrays borrow the bridge's buffers.
    static func provider(_ inputs: [HostTensor]) throws -> MLDictionaryFeatureProvider {
        var features: [String: Any] = [:]
        for t in inputs {
            features[t.name] = MLFeatureValue(multiArray: try Self.multiArray(for: t))
        }
        return try MLDictionaryFeatureProvider(dictionary: features)
    }

    func predict(_ inputs: [HostTensor]) throws -> [HostTensor] {
        try Self.outputs(of: try model.prediction(from: try Self.provider(inputs)))
    }

    /// `makeState()` (macOS 15+): Core ML allocates the state buffers, zeroed.
    func makeState() throws -> AnyObject {
        guard #available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *) else {
            throw BridgeError(.unsupported, "model states (MLState) need macOS 15 / iOS 18 or later (this OS: \(ProcessInfo.processInfo.operatingSystemVersionString))")
        }
        return model.makeState()
    }

    /// `prediction(from:using:options:)` (macOS 15+).
    func predict(_ inputs: [HostTensor], state: AnyObject) throws -> [HostTensor] {
        guard #available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *) else {
            throw BridgeError(.unsupported, "model states (MLState) need macOS 15 / iOS 18 or later")
        }
        guard let s = state as? MLState else {
            throw BridgeError(.internalError, "the state was not made by Core ML")
        }
        let result = try model.prediction(from: try Self.provider(inputs), using: s, options: MLPredictionOptions())
        return try Self.outputs(of: result)
    }

    /// `predictions(from:options:)` over an `MLArrayBatchProvider`: Core ML
    /// may run the members together.
    func predictBatch(_ batch: [[HostTensor]]) throws -> [[HostTensor]] {
        let providers: [any MLFeatureProvider] = try batch.map { try Self.provider($0) }
        let result = try model.predictions(from: MLArrayBatchProvider(array: providers), options: MLPredictionOptions())
        guard result.count == batch.count else {
            throw BridgeError(.internalError, "Core ML returned \(result.count) results for a batch of \(batch.count)")
        }
        return try (0..<result.count).map { try Self.outputs(of: result.features(at: $0)) }
    }

    /// Feature values of every kind: multi-arrays as for `predict`; int64,
    /// double and string inputs as NSNumber / NSString, which
    /// MLDictionaryFeatureProvider(dictionary:) converts to feature values.
    func predictFeatures(_ inputs: [NamedFeature]) throws -> [NamedFeature] {
        var features: [String: Any] = [:]
        for f in inputs {
            switch f.value {
            case .tensor(let t): features[f.name] = MLFeatureValue(multiArray: try Self.multiArray(for: t))
            case .int64(let v): features[f.name] = NSNumber(value: v)
            case .double(let v): features[f.name] = NSNumber(value: v)
            case .string(let s): features[f.name] = NSString(string: s)
            case .dictionary: throw BridgeError(.unsupported, "input '\(f.name)': dictionary inputs are not supported")
            case .image(let img): features[f.name] = try Self.featureValue(img)
            }
        }
        let result = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: features))
        var outputs: [NamedFeature] = []
        for name in result.featureNames.sorted() {
            guard let value = result.featureValue(for: name) else { continue }
            switch value.type {
            case .multiArray:
                if let array = value.multiArrayValue {
                    outputs.append(NamedFeature(name: name, value: .tensor(try Self.hostTensor(name: name, array: array))))
                }
            case .double: outputs.append(NamedFeature(name: name, value: .double(value.doubleValue)))
            case .int64: outputs.append(NamedFeature(name: name, value: .int64(value.int64Value)))
            case .string: outputs.append(NamedFeature(name: name, value: .string(value.stringValue)))
            case .dictionary:
                var entries: [(key: FeatureKey, value: Double)] = []
                for (k, v) in value.dictionaryValue {
                    if let s = k.base as? String {
                        entries.append((.string(s), v.doubleValue))
                    } else if let n = k.base as? NSNumber {
                        entries.append((.int64(n.int64Value), v.doubleValue))
                    } else if let i = k.base as? Int64 {
                        entries.append((.int64(i), v.doubleValue))
                    } else if let i = k.base as? Int {
                        entries.append((.int64(Int64(i)), v.doubleValue))
                    }
                }
                outputs.append(NamedFeature(name: name, value: .dictionary(entries)))
            default:
                continue // image, sequence: not in this version of the feature calls
            }
        }
        return outputs
    }

    /// Multi-array, double and int64 outputs as row-major tensors.
    static func outputs(of result: any MLFeatureProvider) throws -> [HostTensor] {
        var outputs: [HostTensor] = []
        for name in result.featureNames.sorted() {
            guard let value = result.featureValue(for: name) else { continue }
            switch value.type {
            case .multiArray:
                if let array = value.multiArrayValue {
                    outputs.append(try Self.hostTensor(name: name, array: array))
                }
            case .double:
                outputs.append(try Self.scalar(name: name, dtype: .f64, value: value.doubleValue))
            case .int64:
                outputs.append(try Self.scalar(name: name, dtype: .i64, value: value.int64Value))
            default:
                continue // string, dictionary, image, sequence: not tensors (see coreml_bridge.h)
            }
        }
        return outputs
    }
}

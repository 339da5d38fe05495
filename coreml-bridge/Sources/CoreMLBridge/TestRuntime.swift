import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A deterministic fake runtime for tests on any platform (enabled in the C
/// ABI by COREML_BRIDGE_TEST_RUNTIME=1). A "package" is any existing file or
/// directory; a directory may hold `fake_model.json` (see FakeSpec) which
/// compile copies into the compiled directory and load reads back. Without
/// it, the model is chosen by the package/compiled directory name (stem):
///
///   identity        output y = input x (any shape, any dtype)
///   add_one         y = x + 1
///   classify        a classifier: input x (f32 [n]) over `class_labels`
///                   (default ["cat", "dog", "fish"]); outputs "classLabel"
///                   (string: the label of the largest x) and
///                   "classLabel_probs" (dictionary label -> x[i])
///   accumulate      stateful: state s (f32, default shape [3]) += x, y = s;
///                   needs a state (coreml_make_state); a prediction
///                   without one fails as Core ML's would
///   image           an image model: input "image" (image feature, 4x3,
///                   RGB layout, 32BGRA storage; `image` in a fake input
///                   sets size, color layout and size constraints); outputs
///                   "pixels" (i32 [H, W, bytes per stored pixel]: the
///                   bridge-owned pixel buffer's bytes, read through its
///                   row stride) and "pixel_format" (int64: its OSType)
///   sleep_<N>ms     identity after sleeping N ms in every prediction
///   fail_compile, fail_load, fail_predict
///                   fail at that stage with a two-level NSError chain
///   (anything else) identity
public final class TestRuntime: ModelRuntime {
    public static let specFileName = "fake_model.json"
    public init() {}
    public var name: String { "test" }

    static func stem(_ url: URL) -> String { url.deletingPathExtension().lastPathComponent }

    static func spec(at url: URL) throws -> FakeSpec {
        let file = url.appendingPathComponent(specFileName)
        if FileManager.default.fileExists(atPath: file.path) {
            do {
                return try JSONDecoder().decode(FakeSpec.self, from: Data(contentsOf: file))
            } catch {
                throw BridgeError(.invalidArgument, "bad \(specFileName) in '\(url.path)': \(error)")
            }
        }
        return FakeSpec(named: stem(url))
    }

    public func compile(packageAt url: URL) throws -> URL {
        let spec = try Self.spec(at: url)
        sleepMs(spec.compile_sleep_ms)
        if spec.fail_stage == "compile" { throw spec.nsError(stage: "compile") }
        let out = URL(fileURLWithPath: NSTemporaryDirectory())
            .appendingPathComponent("coreml-bridge-fake-\(UUID().uuidString)-\(Self.stem(url)).mlmodelc")
        try FileManager.default.createDirectory(at: out, withIntermediateDirectories: true)
        let specFile = url.appendingPathComponent(Self.specFileName)
        if FileManager.default.fileExists(atPath: specFile.path) {
            try FileManager.default.copyItem(at: specFile, to: out.appendingPathComponent(Self.specFileName))
        }
        return out
    }

    public func load(compiledAt url: URL, computeUnits: ComputeUnits) throws -> LoadedModel {
        try load(compiledAt: url, computeUnits: computeUnits, functionName: nil)
    }

    /// A multifunction fake (`functions`: name -> behaviour) runs the
    /// chosen function's behaviour; an unknown name fails the load as
    /// Core ML's does.
    public func load(compiledAt url: URL, computeUnits: ComputeUnits, functionName: String?) throws -> LoadedModel {
        var spec = try Self.spec(at: url)
        sleepMs(spec.load_sleep_ms)
        if spec.fail_stage == "load" { throw spec.nsError(stage: "load") }
        let chosen = functionName ?? spec.default_function
        if let f = chosen {
            guard let functions = spec.functions, let behavior = functions[f] else {
                throw NSError(domain: coreMLErrorDomain, code: 0, userInfo: [
                    NSLocalizedDescriptionKey: "fake: the model has no function '\(f)' (functions: \((spec.functions ?? [:]).keys.sorted()))",
                ])
            }
            spec.behavior = behavior
        }
        var schema = try spec.schema()
        schema.functions = (spec.functions ?? [:]).keys.sorted()
        schema.function = functionName
        return FakeModel(spec: spec, schema: schema)
    }

    public func computePlan(compiledAt url: URL, computeUnits: ComputeUnits) throws -> [String: Any] {
        let spec = try Self.spec(at: url)
        let ops = spec.operations ?? [FakeOperation(operator: spec.behavior ?? "identity", device: "cpu", cost: 1.0)]
        let list: [[String: Any]] = ops.enumerated().map { i, op in
            ["function": "main", "index": i, "operator": op.operator,
             "outputs": [String](), "preferred_device": op.device,
             "supported_devices": ["cpu"], "estimated_cost": op.cost ?? 0.0]
        }
        return computePlanObject(modelType: "program", operations: list)
    }

    public func runtimeInfo() -> RuntimeInfo { Runtimes.platform.runtimeInfo() }
}

func sleepMs(_ ms: Int?) {
    guard let ms = ms, ms > 0 else { return }
    usleep(useconds_t(min(ms, 3_600_000) * 1000))
}

struct FakeFeature: Decodable {
    var name: String
    var dtype: String?
    var shape: [Int]?
    var optional: Bool?
    var feature_type: String?
    var enumerated_shapes: [[Int]]?
    var ranges: [FakeRange]?
    /// An image feature's constraint (feature_type "image").
    var image: FakeImage?

    func schema() throws -> FeatureSchema {
        var dt: DType?
        if let d = dtype {
            guard let parsed = DType(name: d) else { throw BridgeError.invalid("fake model: unknown dtype '\(d)'") }
            dt = parsed
        }
        let constraint: ShapeConstraint
        if let e = enumerated_shapes {
            constraint = .enumerated(e)
        } else if let r = ranges {
            constraint = .range(r.map { DimRange(lower: $0.lower, upper: $0.upper) })
        } else if shape != nil {
            constraint = .unspecified
        } else {
            constraint = .none
        }
        var f = FeatureSchema(name: name, featureType: feature_type ?? "multiArray", optional: optional ?? false,
                              dtype: dt, shape: shape ?? [], constraint: constraint)
        if f.featureType == "image" {
            f.image = try (image ?? FakeImage(width: 4, height: 3)).schema()
            f.constraint = .none
        }
        return f
    }
}

/// An image feature of a fake model.
struct FakeImage: Decodable {
    var width: Int
    var height: Int
    /// "rgb" (default), "bgr", "color", "grayscale" or "grayscale_f16".
    var color_layout: String?
    var enumerated_sizes: [[Int]]?
    var width_range: FakeRange?
    var height_range: FakeRange?

    init(width: Int, height: Int) {
        self.width = width
        self.height = height
    }

    func schema() throws -> ImageSchema {
        guard let layout = ImageColorLayout(rawValue: color_layout ?? "rgb") else {
            throw BridgeError.invalid("fake model: unknown color_layout '\(color_layout ?? "")'")
        }
        let format: UInt32
        switch layout {
        case .grayscale: format = CVPixelFormat.oneComponent8
        case .grayscaleF16: format = CVPixelFormat.oneComponent16Half
        case .color, .rgb, .bgr: format = CVPixelFormat.bgra32
        }
        var sizes = ImageSizeConstraint.unspecified
        if let e = enumerated_sizes {
            sizes = .enumerated(try e.map { s in
                guard s.count == 2 else { throw BridgeError.invalid("fake model: an enumerated size is [width, height]") }
                return ImageSize(width: s[0], height: s[1])
            })
        } else if let w = width_range, let h = height_range {
            sizes = .range(width: DimRange(lower: w.lower, upper: w.upper), height: DimRange(lower: h.lower, upper: h.upper))
        }
        return ImageSchema(width: width, height: height, pixelFormat: format, colorLayout: layout, sizes: sizes)
    }
}

struct FakeRange: Decodable {
    var lower: Int
    var upper: Int?
}

struct FakeMetadata: Decodable {
    var author: String?
    var description: String?
    var version: String?
    var license: String?
    var user_defined: [String: String]?
}

struct FakeOperation: Decodable {
    var `operator`: String
    var device: String
    var cost: Double?
}

final class FakeError: Decodable {
    var domain: String
    var code: Int
    var message: String
    var underlying: FakeError?

    init(domain: String, code: Int, message: String, underlying: FakeError?) {
        self.domain = domain
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    var nsError: NSError {
        var info: [String: Any] = [NSLocalizedDescriptionKey: message]
        if let u = underlying { info[NSUnderlyingErrorKey] = u.nsError }
        return NSError(domain: domain, code: code, userInfo: info)
    }
}

/// The contents of `fake_model.json`. Every field is optional.
struct FakeSpec: Decodable {
    /// "identity" (default) or "add_one".
    var behavior: String?
    /// Sleep in every prediction / load / compile.
    var sleep_ms: Int?
    var load_sleep_ms: Int?
    var compile_sleep_ms: Int?
    /// "compile", "load" or "predict": fail there with `error`.
    var fail_stage: String?
    var error: FakeError?
    /// Default: one input "x" and one output "y", any shape and dtype.
    var inputs: [FakeFeature]?
    var outputs: [FakeFeature]?
    /// States (behavior "accumulate": default one f32 state "s" of shape [3];
    /// the first one is the accumulator).
    var states: [FakeFeature]?
    /// A multifunction model: function name -> behaviour, and the function
    /// a load without a name selects.
    var functions: [String: String]?
    /// Labels of a "classify" model.
    var class_labels: [String]?
    var default_function: String?
    /// Extra elements after each innermost row of every output (like ANE
    /// padding): the bridge must copy outputs through their strides.
    var pad_outputs: Int?
    var metadata: FakeMetadata?
    var operations: [FakeOperation]?

    init(named stem: String) {
        let s = stem.lowercased()
        if s.hasPrefix("add_one") {
            behavior = "add_one"
        } else if s.hasPrefix("classify") {
            behavior = "classify"
        } else if s.hasPrefix("image") {
            behavior = "image"
        } else if s.hasPrefix("accumulate") {
            behavior = "accumulate"
        } else if s.hasPrefix("fail_") {
            fail_stage = String(s.dropFirst(5))
        } else if s.hasPrefix("sleep_") {
            let digits = s.dropFirst(6).prefix { $0.isNumber }
            sleep_ms = Int(digits)
        }
    }

    func nsError(stage: String) -> NSError {
        (error ?? FakeError(
            domain: "com.apple.CoreML", code: 0,
            message: "fake \(stage) failure",
            underlying: FakeError(domain: NSPOSIXErrorDomain, code: 5, message: "Input/output error", underlying: nil)
        )).nsError
    }

    func schema() throws -> ModelSchema {
        let stateful = behavior == "accumulate"
        let defaultStates = stateful ? [FakeFeature(name: "s", dtype: "f32", shape: [3])] : []
        let sts = try (states ?? defaultStates).map { f -> FeatureSchema in
            var st = try f.schema()
            st.featureType = "state"
            st.constraint = .none
            return st
        }
        let defaultShape = stateful ? sts.first?.shape : nil
        let labels = class_labels ?? ["cat", "dog", "fish"]
        let imageModel = behavior == "image"
        let classify = behavior == "classify"
        let defaultOutputs = classify
            ? [FakeFeature(name: "classLabel", featureType: "string"), FakeFeature(name: "classLabel_probs", featureType: "dictionary")]
            : imageModel
            ? [FakeFeature(name: "pixels", dtype: "i32"), FakeFeature(name: "pixel_format", featureType: "int64")]
            : [FakeFeature(name: "y", dtype: stateful ? "f32" : nil, shape: defaultShape)]
        let inputShape = classify ? [labels.count] : defaultShape
        let defaultInputs = imageModel
            ? [FakeFeature(name: "image", featureType: "image")]
            : [FakeFeature(name: "x", dtype: stateful || classify ? "f32" : nil, shape: inputShape)]
        let ins = try (inputs ?? defaultInputs).map { try $0.schema() }
        let outs = try (outputs ?? defaultOutputs).map { try $0.schema() }
        var meta = ModelMetadata()
        if let m = metadata {
            meta.author = m.author ?? ""
            meta.description = m.description ?? ""
            meta.version = m.version ?? ""
            meta.license = m.license ?? ""
            meta.userDefined = m.user_defined ?? [:]
        }
        var schema = ModelSchema(inputs: ins, outputs: outs, states: sts, metadata: meta)
        if classify {
            schema.classifier = ClassifierSchema(labelOutput: "classLabel", probabilitiesOutput: "classLabel_probs",
                                                 stringLabels: labels)
        }
        return schema
    }
}

/// The fake model: output i is computed from input i (inputs and outputs in
/// the order of the spec), with the input's dtype and shape.
final class FakeModel: LoadedModel {
    let spec: FakeSpec
    let schema: ModelSchema
    let inputOrder: [String]
    let outputOrder: [String]

    init(spec: FakeSpec, schema: ModelSchema) {
        self.spec = spec
        self.schema = schema
        let image = spec.behavior == "image"
        inputOrder = spec.inputs?.map { $0.name } ?? [image ? "image" : "x"]
        outputOrder = spec.outputs?.map { $0.name } ?? (image ? ["pixels", "pixel_format"] : ["y"])
    }

    func predict(_ inputs: [HostTensor]) throws -> [HostTensor] {
        sleepMs(spec.sleep_ms)
        if spec.fail_stage == "predict" { throw spec.nsError(stage: "predict") }
        if spec.behavior == "accumulate" {
            throw NSError(domain: coreMLErrorDomain, code: 0, userInfo: [
                NSLocalizedDescriptionKey: "fake: this model is stateful; predict with a state",
            ])
        }
        let byName = Dictionary(inputs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let ordered = inputOrder.compactMap { byName[$0] }
        guard !ordered.isEmpty else { return [] }
        var outputs: [HostTensor] = []
        for (i, name) in outputOrder.enumerated() {
            let source = ordered[i % ordered.count]
            outputs.append(try produce(name: name, from: source))
        }
        return outputs
    }

    /// Features of every kind: "classify" labels its input; otherwise output
    /// i comes from input i (tensors as `predict`; scalars and strings
    /// echoed, numbers plus one for "add_one").
    func predictFeatures(_ inputs: [NamedFeature]) throws -> [NamedFeature] {
        sleepMs(spec.sleep_ms)
        if spec.fail_stage == "predict" { throw spec.nsError(stage: "predict") }
        if spec.behavior == "classify" {
            guard let c = schema.classifier, let f = inputs.first, case .tensor(let x) = f.value,
                  x.dtype == .f32, x.elementCount == c.stringLabels.count, !c.stringLabels.isEmpty else {
                throw BridgeError(.schemaMismatch, "fake classifier: needs one f32 input of \(schema.classifier?.stringLabels.count ?? 0) scores")
            }
            let scores = x.values(as: Float.self)
            var best = 0
            for (i, v) in scores.enumerated() where v > scores[best] { best = i }
            let probs = zip(c.stringLabels, scores).map { (key: FeatureKey.string($0), value: Double($1)) }
            return [NamedFeature(name: c.labelOutput, value: .string(c.stringLabels[best])),
                    NamedFeature(name: c.probabilitiesOutput ?? "probs", value: .dictionary(probs))]
        }
        if spec.behavior == "image" {
            guard let img = inputs.lazy.compactMap({ f -> HostImage? in
                if case .image(let i) = f.value { return i }
                return nil
            }).first else {
                throw BridgeError(.schemaMismatch, "fake image model: no image input")
            }
            return [NamedFeature(name: outputOrder.first ?? "pixels", value: .tensor(try Self.pixels(img, name: outputOrder.first ?? "pixels"))),
                    NamedFeature(name: outputOrder.count > 1 ? outputOrder[1] : "pixel_format",
                                 value: .int64(Int64(img.storage.pixelFormat)))]
        }
        let byName = Dictionary(inputs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let ordered = inputOrder.compactMap { byName[$0] }
        guard !ordered.isEmpty else { return [] }
        let plus = spec.behavior == "add_one"
        var outputs: [NamedFeature] = []
        for (i, name) in outputOrder.enumerated() {
            let source = ordered[i % ordered.count]
            switch source.value {
            case .tensor(let t): outputs.append(NamedFeature(name: name, value: .tensor(try produce(name: name, from: t))))
            case .int64(let v): outputs.append(NamedFeature(name: name, value: .int64(plus ? v &+ 1 : v)))
            case .double(let v): outputs.append(NamedFeature(name: name, value: .double(plus ? v + 1 : v)))
            case .string(let s): outputs.append(NamedFeature(name: name, value: .string(s)))
            case .dictionary(let d): outputs.append(NamedFeature(name: name, value: .dictionary(d)))
            case .image(let img): outputs.append(NamedFeature(name: name, value: .tensor(try Self.pixels(img, name: name))))
            }
        }
        return outputs
    }

    /// The stored pixels' bytes as i32 [H, W, bytes per pixel], read row by
    /// row through the storage's stride (as a model reads a CVPixelBuffer).
    static func pixels(_ img: HostImage, name: String) throws -> HostTensor {
        let s = img.storage
        let bpp: Int
        switch s.pixelFormat {
        case CVPixelFormat.oneComponent8: bpp = 1
        case CVPixelFormat.oneComponent16Half: bpp = 2
        default: bpp = 4
        }
        let count = s.width * s.height * bpp
        let buffer = try TensorBuffer(byteCount: count * 4)
        let out = buffer.pointer.bindMemory(to: Int32.self, capacity: count)
        for y in 0..<s.height {
            let row = (UnsafeRawPointer(s.baseAddress) + y * s.bytesPerRow).assumingMemoryBound(to: UInt8.self)
            for k in 0..<(s.width * bpp) { out[y * s.width * bpp + k] = Int32(row[k]) }
        }
        return try HostTensor(name: name, dtype: .i32, shape: [s.height, s.width, bpp], buffer: buffer)
    }

    /// Like Core ML's `makeState()`: every state buffer zeroed (an empty
    /// state for a stateless model).
    func makeState() throws -> AnyObject {
        sleepMs(spec.load_sleep_ms)
        let state = FakeState()
        for st in schema.states {
            guard st.dtype == .f32 else {
                throw BridgeError(.unsupported, "fake model: state '\(st.name)' must be f32")
            }
            state.values[st.name] = [Float](repeating: 0, count: try Strided.elementCount(st.shape))
        }
        return state
    }

    /// "accumulate": s += x, y = s, committed only once all of it is
    /// computed (never a half-updated state). Other behaviours ignore the
    /// state.
    func predict(_ inputs: [HostTensor], state: AnyObject) throws -> [HostTensor] {
        guard let fs = state as? FakeState else {
            throw BridgeError(.internalError, "fake model: a state of another runtime")
        }
        guard spec.behavior == "accumulate" else { return try predict(inputs) }
        sleepMs(spec.sleep_ms)
        if spec.fail_stage == "predict" { throw spec.nsError(stage: "predict") }
        guard let st = schema.states.first, let current = fs.values[st.name],
              let x = inputs.first(where: { $0.name == inputOrder.first }) else {
            throw BridgeError(.internalError, "fake accumulator: no state or no input")
        }
        guard x.dtype == .f32, x.elementCount == current.count else {
            throw BridgeError(.schemaMismatch, "fake accumulator: input '\(x.name)' is \(x.dtype.name) \(x.shape); the state '\(st.name)' is f32 \(st.shape)")
        }
        let add = x.values(as: Float.self)
        let next = zip(current, add).map { $0 + $1 }
        let buffer = try TensorBuffer(byteCount: next.count * 4)
        next.withUnsafeBytes { raw in
            if let base = raw.baseAddress { buffer.pointer.copyMemory(from: base, byteCount: raw.count) }
        }
        let y = try HostTensor(name: outputOrder.first ?? "y", dtype: .f32, shape: st.shape, buffer: buffer)
        fs.values[st.name] = next
        return [y]
    }

    /// Writes the result into a padded, strided buffer (when pad_outputs > 0)
    /// and gathers it back the way the Core ML adapter does with MLMultiArray.
    private func produce(name: String, from x: HostTensor) throws -> HostTensor {
        let pad = max(spec.pad_outputs ?? 0, 0)
        var padded = x.shape
        if let last = padded.last { padded[padded.count - 1] = last + pad }
        let strides = Strided.rowMajorStrides(padded)
        let storageElements = try Strided.elementCount(padded)
        let storage = try TensorBuffer(byteCount: storageElements * x.dtype.size)
        memset(storage.pointer, 0xAB, storage.byteCount) // poison the padding
        try Strided.copy(shape: x.shape, elementSize: x.dtype.size,
                         src: x.buffer.pointer, srcStrides: Strided.rowMajorStrides(x.shape), srcByteCount: x.byteCount,
                         dst: storage.pointer, dstStrides: strides, dstByteCount: storage.byteCount)
        if spec.behavior == "add_one" {
            try addOne(storage: storage, dtype: x.dtype, shape: x.shape, strides: strides)
        }
        return try HostTensor.gather(name: name, dtype: x.dtype, shape: x.shape, strides: strides,
                                     from: UnsafeRawBufferPointer(start: storage.pointer, count: storage.byteCount))
    }

    func addOne(storage: TensorBuffer, dtype: DType, shape: [Int], strides: [Int]) throws {
        let n = try Strided.elementCount(shape)
        guard n > 0 else { return }
        var index = [Int](repeating: 0, count: shape.count)
        for _ in 0..<n {
            var off = 0
            for (i, s) in zip(index, strides) { off += i * s }
            let p = storage.pointer + off * dtype.size
            switch dtype {
            case .f32: p.storeBytes(of: p.load(as: Float.self) + 1, as: Float.self)
            case .f64: p.storeBytes(of: p.load(as: Double.self) + 1, as: Double.self)
            case .f16: p.storeBytes(of: Half.fromFloat(Half.toFloat(p.load(as: UInt16.self)) + 1), as: UInt16.self)
            case .i32: p.storeBytes(of: p.load(as: Int32.self) &+ 1, as: Int32.self)
            case .i8: p.storeBytes(of: p.load(as: Int8.self) &+ 1, as: Int8.self)
            case .i64: p.storeBytes(of: p.load(as: Int64.self) &+ 1, as: Int64.self)
            }
            var k = shape.count - 1
            while k >= 0 {
                index[k] += 1
                if index[k] < shape[k] { break }
                index[k] = 0
                k -= 1
            }
        }
    }
}

extension FakeFeature {
    init(name: String, dtype: String? = nil, shape: [Int]? = nil, featureType: String? = nil) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.feature_type = featureType
    }
}

/// The fake runtime's MLState: one f32 buffer per state, touched only on
/// the model's queue.
final class FakeState {
    var values: [String: [Float]] = [:]
}

// ABI v2's feature calls (coreml_predict_features, coreml_free_feature_outputs):
// feature values of every kind in and out, with the same rules as
// coreml_predict (pool, deadline first, checks before any copy, nothing
// trapping).
import CoreMLBridgeC
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Longest string input accepted (bytes, without the NUL).
let maxStringBytes = 16 << 20

/// A caller's feature, checked, nothing copied yet.
enum FeatureView {
    case tensor(InputView)
    case int64(Int64)
    case double(Double)
    case string(UnsafePointer<CChar>, Int)
}

/// Reads the caller's feature descriptors, checking every field.
func readFeatureViews(_ inputs: UnsafePointer<CoremlFeature>?, _ count: Int32) throws -> [(name: String, view: FeatureView)] {
    guard let inputs = inputs else { throw BridgeError.invalid("inputs is NULL") }
    guard count >= 1, count <= maxInputs else {
        throw BridgeError.invalid("n_inputs must be in 1...\(maxInputs) (got \(count))")
    }
    var result: [(name: String, view: FeatureView)] = []
    var names = Set<String>()
    for i in 0..<Int(count) {
        let f = inputs[i]
        let name = try string(f.name, "input #\(i) name")
        let label = "input #\(i) '\(name)'"
        guard names.insert(name).inserted else { throw BridgeError.invalid("\(label): duplicate name") }
        switch f.kind {
        case Int32(COREML_FEATURE_TENSOR.rawValue):
            result.append((name, .tensor(try readTensorView(f.tensor, name: name, label: label))))
        case Int32(COREML_FEATURE_INT64.rawValue):
            result.append((name, .int64(f.int64_value)))
        case Int32(COREML_FEATURE_DOUBLE.rawValue):
            result.append((name, .double(f.double_value)))
        case Int32(COREML_FEATURE_STRING.rawValue):
            guard let p = f.string_value else { throw BridgeError.invalid("\(label): string_value is NULL") }
            let n = strnlen(p, maxStringBytes + 1)
            guard n <= maxStringBytes else {
                throw BridgeError.invalid("\(label): string longer than \(maxStringBytes) bytes")
            }
            result.append((name, .string(p, n)))
        default:
            throw BridgeError.invalid("\(label): unknown or input-less feature kind \(f.kind) (1 tensor, 2 int64, 3 double, 4 string)")
        }
    }
    return result
}

/// Checks feature views against the model and the byte cap, then copies them.
func readAndCopyFeatures(_ inputs: UnsafePointer<CoremlFeature>?, _ count: Int32,
                         schema: ModelSchema, deadline: CallDeadline) throws -> [NamedFeature] {
    let views = try readFeatureViews(inputs, count)
    try schema.validate(features: featureSignatures(views))
    let tensorViews = views.compactMap { v -> InputView? in
        if case .tensor(let t) = v.view { return t }
        return nil
    }
    try checkInputBytes(tensorViews)
    return try copyFeatureViews(views, deadline: deadline)
}

/// What schema validation needs of each feature view.
func featureSignatures(_ views: [(name: String, view: FeatureView)]) -> [(name: String, featureType: String, signature: InputSignature?)] {
    views.map { v -> (name: String, featureType: String, signature: InputSignature?) in
        switch v.view {
        case .tensor(let t): return (v.name, "multiArray", t.signature)
        case .int64: return (v.name, "int64", nil)
        case .double: return (v.name, "double", nil)
        case .string: return (v.name, "string", nil)
        }
    }
}

/// Copies checked feature views into bridge-owned values under the deadline.
func copyFeatureViews(_ views: [(name: String, view: FeatureView)], deadline: CallDeadline) throws -> [NamedFeature] {
    var result: [NamedFeature] = []
    for v in views {
        switch v.view {
        case .tensor(let t):
            result.append(NamedFeature(name: v.name, value: .tensor(try copyInputs([t], deadline: deadline)[0])))
        case .int64(let x): result.append(NamedFeature(name: v.name, value: .int64(x)))
        case .double(let x): result.append(NamedFeature(name: v.name, value: .double(x)))
        case .string(let p, let n):
            let bytes = UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: n)
            guard let s = String(validating: bytes, as: UTF8.self) else {
                throw BridgeError.invalid("input '\(v.name)': string_value is not valid UTF-8")
            }
            result.append(NamedFeature(name: v.name, value: .string(s)))
        }
    }
    return result
}

/// Everything a CoremlFeatureOutputs points into; released by
/// coreml_free_feature_outputs.
final class FeatureOutputsStorage {
    let tensors: [HostTensor]
    let descriptors: UnsafeMutablePointer<CoremlOutputFeature>
    private var allocations: [UnsafeMutableRawPointer] = []

    private func alloc(_ bytes: Int) throws -> UnsafeMutableRawPointer {
        guard let p = malloc(max(bytes, 1)) else {
            throw BridgeError(.outOfMemory, "could not allocate \(bytes) bytes of outputs")
        }
        allocations.append(p)
        return p
    }

    private func cString(_ s: String) throws -> UnsafePointer<CChar> {
        guard let p = strdup(s) else { throw BridgeError(.outOfMemory, "could not allocate an output string") }
        allocations.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    init(_ features: [NamedFeature]) throws {
        var tensors: [HostTensor] = []
        for f in features { if case .tensor(let t) = f.value { tensors.append(t) } }
        self.tensors = tensors
        guard let d = malloc(max(features.count, 1) * MemoryLayout<CoremlOutputFeature>.stride) else {
            throw BridgeError(.outOfMemory, "could not allocate output descriptors")
        }
        descriptors = d.bindMemory(to: CoremlOutputFeature.self, capacity: max(features.count, 1))
        let empty = CoremlOutputTensor(name: nil, dtype: 0, rank: 0, shape: nil, data: nil, byte_len: 0)
        for (i, f) in features.enumerated() {
            var out = CoremlOutputFeature(name: try cString(f.name), kind: 0, tensor: empty, int64_value: 0,
                                          double_value: 0, string_value: nil, dict_count: 0, dict_key_kind: 0,
                                          dict_string_keys: nil, dict_int64_keys: nil, dict_values: nil)
            switch f.value {
            case .tensor(let t):
                out.kind = Int32(COREML_FEATURE_TENSOR.rawValue)
                let shape = try alloc(max(t.shape.count, 1) * MemoryLayout<Int64>.stride)
                    .bindMemory(to: Int64.self, capacity: max(t.shape.count, 1))
                for (k, dim) in t.shape.enumerated() { shape[k] = Int64(dim) }
                out.tensor = CoremlOutputTensor(name: out.name, dtype: t.dtype.rawValue, rank: Int32(t.shape.count),
                                                shape: UnsafePointer(shape), data: UnsafeRawPointer(t.buffer.pointer),
                                                byte_len: UInt64(t.byteCount))
            case .int64(let v):
                out.kind = Int32(COREML_FEATURE_INT64.rawValue)
                out.int64_value = v
            case .double(let v):
                out.kind = Int32(COREML_FEATURE_DOUBLE.rawValue)
                out.double_value = v
            case .string(let s):
                out.kind = Int32(COREML_FEATURE_STRING.rawValue)
                out.string_value = try cString(s)
            case .image:
                throw BridgeError(.internalError, "output '\(f.name)': image outputs are not returned by the feature calls")
            case .dictionary(let entries):
                out.kind = Int32(COREML_FEATURE_DICTIONARY.rawValue)
                guard entries.count <= Int(Int32.max) else {
                    throw BridgeError(.outOfMemory, "output '\(f.name)': dictionary of \(entries.count) entries")
                }
                let n = entries.count
                out.dict_count = Int32(n)
                let values = try alloc(n * MemoryLayout<Double>.stride).bindMemory(to: Double.self, capacity: max(n, 1))
                let stringKeyed = entries.allSatisfy { if case .string = $0.key { return true } else { return false } }
                if stringKeyed {
                    out.dict_key_kind = Int32(COREML_FEATURE_STRING.rawValue)
                    let keys = try alloc(n * MemoryLayout<UnsafePointer<CChar>?>.stride)
                        .bindMemory(to: UnsafePointer<CChar>?.self, capacity: max(n, 1))
                    for (k, e) in entries.enumerated() {
                        if case .string(let s) = e.key { keys[k] = try cString(s) }
                        values[k] = e.value
                    }
                    out.dict_string_keys = UnsafePointer(keys)
                } else {
                    out.dict_key_kind = Int32(COREML_FEATURE_INT64.rawValue)
                    let keys = try alloc(n * MemoryLayout<Int64>.stride).bindMemory(to: Int64.self, capacity: max(n, 1))
                    for (k, e) in entries.enumerated() {
                        guard case .int64(let v) = e.key else {
                            throw BridgeError(.internalError, "output '\(f.name)': a dictionary with mixed key types")
                        }
                        keys[k] = v
                        values[k] = e.value
                    }
                    out.dict_int64_keys = UnsafePointer(keys)
                }
                out.dict_values = UnsafePointer(values)
            }
            (descriptors + i).initialize(to: out)
        }
    }

    deinit {
        allocations.forEach { free($0) }
        free(descriptors)
    }
}

let liveFeatureOutputs = LiveSet()

func makeFeatureOutputs(_ features: [NamedFeature]) throws -> UnsafeMutablePointer<CoremlFeatureOutputs> {
    let sorted = features.map { f -> NamedFeature in
        guard case .dictionary(let d) = f.value else { return f }
        return NamedFeature(name: f.name, value: .dictionary(d.sorted { a, b in
            switch (a.key, b.key) {
            case (.string(let x), .string(let y)): return x < y
            case (.int64(let x), .int64(let y)): return x < y
            case (.string, .int64): return true
            case (.int64, .string): return false
            }
        }))
    }.sorted { $0.name < $1.name }
    let storage = try FeatureOutputsStorage(sorted)
    guard let raw = malloc(MemoryLayout<CoremlFeatureOutputs>.stride) else {
        throw BridgeError(.outOfMemory, "could not allocate outputs")
    }
    let outputs = raw.bindMemory(to: CoremlFeatureOutputs.self, capacity: 1)
    outputs.initialize(to: CoremlFeatureOutputs(
        count: Int32(sorted.count), features: UnsafePointer(storage.descriptors),
        reserved: Unmanaged.passRetained(storage).toOpaque()))
    liveFeatureOutputs.insert(UInt(bitPattern: outputs))
    return outputs
}

@_cdecl("coreml_predict_features")
public func coreml_predict_features(_ handle: UnsafeMutableRawPointer?,
                                    _ inputs: UnsafePointer<CoremlFeature>?,
                                    _ nInputs: Int32,
                                    _ timeoutMs: Int64,
                                    _ outOutputs: UnsafeMutablePointer<UnsafeMutablePointer<CoremlFeatureOutputs>?>?,
                                    _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outOutputs?.pointee = nil
        let out = try requireOut(outOutputs, "out_outputs")
        let deadline = try CallDeadline(timeoutMs: timeoutMs)
        let h = try Bridge.lookup(handleID(handle))
        try h.checkNotPoisoned()
        let features = try readAndCopyFeatures(inputs, nInputs, schema: h.schema, deadline: deadline)
        let results = try Bridge.predictFeatures(h, inputs: features, deadline: deadline)
        out.pointee = try makeFeatureOutputs(results)
    }
}

@_cdecl("coreml_free_feature_outputs")
public func coreml_free_feature_outputs(_ outputs: UnsafeMutablePointer<CoremlFeatureOutputs>?) {
    guard let outputs = outputs, liveFeatureOutputs.remove(UInt(bitPattern: outputs)) else { return }
    withAutoreleasePool {
        if let reserved = outputs.pointee.reserved {
            Unmanaged<FeatureOutputsStorage>.fromOpaque(reserved).release()
        }
        free(outputs)
    }
}

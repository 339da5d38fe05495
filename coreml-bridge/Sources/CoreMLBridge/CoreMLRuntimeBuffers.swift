// coreml_predict_into on Core ML: the bridge's staging buffers offered as
// MLPredictionOptions.outputBackings. Written and type-checked against
// CoreMLShim on Linux; never run here (see CoreMLRuntime.swift).
#if canImport(CoreML)
import CoreML
#else
import CoreMLShim
#endif
import Foundation

extension CoreMLLoadedModel {
    /// Offers every backing (row-major, the caller's dtype and shape, in a
    /// bridge-owned staging buffer, so a late prediction writes only there)
    /// as an output backing. Core ML may decline one (e.g. a padded Neural
    /// Engine layout, or an output that is not a multi-array) and return its
    /// own array: an output counts as written into its backing only when the
    /// returned array's storage is the backing's. Either way the bridge then
    /// makes the one copy into the caller's memory, reading Core ML's array
    /// inside `withUnsafeBytes`.
    func predictInto(_ inputs: [HostTensor], backings: [OutputBacking]) throws -> [OutputSource] {
        let options = MLPredictionOptions()
        var offered: [String: Any] = [:]
        for b in backings {
            // i8 needs macOS 26; such an output is simply not offered.
            guard b.dtype != .i8, let raw = b.dtype.multiArrayRawValue,
                  let dataType = MLMultiArrayDataType(rawValue: raw) else { continue }
            let buffer = b.buffer
            offered[b.name] = try MLMultiArray(dataPointer: buffer.pointer,
                                               shape: b.shape.map { NSNumber(value: $0) },
                                               dataType: dataType,
                                               strides: Strided.rowMajorStrides(b.shape).map { NSNumber(value: $0) },
                                               deallocator: { _ in withExtendedLifetime(buffer) {} })
        }
        options.outputBackings = offered
        let result = try model.prediction(from: try Self.provider(inputs), options: options)
        var sources: [OutputSource] = []
        for name in result.featureNames.sorted() {
            guard let value = result.featureValue(for: name) else { continue }
            switch value.type {
            case .multiArray:
                guard let array = value.multiArrayValue else { continue }
                guard let dtype = DType(multiArrayRawValue: array.dataType.rawValue) else {
                    throw BridgeError(.unsupported, "output '\(name)' has an unsupported data type (raw \(array.dataType.rawValue))")
                }
                let shape = array.shape.map { $0.intValue }
                let strides = array.strides.map { $0.intValue }
                let backing = backings.first { $0.name == name }
                let inBacking = backing.map { b in
                    array.withUnsafeBytes { $0.baseAddress == UnsafeRawPointer(b.buffer.pointer) }
                } ?? false
                sources.append(OutputSource(name: name, dtype: dtype, shape: shape, strides: strides,
                                            inBacking: inBacking) { body in
                    try array.withUnsafeBytes { try body($0) }
                })
            case .double:
                sources.append(OutputSource(tensor: try Self.scalar(name: name, dtype: .f64, value: value.doubleValue)))
            case .int64:
                sources.append(OutputSource(tensor: try Self.scalar(name: name, dtype: .i64, value: value.int64Value)))
            default:
                continue // not a tensor: coreml_predict_into refuses such outputs up front
            }
        }
        return sources
    }
}

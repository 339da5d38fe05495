import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension FakeModel {
    /// Output backings in the fake runtime, behaving as Core ML does with
    /// `outputBackings`: an output is written into its backing when the
    /// backing has the output's dtype and shape and the model's layout is
    /// row-major; with `pad_outputs` (a padded layout, like the Neural
    /// Engine's) or a backing that does not fit, the output goes into the
    /// runtime's own strided array instead, as Core ML ignores such a
    /// backing. Classifiers and stateful models use `predict`.
    func predictInto(_ inputs: [HostTensor], backings: [OutputBacking]) throws -> [OutputSource] {
        if spec.behavior == "accumulate" || spec.behavior == "classify" {
            return try predict(inputs).map { OutputSource(tensor: $0) }
        }
        sleepMs(spec.sleep_ms)
        if spec.fail_stage == "predict" { throw spec.nsError(stage: "predict") }
        let ordered = inputOrder.compactMap { n in inputs.first { $0.name == n } }
        guard !ordered.isEmpty else { return [] }
        let pad = max(spec.pad_outputs ?? 0, 0)
        let plusOne = spec.behavior == "add_one"
        var result: [OutputSource] = []
        result.reserveCapacity(outputOrder.count)
        for (i, name) in outputOrder.enumerated() {
            let x = ordered[i % ordered.count]
            if pad == 0, let b = backings.first(where: { $0.name == name }), b.dtype == x.dtype, b.shape == x.shape {
                b.buffer.pointer.copyMemory(from: x.buffer.pointer, byteCount: x.byteCount)
                if plusOne {
                    try addOne(storage: b.buffer, dtype: x.dtype, shape: x.shape, strides: Strided.rowMajorStrides(x.shape))
                }
                let t = try HostTensor(name: name, dtype: x.dtype, shape: x.shape, buffer: b.buffer)
                result.append(OutputSource(tensor: t, inBacking: true))
                continue
            }
            var padded = x.shape
            if let last = padded.last { padded[padded.count - 1] = last + pad }
            let strides = Strided.rowMajorStrides(padded)
            let elements = try Strided.elementCount(padded)
            guard let bytes = Strided.checkedMul(elements, x.dtype.size) else {
                throw BridgeError(.outOfMemory, "fake: output '\(name)' is too large")
            }
            let storage = try TensorBuffer(byteCount: bytes)
            memset(storage.pointer, 0xAB, storage.byteCount) // poison the padding
            try Strided.copy(shape: x.shape, elementSize: x.dtype.size,
                             src: x.buffer.pointer, srcStrides: Strided.rowMajorStrides(x.shape), srcByteCount: x.byteCount,
                             dst: storage.pointer, dstStrides: strides, dstByteCount: storage.byteCount)
            if plusOne { try addOne(storage: storage, dtype: x.dtype, shape: x.shape, strides: strides) }
            result.append(OutputSource(name: name, dtype: x.dtype, shape: x.shape, strides: strides,
                                       buffer: storage, inBacking: false))
        }
        return result
    }
}

// coreml_predict_into and coreml_debug_counters: predictions whose outputs
// land in the caller's memory with one copy, through pooled staging buffers.
//
// Why the caller's memory is written only on the caller's thread: a call
// that times out returns while its prediction keeps running (Core ML cannot
// be interrupted). If that prediction wrote into the caller's buffers (as
// an output backing wrapping them would), it could write into memory the
// caller has freed or reused. So the prediction only ever sees bridge-owned
// staging buffers leased from the handle's pool (inputs are copied into
// them, outputs are produced into them), and the one copy into the caller's
// buffers is made by the calling thread after a successful wait, before it
// returns. A late prediction keeps its leased buffers alive by itself and
// they are freed when it ends. The same reasoning rules out wrapping the
// caller's input memory: a late prediction would read it after the return.
import CoreMLBridgeC
import Foundation

/// A caller's output buffer, every field checked. Valid only during the C
/// call that received it.
struct OutputTarget {
    let name: String
    let dtype: DType
    let shape: [Int]
    let strides: [Int]
    let data: UnsafeMutableRawPointer
    let byteLen: Int
    /// Row-major size of the output.
    let byteCount: Int
}

let maxOutputs: Int32 = 4096

/// Reads the caller's output descriptors with checked arithmetic and checks
/// them against the model's outputs (name, multi-array, dtype when known).
func readOutputTargets(_ outputs: UnsafePointer<CoremlOutputBuffer>?, _ count: Int32,
                       schema: ModelSchema) throws -> [OutputTarget] {
    guard let outputs = outputs else { throw BridgeError.invalid("outputs is NULL") }
    guard count >= 1, count <= maxOutputs else {
        throw BridgeError.invalid("n_outputs must be in 1...\(maxOutputs) (got \(count))")
    }
    let byName = Dictionary(schema.outputs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    var result: [OutputTarget] = []
    var names = Set<String>()
    for i in 0..<Int(count) {
        let o = outputs[i]
        let name = try string(o.name, "output buffer #\(i) name")
        let label = "output buffer #\(i) '\(name)'"
        guard names.insert(name).inserted else { throw BridgeError.invalid("\(label): duplicate name") }
        guard let f = byName[name] else {
            throw BridgeError(.schemaMismatch, "\(label) is not an output of the model (outputs: \(schema.outputs.map { $0.name }))")
        }
        guard f.featureType == "multiArray" else {
            throw BridgeError(.unsupported, "\(label): the output is a \(f.featureType) feature; coreml_predict_into writes multi-arrays only")
        }
        guard let dtype = DType(rawValue: o.dtype) else {
            throw BridgeError.invalid("\(label): unknown dtype code \(o.dtype) (1 f32, 2 f16, 3 f64, 4 i32, 5 i8, 6 i64)")
        }
        if let want = f.dtype, want != dtype {
            throw BridgeError(.schemaMismatch, "\(label) is \(dtype.name); the model produces \(want.name) (no conversion is done)")
        }
        let (shape, strides) = try readShape(o.rank, o.shape, o.strides, label)
        guard let data = o.data else { throw BridgeError.invalid("\(label): data is NULL") }
        guard o.byte_len <= UInt64(Int.max) else { throw BridgeError.invalid("\(label): byte_len too large") }
        let byteLen = Int(o.byte_len)
        let n = try Strided.elementCount(shape)
        guard let bytes = Strided.checkedMul(n, dtype.size) else {
            throw BridgeError(.outOfMemory, "\(label): shape \(shape) is too large")
        }
        let span = try Strided.span(shape: shape, strides: strides)
        guard let need = Strided.checkedMul(span, dtype.size), byteLen >= need else {
            throw BridgeError.invalid("\(label): byte_len is \(byteLen) but shape \(shape) with strides \(strides) spans \(span) elements of \(dtype.size) bytes")
        }
        result.append(OutputTarget(name: name, dtype: dtype, shape: shape, strides: strides,
                                   data: data, byteLen: byteLen, byteCount: bytes))
    }
    return result
}

extension Bridge {
    /// One prediction into the caller's buffers (see the file comment).
    /// Inputs validated against the model and capped before anything is
    /// leased; a timeout poisons the handle.
    static func predictInto(_ h: ModelHandle, views: [InputView], targets: [OutputTarget],
                            deadline: CallDeadline) throws {
        try h.checkNotPoisoned()
        let pool = h.buffers
        var leased: [TensorBuffer] = []
        leased.reserveCapacity(views.count + targets.count)
        var copied = 0
        var inputs: [HostTensor] = []
        inputs.reserveCapacity(views.count)
        for v in views {
            if deadline.expired {
                pool.giveBack(leased)
                throw BridgeError(.timeout, "copying the inputs did not finish within \(deadline.timeoutMs) ms; nothing ran")
            }
            let buffer = try pool.lease(byteCount: v.byteCount)
            leased.append(buffer)
            do {
                try Strided.copy(shape: v.shape, elementSize: v.dtype.size,
                                 src: v.data, srcStrides: v.strides, srcByteCount: v.byteLen,
                                 dst: buffer.pointer, dstStrides: Strided.rowMajorStrides(v.shape),
                                 dstByteCount: v.byteCount, shouldStop: { deadline.expired })
            } catch let e as BridgeError where e.status == .timeout {
                pool.giveBack(leased)
                throw BridgeError(.timeout, "copying input '\(v.name)' (\(v.byteCount) bytes) did not finish within \(deadline.timeoutMs) ms; nothing ran")
            } catch {
                pool.giveBack(leased)
                throw error
            }
            copied += v.byteCount
            inputs.append(try HostTensor(name: v.name, dtype: v.dtype, shape: v.shape, buffer: buffer))
        }
        var backings: [OutputBacking] = []
        backings.reserveCapacity(targets.count)
        for t in targets {
            let buffer = try pool.lease(byteCount: t.byteCount)
            leased.append(buffer)
            backings.append(OutputBacking(name: t.name, dtype: t.dtype, shape: t.shape, buffer: buffer))
        }
        let inputCount = views.count, inputBytes = copied
        pool.count { $0.inputCopies += inputCount; $0.bytesCopied += inputBytes }

        let model = h.model
        let sources: [OutputSource]
        do {
            let left = try deadline.remainingMs("prediction")
            // The work item holds `inputs` and `backings` (leased, bridge-
            // owned): after a timeout they live until the late prediction
            // ends, then are freed; they never go back to the pool.
            sources = try runWithDeadline(on: h.queue, timeoutMs: left, what: "prediction") {
                try model.predictInto(inputs, backings: backings)
            }
        } catch let e as BridgeError where e.status == .timeout {
            h.poison("a prediction timed out after \(deadline.timeoutMs) ms")
            throw BridgeError(.timeout, "prediction did not finish within \(deadline.timeoutMs) ms; the model handle is now poisoned")
        } catch {
            pool.giveBack(leased)
            throw bridgeError(error, status: .predict, context: "prediction failed")
        }
        defer { pool.giveBack(leased) }
        pool.count { $0.calls += 1 }

        // Match every target to its source and check it before writing any
        // caller byte, so a mismatch leaves the caller's buffers untouched.
        var pairs: [(OutputTarget, OutputSource)] = []
        pairs.reserveCapacity(targets.count)
        for t in targets {
            guard let s = sources.first(where: { $0.name == t.name }) else {
                throw BridgeError(.predict, "output buffer '\(t.name)': the prediction produced no such multi-array (produced: \(sources.map { $0.name }))")
            }
            guard s.dtype == t.dtype, s.shape == t.shape else {
                throw BridgeError(.schemaMismatch, "output buffer '\(t.name)' is \(t.dtype.name) \(t.shape); the model produced \(s.dtype.name) \(s.shape)")
            }
            pairs.append((t, s))
        }
        var outBytes = 0, inBacking = 0
        for (t, s) in pairs {
            do {
                try s.access { raw in
                    guard let src = raw.baseAddress else {
                        throw BridgeError(.internalError, "output '\(t.name)': the runtime gave no storage")
                    }
                    try Strided.copy(shape: t.shape, elementSize: t.dtype.size,
                                     src: src, srcStrides: s.strides, srcByteCount: raw.count,
                                     dst: t.data, dstStrides: t.strides, dstByteCount: t.byteLen,
                                     shouldStop: { deadline.expired })
                }
            } catch let e as BridgeError where e.status == .timeout {
                throw BridgeError(.timeout, "copying output '\(t.name)' (\(t.byteCount) bytes) did not finish within \(deadline.timeoutMs) ms; the output buffers are partly written")
            }
            outBytes += t.byteCount
            if s.inBacking { inBacking += 1 }
        }
        let n = pairs.count, owned = pairs.count - inBacking
        pool.count {
            $0.outputCopies += n
            $0.bytesCopied += outBytes
            $0.outputsInBacking += inBacking
            $0.outputsRuntimeOwned += owned
        }
    }
}

@_cdecl("coreml_predict_into")
public func coreml_predict_into(_ handle: UnsafeMutableRawPointer?,
                                _ inputs: UnsafePointer<CoremlTensor>?,
                                _ nInputs: Int32,
                                _ outputs: UnsafePointer<CoremlOutputBuffer>?,
                                _ nOutputs: Int32,
                                _ timeoutMs: Int64,
                                _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        let deadline = try CallDeadline(timeoutMs: timeoutMs)
        let h = try Bridge.lookup(handleID(handle))
        try h.checkNotPoisoned()
        let views = try readInputViews(inputs, nInputs)
        try h.schema.validate(views.map { $0.signature })
        try checkInputBytes(views)
        let targets = try readOutputTargets(outputs, nOutputs, schema: h.schema)
        try Bridge.predictInto(h, views: views, targets: targets, deadline: deadline)
    }
}

@_cdecl("coreml_debug_counters")
public func coreml_debug_counters(_ handle: UnsafeMutableRawPointer?,
                                  _ outJSON: CStringOut?,
                                  _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outJSON?.pointee = nil
        let out = try requireOut(outJSON, "out_json")
        let h = try Bridge.lookup(handleID(handle))
        try deliver(try encodeJSON(h.buffers.snapshot.jsonObject), to: out)
    }
}

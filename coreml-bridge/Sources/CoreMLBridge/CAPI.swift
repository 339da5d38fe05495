// The C entry points declared in include/coreml_bridge.h. Each one: runs in
// an autorelease pool, clears its out pointers, validates every argument,
// converts every Swift error into a status and an owned message, and never
// traps or throws across the boundary.
import CoreMLBridgeC
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public typealias CStringOut = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>

/// An owned C string for the caller (released with coreml_free_string).
func ownedCString(_ s: String) -> UnsafeMutablePointer<CChar>? {
    strdup(s)
}

func setError(_ outErr: CStringOut?, _ message: String) {
    guard let outErr = outErr else { return }
    outErr.pointee = ownedCString(message)
}

/// Runs an entry point body: pool, error translation, status.
func cEntry(_ outErr: CStringOut?, _ body: () throws -> Void) -> Int32 {
    withAutoreleasePool {
        outErr?.pointee = nil
        do {
            try body()
            return BridgeStatus.ok.rawValue
        } catch let e as BridgeError {
            setError(outErr, e.message)
            return e.status.rawValue
        } catch {
            setError(outErr, "internal error: \(describeErrorChain(error))")
            return BridgeStatus.internalError.rawValue
        }
    }
}

func requireOut<T>(_ p: UnsafeMutablePointer<T>?, _ name: String) throws -> UnsafeMutablePointer<T> {
    guard let p = p else { throw BridgeError.invalid("\(name) is NULL") }
    return p
}

func string(_ p: UnsafePointer<CChar>?, _ name: String) throws -> String {
    guard let p = p else { throw BridgeError.invalid("\(name) is NULL") }
    guard let s = String(validatingUTF8: p) else { throw BridgeError.invalid("\(name) is not valid UTF-8") }
    return s
}

func computeUnits(_ raw: Int32) throws -> ComputeUnits {
    guard let u = ComputeUnits(rawValue: raw) else {
        throw BridgeError.invalid("unknown compute_units \(raw) (0 all, 1 cpuOnly, 2 cpuAndGPU, 3 cpuAndNeuralEngine)")
    }
    return u
}

func handleID(_ p: UnsafeMutableRawPointer?) -> UInt { UInt(bitPattern: p) }

/// Output string handed to the caller; OOM if it cannot be allocated.
func deliver(_ s: String, to out: CStringOut) throws {
    guard let c = ownedCString(s) else { throw BridgeError(.outOfMemory, "could not allocate the result string") }
    out.pointee = c
}

// MARK: Inputs

let maxInputs: Int32 = 4096

/// Most bytes the inputs of one call may copy in total (their row-major
/// size): `COREML_BRIDGE_MAX_INPUT_BYTES` (1 MiB ... 1 TiB, read once),
/// default 2 GiB. A descriptor can describe far more than it backs (zero
/// strides); this cap, checked before any allocation, keeps such a call
/// from allocating and copying without bound.
let maxInputBytes: Int = {
    if let s = ProcessInfo.processInfo.environment["COREML_BRIDGE_MAX_INPUT_BYTES"], let v = Int(s),
       (1 << 20)...(1 << 40) ~= v {
        return v
    }
    return 2 << 30
}()

/// A caller's tensor descriptor, every field checked, nothing copied yet.
/// Valid only during the C call that received it.
struct InputView {
    let name: String
    let dtype: DType
    let shape: [Int]
    let strides: [Int]
    let data: UnsafeRawPointer
    let byteLen: Int
    /// Row-major size of the copy.
    let byteCount: Int

    var signature: InputSignature { InputSignature(name: name, dtype: dtype, shape: shape) }
}

/// Reads the caller's tensor descriptors, validating every field with
/// checked arithmetic. Copies nothing: the caller checks them against the
/// model and the byte cap first (`copyInputs`).
func readInputViews(_ inputs: UnsafePointer<CoremlTensor>?, _ count: Int32) throws -> [InputView] {
    guard let inputs = inputs else { throw BridgeError.invalid("inputs is NULL") }
    guard count >= 1, count <= maxInputs else {
        throw BridgeError.invalid("n_inputs must be in 1...\(maxInputs) (got \(count))")
    }
    var result: [InputView] = []
    var names = Set<String>()
    for i in 0..<Int(count) {
        let t = inputs[i]
        let what = "input #\(i)"
        let name = try string(t.name, "\(what) name")
        let label = "\(what) '\(name)'"
        guard names.insert(name).inserted else { throw BridgeError.invalid("\(label): duplicate name") }
        result.append(try readTensorView(t, name: name, label: label))
    }
    return result
}

/// Checks one tensor descriptor (everything but its name) without copying.
func readTensorView(_ t: CoremlTensor, name: String, label: String) throws -> InputView {
    do {
        guard let dtype = DType(rawValue: t.dtype), dtype != .i64 else {
            throw BridgeError.invalid("\(label): unknown or unsupported input dtype code \(t.dtype) (1 f32, 2 f16, 3 f64, 4 i32, 5 i8)")
        }
        let (shape, strides) = try readShape(t.rank, t.shape, t.strides, label)
        guard let data = t.data else { throw BridgeError.invalid("\(label): data is NULL") }
        guard t.byte_len <= UInt64(Int.max) else { throw BridgeError.invalid("\(label): byte_len too large") }
        let byteLen = Int(t.byte_len)
        let count = try Strided.elementCount(shape)
        guard let bytes = Strided.checkedMul(count, dtype.size) else {
            throw BridgeError(.outOfMemory, "\(label): shape \(shape) is too large")
        }
        if t.strides == nil {
            guard byteLen == bytes else {
                throw BridgeError.invalid("\(label): byte_len is \(byteLen) but shape \(shape) of \(dtype.name) needs exactly \(bytes) bytes")
            }
        } else {
            let span = try Strided.span(shape: shape, strides: strides)
            guard let need = Strided.checkedMul(span, dtype.size), byteLen >= need else {
                throw BridgeError.invalid("\(label): byte_len is \(byteLen) but shape \(shape) with strides \(strides) spans \(span) elements of \(dtype.size) bytes")
            }
        }
        return InputView(name: name, dtype: dtype, shape: shape, strides: strides,
                         data: data, byteLen: byteLen, byteCount: bytes)
    }
}

/// Reads `rank` dimensions (each >= 1) and strides (each >= 0, NULL:
/// row-major) from C arrays.
func readShape(_ rankRaw: Int32, _ shapePtr: UnsafePointer<Int64>?, _ stridesPtr: UnsafePointer<Int64>?,
               _ label: String) throws -> ([Int], [Int]) {
    guard rankRaw >= 1, rankRaw <= Int32(COREML_MAX_RANK) else {
        throw BridgeError.invalid("\(label): rank must be in 1...\(COREML_MAX_RANK) (got \(rankRaw))")
    }
    let rank = Int(rankRaw)
    guard let shapePtr = shapePtr else { throw BridgeError.invalid("\(label): shape is NULL") }
    var shape: [Int] = []
    for k in 0..<rank {
        let d = shapePtr[k]
        guard d >= 1, d <= Int64(Int.max) else {
            throw BridgeError.invalid("\(label): dimension \(k) is \(d); every dimension must be >= 1")
        }
        shape.append(Int(d))
    }
    var strides = Strided.rowMajorStrides(shape)
    if let stridesPtr = stridesPtr {
        strides = []
        for k in 0..<rank {
            let s = stridesPtr[k]
            guard s >= 0, s <= Int64(Int.max) else {
                throw BridgeError.invalid("\(label): stride \(k) is \(s); strides must be >= 0 (in elements)")
            }
            strides.append(Int(s))
        }
    }
    return (shape, strides)
}

/// Refuses inputs whose copies would exceed `maxInputBytes` together.
func checkInputBytes(_ views: [InputView]) throws {
    var total = 0
    for v in views {
        guard let t = Strided.checkedAdd(total, v.byteCount), t <= maxInputBytes else {
            throw BridgeError(.outOfMemory, "the inputs need more than \(maxInputBytes) bytes of copies (input '\(v.name)': \(v.dtype.name) \(v.shape) = \(v.byteCount) bytes; COREML_BRIDGE_MAX_INPUT_BYTES raises the cap)")
        }
        total = t
    }
}

/// Copies checked views into Swift-owned, row-major storage, stopping with
/// `.timeout` once `deadline` has passed (checked at a coarse grain inside
/// the copy).
func copyInputs(_ views: [InputView], deadline: CallDeadline) throws -> [HostTensor] {
    var result: [HostTensor] = []
    for v in views {
        if deadline.expired {
            throw BridgeError(.timeout, "copying the inputs did not finish within \(deadline.timeoutMs) ms")
        }
        let buffer = try TensorBuffer(byteCount: v.byteCount)
        do {
            try Strided.copy(shape: v.shape, elementSize: v.dtype.size,
                             src: v.data, srcStrides: v.strides, srcByteCount: v.byteLen,
                             dst: buffer.pointer, dstStrides: Strided.rowMajorStrides(v.shape),
                             dstByteCount: v.byteCount, shouldStop: { deadline.expired })
        } catch let e as BridgeError where e.status == .timeout {
            throw BridgeError(.timeout, "copying input '\(v.name)' (\(v.byteCount) bytes) did not finish within \(deadline.timeoutMs) ms; nothing ran")
        }
        result.append(try HostTensor(name: v.name, dtype: v.dtype, shape: v.shape, buffer: buffer))
    }
    return result
}

let maxBatch: Int32 = 4096

/// Reads and validates every member of a batch (descriptors, schema, one
/// byte cap over all of them), then copies them all under the deadline:
/// a bad member is refused before any copy, naming its index.
func readAndCopyBatch(_ batch: UnsafePointer<CoremlBatchMember>?, _ count: Int32,
                      schema: ModelSchema, deadline: CallDeadline) throws -> [[HostTensor]] {
    guard let batch = batch else { throw BridgeError.invalid("batch is NULL") }
    guard count >= 1, count <= maxBatch else {
        throw BridgeError.invalid("n_batch must be in 1...\(maxBatch) (got \(count))")
    }
    var members: [[InputView]] = []
    for i in 0..<Int(count) {
        do {
            let views = try readInputViews(batch[i].inputs, batch[i].n_inputs)
            try schema.validate(views.map { $0.signature })
            members.append(views)
        } catch let e as BridgeError {
            throw BridgeError(e.status, "batch member #\(i): \(e.message)")
        }
    }
    try checkInputBytes(members.flatMap { $0 })
    return try members.map { try copyInputs($0, deadline: deadline) }
}

/// Reads, validates against `schema`, caps and copies the caller's inputs,
/// in that order: nothing is allocated for inputs the model would refuse.
func readAndCopyInputs(_ inputs: UnsafePointer<CoremlTensor>?, _ count: Int32,
                       schema: ModelSchema, deadline: CallDeadline) throws -> [HostTensor] {
    let views = try readInputViews(inputs, count)
    try schema.validate(views.map { $0.signature })
    try checkInputBytes(views)
    return try copyInputs(views, deadline: deadline)
}

// MARK: Outputs

/// Everything a CoremlOutputs points into; released by coreml_free_outputs.
final class OutputsStorage {
    let tensors: [HostTensor]
    let descriptors: UnsafeMutablePointer<CoremlOutputTensor>
    private var names: [UnsafeMutablePointer<CChar>] = []
    private var shapes: [UnsafeMutablePointer<Int64>] = []

    init(_ tensors: [HostTensor]) throws {
        self.tensors = tensors
        guard let d = malloc(max(tensors.count, 1) * MemoryLayout<CoremlOutputTensor>.stride) else {
            throw BridgeError(.outOfMemory, "could not allocate output descriptors")
        }
        descriptors = d.bindMemory(to: CoremlOutputTensor.self, capacity: max(tensors.count, 1))
        for (i, t) in tensors.enumerated() {
            guard let name = strdup(t.name),
                  let shapeRaw = malloc(max(t.shape.count, 1) * MemoryLayout<Int64>.stride) else {
                throw BridgeError(.outOfMemory, "could not allocate output '\(t.name)'")
            }
            names.append(name)
            let shape = shapeRaw.bindMemory(to: Int64.self, capacity: max(t.shape.count, 1))
            shapes.append(shape)
            for (k, dim) in t.shape.enumerated() { shape[k] = Int64(dim) }
            (descriptors + i).initialize(to: CoremlOutputTensor(
                name: UnsafePointer(name), dtype: t.dtype.rawValue, rank: Int32(t.shape.count),
                shape: UnsafePointer(shape), data: UnsafeRawPointer(t.buffer.pointer),
                byte_len: UInt64(t.byteCount)))
        }
    }

    deinit {
        names.forEach { free($0) }
        shapes.forEach { free($0) }
        free(descriptors)
    }
}

/// Live CoremlOutputs pointers: freeing an unknown (or already freed)
/// pointer is ignored instead of corrupting memory.
final class LiveSet: @unchecked Sendable {
    private let lock = NSLock()
    private var items = Set<UInt>()
    func insert(_ p: UInt) { lock.lock(); items.insert(p); lock.unlock() }
    func remove(_ p: UInt) -> Bool { lock.lock(); defer { lock.unlock() }; return items.remove(p) != nil }
    var count: Int { lock.lock(); defer { lock.unlock() }; return items.count }
}
let liveOutputs = LiveSet()

func makeOutputs(_ tensors: [HostTensor]) throws -> UnsafeMutablePointer<CoremlOutputs> {
    let storage = try OutputsStorage(tensors.sorted { $0.name < $1.name })
    guard let raw = malloc(MemoryLayout<CoremlOutputs>.stride) else {
        throw BridgeError(.outOfMemory, "could not allocate outputs")
    }
    let outputs = raw.bindMemory(to: CoremlOutputs.self, capacity: 1)
    outputs.initialize(to: CoremlOutputs(
        count: Int32(tensors.count),
        tensors: UnsafePointer(storage.descriptors),
        reserved: Unmanaged.passRetained(storage).toOpaque()))
    liveOutputs.insert(UInt(bitPattern: outputs))
    return outputs
}

// MARK: Entry points

@_cdecl("coreml_bridge_abi_version")
public func coreml_bridge_abi_version() -> Int32 {
    bridgeABIVersion
}

@_cdecl("coreml_compile_model")
public func coreml_compile_model(_ packagePath: UnsafePointer<CChar>?,
                                 _ destDir: UnsafePointer<CChar>?,
                                 _ timeoutMs: Int64,
                                 _ outCompiledPath: CStringOut?,
                                 _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outCompiledPath?.pointee = nil
        let out = try requireOut(outCompiledPath, "out_compiled_path")
        let path = try Bridge.compile(packagePath: try string(packagePath, "package_path"),
                                      destDir: try string(destDir, "dest_dir"),
                                      timeoutMs: timeoutMs)
        try deliver(path, to: out)
    }
}

@_cdecl("coreml_load_model")
public func coreml_load_model(_ compiledPath: UnsafePointer<CChar>?,
                              _ computeUnitsRaw: Int32,
                              _ timeoutMs: Int64,
                              _ outHandle: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                              _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outHandle?.pointee = nil
        let out = try requireOut(outHandle, "out_handle")
        let id = try Bridge.load(compiledPath: try string(compiledPath, "compiled_path"),
                                 computeUnits: try computeUnits(computeUnitsRaw),
                                 timeoutMs: timeoutMs)
        out.pointee = UnsafeMutableRawPointer(bitPattern: id)
    }
}

@_cdecl("coreml_load_model_function")
public func coreml_load_model_function(_ compiledPath: UnsafePointer<CChar>?,
                                       _ functionName: UnsafePointer<CChar>?,
                                       _ computeUnitsRaw: Int32,
                                       _ timeoutMs: Int64,
                                       _ outHandle: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                                       _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outHandle?.pointee = nil
        let out = try requireOut(outHandle, "out_handle")
        let function = try functionName.map { try string($0, "function_name") }
        let id = try Bridge.load(compiledPath: try string(compiledPath, "compiled_path"),
                                 computeUnits: try computeUnits(computeUnitsRaw),
                                 functionName: function, timeoutMs: timeoutMs)
        out.pointee = UnsafeMutableRawPointer(bitPattern: id)
    }
}

@_cdecl("coreml_model_schema")
public func coreml_model_schema(_ handle: UnsafeMutableRawPointer?,
                                _ outJSON: CStringOut?,
                                _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outJSON?.pointee = nil
        let out = try requireOut(outJSON, "out_json")
        try deliver(try Bridge.schemaJSON(handle: handleID(handle)), to: out)
    }
}

@_cdecl("coreml_predict")
public func coreml_predict(_ handle: UnsafeMutableRawPointer?,
                           _ inputs: UnsafePointer<CoremlTensor>?,
                           _ nInputs: Int32,
                           _ timeoutMs: Int64,
                           _ outOutputs: UnsafeMutablePointer<UnsafeMutablePointer<CoremlOutputs>?>?,
                           _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outOutputs?.pointee = nil
        let out = try requireOut(outOutputs, "out_outputs")
        // The deadline starts before anything is read, so the copy of the
        // inputs counts against it too.
        let deadline = try CallDeadline(timeoutMs: timeoutMs)
        let h = try Bridge.lookup(handleID(handle)) // a bad handle is reported before the inputs
        try h.checkNotPoisoned()
        let tensors = try readAndCopyInputs(inputs, nInputs, schema: h.schema, deadline: deadline)
        let results = try Bridge.predict(h, inputs: tensors, deadline: deadline)
        out.pointee = try makeOutputs(results)
    }
}

@_cdecl("coreml_predict_batch")
public func coreml_predict_batch(_ handle: UnsafeMutableRawPointer?,
                                 _ batch: UnsafePointer<CoremlBatchMember>?,
                                 _ nBatch: Int32,
                                 _ timeoutMs: Int64,
                                 _ outOutputs: UnsafeMutablePointer<UnsafeMutablePointer<CoremlOutputs>?>?,
                                 _ outErr: CStringOut?) -> Int32 {
    // The slots are cleared only once n_batch is known to be sane.
    let valid = outOutputs != nil && nBatch >= 1 && nBatch <= maxBatch
    if valid, let slots = outOutputs {
        for i in 0..<Int(nBatch) { slots[i] = nil }
    }
    return cEntry(outErr) {
        guard let slots = outOutputs else { throw BridgeError.invalid("out_outputs is NULL") }
        guard valid else { throw BridgeError.invalid("n_batch must be in 1...\(maxBatch) (got \(nBatch))") }
        let deadline = try CallDeadline(timeoutMs: timeoutMs)
        let h = try Bridge.lookup(handleID(handle))
        try h.checkNotPoisoned()
        let members = try readAndCopyBatch(batch, nBatch, schema: h.schema, deadline: deadline)
        let results = try Bridge.predictBatch(h, batch: members, deadline: deadline)
        var made: [UnsafeMutablePointer<CoremlOutputs>] = []
        do {
            for r in results { made.append(try makeOutputs(r)) }
        } catch {
            made.forEach { coreml_free_outputs($0) }
            throw error
        }
        for (i, o) in made.enumerated() { slots[i] = o }
    }
}

@_cdecl("coreml_make_state")
public func coreml_make_state(_ handle: UnsafeMutableRawPointer?,
                              _ timeoutMs: Int64,
                              _ outState: UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                              _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outState?.pointee = nil
        let out = try requireOut(outState, "out_state")
        let id = try Bridge.makeState(handle: handleID(handle), timeoutMs: timeoutMs)
        out.pointee = UnsafeMutableRawPointer(bitPattern: id)
    }
}

@_cdecl("coreml_predict_with_state")
public func coreml_predict_with_state(_ handle: UnsafeMutableRawPointer?,
                                      _ state: UnsafeMutableRawPointer?,
                                      _ inputs: UnsafePointer<CoremlTensor>?,
                                      _ nInputs: Int32,
                                      _ timeoutMs: Int64,
                                      _ outOutputs: UnsafeMutablePointer<UnsafeMutablePointer<CoremlOutputs>?>?,
                                      _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outOutputs?.pointee = nil
        let out = try requireOut(outOutputs, "out_outputs")
        let deadline = try CallDeadline(timeoutMs: timeoutMs)
        let id = handleID(handle)
        let h = try Bridge.lookup(id)
        let stateID = handleID(state)
        let s = try Bridge.lookupState(stateID)
        try h.checkNotPoisoned()
        try Bridge.takeState(s, stateID: stateID, for: id)
        defer { s.release() }
        let tensors = try readAndCopyInputs(inputs, nInputs, schema: h.schema, deadline: deadline)
        let results = try Bridge.predict(h, state: s, inputs: tensors, deadline: deadline)
        out.pointee = try makeOutputs(results)
    }
}

@_cdecl("coreml_free_state")
public func coreml_free_state(_ state: UnsafeMutableRawPointer?) {
    withAutoreleasePool { Bridge.free(state: handleID(state)) }
}

@_cdecl("coreml_compute_plan")
public func coreml_compute_plan(_ compiledPath: UnsafePointer<CChar>?,
                                _ computeUnitsRaw: Int32,
                                _ timeoutMs: Int64,
                                _ outJSON: CStringOut?,
                                _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outJSON?.pointee = nil
        let out = try requireOut(outJSON, "out_json")
        let json = try Bridge.computePlanJSON(compiledPath: try string(compiledPath, "compiled_path"),
                                              computeUnits: try computeUnits(computeUnitsRaw),
                                              timeoutMs: timeoutMs)
        try deliver(json, to: out)
    }
}

@_cdecl("coreml_runtime_info")
public func coreml_runtime_info(_ outJSON: CStringOut?, _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outJSON?.pointee = nil
        let out = try requireOut(outJSON, "out_json")
        try deliver(try Bridge.runtimeInfoJSON(), to: out)
    }
}

@_cdecl("coreml_free_model")
public func coreml_free_model(_ handle: UnsafeMutableRawPointer?) {
    withAutoreleasePool { Bridge.free(handle: handleID(handle)) }
}

@_cdecl("coreml_free_string")
public func coreml_free_string(_ s: UnsafeMutablePointer<CChar>?) {
    free(s)
}

@_cdecl("coreml_free_outputs")
public func coreml_free_outputs(_ outputs: UnsafeMutablePointer<CoremlOutputs>?) {
    guard let outputs = outputs, liveOutputs.remove(UInt(bitPattern: outputs)) else { return }
    withAutoreleasePool {
        if let reserved = outputs.pointee.reserved {
            Unmanaged<OutputsStorage>.fromOpaque(reserved).release()
        }
        free(outputs)
    }
}

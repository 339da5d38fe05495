import Foundation

/// Staging buffers of one model handle, reused across `coreml_predict_into`
/// calls, and the counters that show it.
///
/// A call leases one buffer per input copy and per output backing, keyed by
/// byte size (a shape and dtype reduce to it), and gives them back once it
/// has copied the outputs into the caller's memory. A call that times out
/// never gives its buffers back: its late prediction still writes into
/// them, and they are freed when that work ends (the handle is poisoned, so
/// no later call would have reused them). Steady-state calls with the same
/// shapes therefore allocate no tensor-sized buffer; concurrent callers of
/// one handle grow the pool to their number.
public final class BufferPool: @unchecked Sendable {
    private let lock = NSLock()
    private var idle: [Int: [TensorBuffer]] = [:]
    private var counters = BufferCounters()
    /// Most idle buffers kept per size; extra returns are freed.
    static let maxIdlePerSize = 8

    public init() {}

    /// An idle buffer of exactly `byteCount` bytes, or a new one (counted).
    /// Cost: a dictionary lookup under a lock; one malloc when none is idle.
    public func lease(byteCount: Int) throws -> TensorBuffer {
        lock.lock()
        if var list = idle[byteCount], let b = list.popLast() {
            idle[byteCount] = list
            lock.unlock()
            return b
        }
        lock.unlock()
        let b = try TensorBuffer(byteCount: byteCount)
        lock.lock()
        counters.bufferAllocations += 1
        counters.bufferBytesAllocated += byteCount
        lock.unlock()
        return b
    }

    /// Returns leased buffers for reuse (up to `maxIdlePerSize` per size).
    public func giveBack(_ buffers: [TensorBuffer]) {
        lock.lock(); defer { lock.unlock() }
        for b in buffers {
            var list = idle[b.byteCount] ?? []
            if list.count < Self.maxIdlePerSize {
                list.append(b)
                idle[b.byteCount] = list
            }
        }
    }

    /// Adds to the counters (one lock).
    func count(_ update: (inout BufferCounters) -> Void) {
        lock.lock(); update(&counters); lock.unlock()
    }

    /// A snapshot of the counters, with the idle buffers counted now.
    public var snapshot: BufferCounters {
        lock.lock(); defer { lock.unlock() }
        var c = counters
        c.pooledBuffers = idle.values.reduce(0) { $0 + $1.count }
        return c
    }
}

/// What `coreml_debug_counters` reports (see coreml_bridge.h).
public struct BufferCounters: Equatable, Sendable {
    /// Calls that ran a prediction.
    public var calls = 0
    /// Staging buffers the pool allocated, and their bytes.
    public var bufferAllocations = 0
    public var bufferBytesAllocated = 0
    /// Staging buffers idle in the pool (filled in by `snapshot`).
    public var pooledBuffers = 0
    /// Input copies into staging buffers; output copies into caller memory;
    /// the bytes of both.
    public var inputCopies = 0
    public var outputCopies = 0
    public var bytesCopied = 0
    /// Outputs the runtime wrote into their backing, or into its own array.
    public var outputsInBacking = 0
    public var outputsRuntimeOwned = 0

    var jsonObject: [String: Any] {
        ["calls": calls, "buffer_allocations": bufferAllocations,
         "buffer_bytes_allocated": bufferBytesAllocated, "pooled_buffers": pooledBuffers,
         "input_copies": inputCopies, "output_copies": outputCopies, "bytes_copied": bytesCopied,
         "outputs_in_backing": outputsInBacking, "outputs_runtime_owned": outputsRuntimeOwned]
    }
}

/// Where a runtime's `predictInto` may write one output: a leased staging
/// buffer, row-major, of the shape and dtype the caller asked for.
public struct OutputBacking: @unchecked Sendable {
    /// The output's name, dtype and shape, as the caller described it.
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// Row-major storage of exactly the output's bytes.
    public let buffer: TensorBuffer
}

/// One output as a runtime produced it: in its backing (`inBacking`) or in
/// the runtime's own (possibly strided) storage, which `access` lends to
/// the caller's copy for the duration of a closure (Core ML's arrays lend
/// their bytes only inside `withUnsafeBytes`).
public struct OutputSource: @unchecked Sendable {
    /// The output's name, dtype and shape as produced.
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    /// In elements.
    public let strides: [Int]
    /// Whether the runtime wrote it into the bridge's backing.
    public let inBacking: Bool
    /// Calls its argument with the output's storage (`strides` apply).
    public let access: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void

    /// Storage lent by `access` (e.g. Core ML's `withUnsafeBytes`).
    public init(name: String, dtype: DType, shape: [Int], strides: [Int], inBacking: Bool,
                access: @escaping ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.strides = strides
        self.inBacking = inBacking
        self.access = access
    }

    /// Storage held by a bridge buffer (kept alive by this source).
    public init(name: String, dtype: DType, shape: [Int], strides: [Int], buffer: TensorBuffer, inBacking: Bool) {
        self.init(name: name, dtype: dtype, shape: shape, strides: strides, inBacking: inBacking) { body in
            try withExtendedLifetime(buffer) {
                try body(UnsafeRawBufferPointer(start: buffer.pointer, count: buffer.byteCount))
            }
        }
    }

    /// A row-major tensor.
    public init(tensor t: HostTensor, inBacking: Bool = false) {
        self.init(name: t.name, dtype: t.dtype, shape: t.shape, strides: Strided.rowMajorStrides(t.shape),
                  buffer: t.buffer, inBacking: inBacking)
    }
}

extension LoadedModel {
    /// Runtimes without output backings: `predict`, every output in the
    /// runtime's own storage (the caller's copy is still the only one the
    /// bridge makes).
    public func predictInto(_ inputs: [HostTensor], backings: [OutputBacking]) throws -> [OutputSource] {
        try predict(inputs).map { OutputSource(tensor: $0) }
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A malloc'ed byte buffer owned by Swift. Allocation failure is reported
/// (as `outOfMemory`) instead of trapping like `UnsafeMutableRawPointer.allocate`.
public final class TensorBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int

    public init(byteCount: Int) throws {
        guard byteCount >= 0 else { throw BridgeError(.internalError, "negative buffer size \(byteCount)") }
        guard let p = malloc(max(byteCount, 1)) else {
            throw BridgeError(.outOfMemory, "could not allocate \(byteCount) bytes")
        }
        pointer = p
        self.byteCount = byteCount
    }

    deinit { free(pointer) }
}

/// A tensor in Swift-owned, row-major contiguous storage. Inputs are copied
/// into these before any work is queued; outputs are produced into these by
/// the worker and only handed to the caller after a successful wait.
public struct HostTensor: @unchecked Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let buffer: TensorBuffer

    public var elementCount: Int { shape.reduce(1, *) }
    public var byteCount: Int { buffer.byteCount }

    public init(name: String, dtype: DType, shape: [Int], buffer: TensorBuffer) throws {
        let n = try Strided.elementCount(shape)
        guard let bytes = Strided.checkedMul(n, dtype.size), bytes == buffer.byteCount else {
            throw BridgeError(.internalError, "tensor '\(name)': buffer of \(buffer.byteCount) bytes does not hold \(shape) x \(dtype.name)")
        }
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.buffer = buffer
    }

    /// Gathers a strided array (e.g. a padded Core ML output) into a new
    /// row-major tensor.
    public static func gather(name: String, dtype: DType, shape: [Int], strides: [Int],
                              from source: UnsafeRawBufferPointer) throws -> HostTensor {
        let n = try Strided.elementCount(shape)
        guard let bytes = Strided.checkedMul(n, dtype.size) else {
            throw BridgeError(.outOfMemory, "tensor '\(name)' of shape \(shape) is too large")
        }
        let buffer = try TensorBuffer(byteCount: bytes)
        guard let base = source.baseAddress ?? (n == 0 ? UnsafeRawPointer(buffer.pointer) : nil) else {
            throw BridgeError(.internalError, "tensor '\(name)': no storage")
        }
        try Strided.copy(shape: shape, elementSize: dtype.size,
                         src: base, srcStrides: strides, srcByteCount: source.count,
                         dst: buffer.pointer, dstStrides: Strided.rowMajorStrides(shape), dstByteCount: bytes)
        return try HostTensor(name: name, dtype: dtype, shape: shape, buffer: buffer)
    }

    /// Typed copy of the contents (tests, fake runtime).
    public func values<T>(as: T.Type) -> [T] {
        let count = byteCount / MemoryLayout<T>.stride
        let typed = buffer.pointer.bindMemory(to: T.self, capacity: count)
        return Array(UnsafeBufferPointer(start: typed, count: count))
    }
}

/// Stride-aware copies between n-dimensional arrays. Strides are in elements
/// and must be >= 0; every index the copy touches is bounds-checked against
/// the byte counts before a single byte moves.
public enum Strided {
    /// Elements copied between two `shouldStop` checks of `copy` (1 Mi:
    /// about a millisecond of element-wise copying).
    public static let stopCheckElements = 1 << 20

    public static func checkedMul(_ a: Int, _ b: Int) -> Int? {
        let (r, o) = a.multipliedReportingOverflow(by: b)
        return o ? nil : r
    }

    public static func checkedAdd(_ a: Int, _ b: Int) -> Int? {
        let (r, o) = a.addingReportingOverflow(b)
        return o ? nil : r
    }

    public static func elementCount(_ shape: [Int]) throws -> Int {
        var n = 1
        for d in shape {
            guard d >= 0 else { throw BridgeError.invalid("negative dimension \(d) in shape \(shape)") }
            guard let m = checkedMul(n, d) else { throw BridgeError(.outOfMemory, "shape \(shape) overflows") }
            n = m
        }
        return n
    }

    public static func rowMajorStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var acc = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[i] = acc
            acc = checkedMul(acc, max(shape[i], 1)) ?? Int.max
        }
        return strides
    }

    /// Number of elements an array with this shape and these strides spans:
    /// 1 + sum((shape[i] - 1) * strides[i]); 0 for an empty array.
    public static func span(shape: [Int], strides: [Int]) throws -> Int {
        guard shape.count == strides.count else {
            throw BridgeError.invalid("rank mismatch: shape \(shape) vs strides \(strides)")
        }
        if shape.contains(0) { return 0 }
        var last = 0
        for (d, s) in zip(shape, strides) {
            guard d > 0 else { throw BridgeError.invalid("negative dimension in shape \(shape)") }
            guard s >= 0 else { throw BridgeError.invalid("negative stride in \(strides)") }
            guard let t = checkedMul(d - 1, s), let u = checkedAdd(last, t) else {
                throw BridgeError(.outOfMemory, "strides \(strides) overflow for shape \(shape)")
            }
            last = u
        }
        guard let n = checkedAdd(last, 1) else { throw BridgeError(.outOfMemory, "span overflows") }
        return n
    }

    /// Copies every element of an array of `shape` from `src` (laid out with
    /// `srcStrides`) to `dst` (laid out with `dstStrides`).
    ///
    /// `shouldStop` is asked about every `stopCheckElements` elements (and
    /// between contiguous chunks of that many): when it answers true the
    /// copy ends with `BridgeError(.timeout)`, leaving `dst` partly written.
    /// That is what keeps a caller's copy inside its deadline.
    public static func copy(shape: [Int], elementSize: Int,
                            src: UnsafeRawPointer, srcStrides: [Int], srcByteCount: Int,
                            dst: UnsafeMutableRawPointer, dstStrides: [Int], dstByteCount: Int,
                            shouldStop: (() -> Bool)? = nil) throws {
        guard elementSize > 0 else { throw BridgeError(.internalError, "element size \(elementSize)") }
        let srcSpan = try span(shape: shape, strides: srcStrides)
        let dstSpan = try span(shape: shape, strides: dstStrides)
        guard let srcNeed = checkedMul(srcSpan, elementSize), srcNeed <= srcByteCount else {
            throw BridgeError.invalid("source of \(srcByteCount) bytes is too small for shape \(shape) with strides \(srcStrides) (\(srcSpan) elements of \(elementSize) bytes)")
        }
        guard let dstNeed = checkedMul(dstSpan, elementSize), dstNeed <= dstByteCount else {
            throw BridgeError(.internalError, "destination of \(dstByteCount) bytes is too small for shape \(shape) with strides \(dstStrides)")
        }
        if srcSpan == 0 { return }
        let rank = shape.count
        if rank == 0 {
            dst.copyMemory(from: src, byteCount: elementSize)
            return
        }
        let rowMajor = rowMajorStrides(shape)
        let count = try elementCount(shape)
        // Coarse-grained stop checks: one per `stopCheckElements` elements.
        var sinceCheck = 0
        func tick(_ n: Int) throws {
            guard let stop = shouldStop else { return }
            sinceCheck += n
            if sinceCheck >= stopCheckElements {
                sinceCheck = 0
                if stop() { throw BridgeError(.timeout, "copy of shape \(shape) stopped at its deadline") }
            }
        }
        if srcStrides == rowMajor && dstStrides == rowMajor {
            // In chunks, so a stop request is seen between them.
            let chunk = shouldStop == nil ? count : stopCheckElements
            var done = 0
            while done < count {
                let n = min(chunk, count - done)
                (dst + done * elementSize).copyMemory(from: src + done * elementSize, byteCount: n * elementSize)
                done += n
                try tick(n)
            }
            return
        }
        // Innermost dimension: one memcpy per row when both sides are
        // contiguous along it, element by element otherwise.
        let inner = shape[rank - 1]
        let sIn = srcStrides[rank - 1], dIn = dstStrides[rank - 1]
        let contiguousRow = sIn == 1 && dIn == 1
        var index = [Int](repeating: 0, count: max(rank - 1, 0))
        var srcOff = 0, dstOff = 0 // in elements, for the current outer index
        while true {
            if contiguousRow {
                // In chunks, so a stop request is seen inside a long row too.
                var done = 0
                while done < inner {
                    let n = shouldStop == nil ? inner : min(stopCheckElements, inner - done)
                    (dst + (dstOff + done) * elementSize).copyMemory(from: src + (srcOff + done) * elementSize,
                                                                     byteCount: n * elementSize)
                    done += n
                    try tick(n)
                }
            } else {
                // Offsets are formed only for elements that exist: stepping
                // past the last one could overflow for a huge stride that
                // `span` accepted because the dimension has size 1.
                var s = srcOff, d = dstOff
                for i in 0..<inner {
                    if i > 0 {
                        s += sIn
                        d += dIn
                    }
                    (dst + d * elementSize).copyMemory(from: src + s * elementSize, byteCount: elementSize)
                    try tick(1)
                }
            }
            // Odometer over the outer dimensions. Every offset it forms is an
            // element's (bounded by the checked span); a wrap subtracts
            // (shape - 1) * stride, which `span` computed without overflow.
            var k = rank - 2
            while k >= 0 {
                if index[k] + 1 < shape[k] {
                    index[k] += 1
                    srcOff += srcStrides[k]
                    dstOff += dstStrides[k]
                    break
                }
                srcOff -= srcStrides[k] * index[k]
                dstOff -= dstStrides[k] * index[k]
                index[k] = 0
                k -= 1
            }
            if k < 0 { return }
        }
    }
}

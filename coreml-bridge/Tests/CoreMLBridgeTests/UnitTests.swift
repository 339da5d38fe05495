import XCTest
import Foundation
@testable import CoreMLBridge

final class HandleTableTests: XCTestCase {
    final class Obj {}

    func testInsertLookupRemoveAndStale() {
        let table = HandleTable<Obj>()
        let a = Obj(), b = Obj()
        let ia = table.insert(a), ib = table.insert(b)
        XCTAssertNotEqual(ia, ib)
        XCTAssertNotEqual(ia, 0)
        XCTAssertTrue(table.lookup(ia) === a)
        XCTAssertTrue(table.lookup(ib) === b)
        XCTAssertEqual(table.count, 2)
        XCTAssertTrue(table.remove(ia) === a)
        XCTAssertNil(table.lookup(ia), "a freed handle is stale")
        XCTAssertNil(table.remove(ia), "double free is a no-op")
        XCTAssertNil(table.lookup(0))
        XCTAssertNil(table.lookup(12345), "garbage is not a handle")
        XCTAssertNil(table.lookup(ib &+ 1), "handles are exact ids")
        XCTAssertEqual(table.count, 1)
    }

    func testIdsAreNeverReused() {
        let table = HandleTable<Obj>()
        var seen = Set<UInt>()
        for _ in 0..<1000 {
            let id = table.insert(Obj())
            XCTAssertTrue(seen.insert(id).inserted)
            table.remove(id)
        }
        XCTAssertEqual(table.count, 0)
    }

    func testConcurrentInsertAndRemove() {
        let table = HandleTable<Obj>()
        let lock = NSLock()
        var ids: [UInt] = []
        DispatchQueue.concurrentPerform(iterations: 400) { i in
            let id = table.insert(Obj())
            if i % 2 == 0 { table.remove(id) } else { lock.lock(); ids.append(id); lock.unlock() }
        }
        XCTAssertEqual(table.count, 200)
        XCTAssertEqual(Set(ids).count, 200)
        ids.forEach { XCTAssertNotNil(table.lookup($0)) }
    }

    func testRemovedObjectStaysAliveWhileReferenced() {
        let table = HandleTable<Obj>()
        var strong: Obj? = Obj()
        weak var weakRef = strong
        let id = table.insert(strong!)
        let held = table.lookup(id) // like a queued work item
        strong = nil
        table.remove(id)
        XCTAssertNotNil(weakRef, "work that retained the object keeps it alive")
        _ = held
    }
}

final class StridedCopyTests: XCTestCase {
    func bytes<T>(_ a: [T]) -> [UInt8] { a.withUnsafeBytes { Array($0) } }

    /// Lays `values` (row-major for `shape`) out with `strides`, filling the
    /// gaps with `filler`.
    func layout<T>(_ values: [T], shape: [Int], strides: [Int], filler: T) throws -> [T] {
        let span = try Strided.span(shape: shape, strides: strides)
        var out = [T](repeating: filler, count: span)
        var index = [Int](repeating: 0, count: shape.count)
        for v in values {
            var off = 0
            for (i, s) in zip(index, strides) { off += i * s }
            out[off] = v
            var k = shape.count - 1
            while k >= 0 { index[k] += 1; if index[k] < shape[k] { break }; index[k] = 0; k -= 1 }
        }
        return out
    }

    func gatherRoundTrip<T: Equatable>(_ values: [T], dtype: DType, shape: [Int], strides: [Int], filler: T,
                                       file: StaticString = #filePath, line: UInt = #line) throws {
        let padded = try layout(values, shape: shape, strides: strides, filler: filler)
        let t = try padded.withUnsafeBytes {
            try HostTensor.gather(name: "t", dtype: dtype, shape: shape, strides: strides, from: $0)
        }
        XCTAssertEqual(t.shape, shape, file: file, line: line)
        XCTAssertEqual(t.byteCount, values.count * dtype.size, file: file, line: line)
        XCTAssertEqual(t.values(as: T.self), values, file: file, line: line)
    }

    func testPaddedRowsEveryDType() throws {
        // 2x3x5 array whose innermost rows are padded to 8 elements (ANE-like).
        let shape = [2, 3, 5]
        let strides = [24, 8, 1]
        let n = 30
        try gatherRoundTrip((0..<n).map { Float($0) * 0.5 - 3 }, dtype: .f32, shape: shape, strides: strides, filler: Float.nan)
        try gatherRoundTrip((0..<n).map { Double($0) * 1.25 }, dtype: .f64, shape: shape, strides: strides, filler: -1)
        try gatherRoundTrip((0..<n).map { Int32($0) - 7 }, dtype: .i32, shape: shape, strides: strides, filler: Int32.min)
        try gatherRoundTrip((0..<n).map { Int8($0) - 15 }, dtype: .i8, shape: shape, strides: strides, filler: Int8.min)
        try gatherRoundTrip((0..<n).map { Half.fromFloat(Float($0) / 4) }, dtype: .f16, shape: shape, strides: strides, filler: 0x7e00)
    }

    func testPaddedOuterDimensionAndTransposedStrides() throws {
        // Padding between matrices, and a column-major (transposed) layout.
        try gatherRoundTrip((0..<12).map { Float($0) }, dtype: .f32, shape: [2, 2, 3], strides: [10, 3, 1], filler: -1)
        try gatherRoundTrip((0..<6).map { Int32($0) }, dtype: .i32, shape: [2, 3], strides: [1, 2], filler: -1)
    }

    func testContiguousAndRankOne() throws {
        try gatherRoundTrip([1, 2, 3, 4] as [Float], dtype: .f32, shape: [4], strides: [1], filler: 0)
        try gatherRoundTrip([7, 8] as [Double], dtype: .f64, shape: [2], strides: [5], filler: 0)
        try gatherRoundTrip([9] as [Int8], dtype: .i8, shape: [1, 1, 1], strides: [0, 0, 0], filler: 0)
    }

    func testScatterIntoPaddedDestination() throws {
        let src: [Int32] = [1, 2, 3, 4, 5, 6]
        var dst = [Int32](repeating: -1, count: 8)
        try src.withUnsafeBytes { s in
            try dst.withUnsafeMutableBytes { d in
                try Strided.copy(shape: [2, 3], elementSize: 4, src: s.baseAddress!, srcStrides: [3, 1], srcByteCount: s.count,
                                 dst: d.baseAddress!, dstStrides: [4, 1], dstByteCount: d.count)
            }
        }
        XCTAssertEqual(dst, [1, 2, 3, -1, 4, 5, 6, -1])
    }

    func testBroadcastSourceWithZeroStride() throws {
        let src: [Float] = [1, 2, 3]
        let t = try src.withUnsafeBytes {
            try HostTensor.gather(name: "b", dtype: .f32, shape: [2, 3], strides: [0, 1], from: $0)
        }
        XCTAssertEqual(t.values(as: Float.self), [1, 2, 3, 1, 2, 3])
    }

    func testCopyStopsWhenAskedAtACoarseGrain() throws {
        let n = 3 * Strided.stopCheckElements + 5
        let dst = try TensorBuffer(byteCount: n * 4)
        var src: Float = 7
        var asked = 0
        XCTAssertThrowsError(try Strided.copy(shape: [n], elementSize: 4, src: &src, srcStrides: [0], srcByteCount: 4,
                                              dst: dst.pointer, dstStrides: [1], dstByteCount: n * 4,
                                              shouldStop: { asked += 1; return asked == 2 })) {
            XCTAssertEqual(($0 as? BridgeError)?.status, .timeout)
        }
        XCTAssertEqual(asked, 2, "asked once per \(Strided.stopCheckElements) elements")
        asked = 0
        let contiguous = try TensorBuffer(byteCount: n * 4)
        try Strided.copy(shape: [n], elementSize: 4, src: UnsafeRawPointer(dst.pointer), srcStrides: [1], srcByteCount: n * 4,
                         dst: contiguous.pointer, dstStrides: [1], dstByteCount: n * 4,
                         shouldStop: { asked += 1; return false })
        XCTAssertEqual(asked, 3, "contiguous copies are chunked too")
    }

    func testOutOfBoundsIsRejectedBeforeCopying() {
        let src: [Float] = [1, 2, 3, 4, 5]
        XCTAssertThrowsError(try src.withUnsafeBytes {
            try HostTensor.gather(name: "o", dtype: .f32, shape: [2, 3], strides: [3, 1], from: $0)
        }) { XCTAssertEqual(($0 as? BridgeError)?.status, .invalidArgument) }
        XCTAssertThrowsError(try Strided.span(shape: [2, 2], strides: [1, -1]))
        XCTAssertThrowsError(try Strided.span(shape: [2], strides: [1, 1]))
        XCTAssertThrowsError(try Strided.span(shape: [Int.max, 3], strides: [Int.max, 1])) {
            XCTAssertEqual(($0 as? BridgeError)?.status, .outOfMemory)
        }
        XCTAssertThrowsError(try Strided.elementCount([Int.max, 2]))
    }

    func testHugeStridesOnSizeOneDimsCopyWithoutOverflow() throws {
        // A size-1 dimension may carry any stride (it is never stepped): the
        // span is small, and the copy must not form the next, overflowing offset.
        let src: [Float] = [1, 2, 3]
        for (shape, strides, want) in [
            ([3, 1], [1, Int.max], [1, 2, 3] as [Float]),
            ([1, 3], [Int.max, 1], [1, 2, 3]),
            ([3, 1, 1], [1, Int.max, Int.max / 2], [1, 2, 3]),
            ([1, 3, 1], [Int.max, 1, Int.max], [1, 2, 3]),
        ] {
            let t = try src.withUnsafeBytes {
                try HostTensor.gather(name: "h", dtype: .f32, shape: shape, strides: strides, from: $0)
            }
            XCTAssertEqual(t.values(as: Float.self), want, "shape \(shape) strides \(strides)")
        }
    }

    func testSpanAndRowMajor() throws {
        XCTAssertEqual(Strided.rowMajorStrides([2, 3, 4]), [12, 4, 1])
        XCTAssertEqual(try Strided.span(shape: [2, 3, 4], strides: [12, 4, 1]), 24)
        XCTAssertEqual(try Strided.span(shape: [2, 3], strides: [8, 1]), 11)
        XCTAssertEqual(try Strided.span(shape: [3, 0], strides: [1, 1]), 0)
    }

    func testHalfConversions() {
        let cases: [(Float, UInt16)] = [(0, 0x0000), (-0.0, 0x8000), (1, 0x3c00), (-2, 0xc000), (0.5, 0x3800),
                                        (65504, 0x7bff), (Float.infinity, 0x7c00), (6.1035156e-05, 0x0400),
                                        (5.9604645e-08, 0x0001)]
        for (f, h) in cases {
            XCTAssertEqual(Half.fromFloat(f), h, "\(f)")
            XCTAssertEqual(Half.toFloat(h), f, "\(h)")
        }
        XCTAssertEqual(Half.fromFloat(1e6), 0x7c00, "overflow to infinity")
        XCTAssertEqual(Half.fromFloat(1.0009766), 0x3c01)
        XCTAssertEqual(Half.fromFloat(1.00048828125), 0x3c00, "tie rounds to even")
        XCTAssertTrue(Half.toFloat(Half.fromFloat(.nan)).isNaN)
        for bits in stride(from: UInt16(0), to: 0x7c00, by: 7) {
            XCTAssertEqual(Half.fromFloat(Half.toFloat(bits)), bits, "round trip \(bits)")
        }
    }
}

final class ErrorTranslationTests: XCTestCase {
    func chain() -> NSError {
        let root = NSError(domain: NSPOSIXErrorDomain, code: 2, userInfo: [NSLocalizedDescriptionKey: "No such file or directory"])
        let mid = NSError(domain: NSCocoaErrorDomain, code: 260, userInfo: [
            NSLocalizedDescriptionKey: "The file couldn't be opened.", NSUnderlyingErrorKey: root])
        return NSError(domain: "com.apple.CoreML", code: 0, userInfo: [
            NSLocalizedDescriptionKey: "Error reading the model.",
            NSLocalizedFailureReasonErrorKey: "missing weights",
            NSUnderlyingErrorKey: mid])
    }

    func testChainCarriesDomainCodeAndUnderlyingErrors() {
        let text = describeErrorChain(chain())
        XCTAssertEqual(text, "[com.apple.CoreML code=0] Error reading the model. (missing weights); caused by: "
                       + "[NSCocoaErrorDomain code=260] The file couldn't be opened.; caused by: "
                       + "[NSPOSIXErrorDomain code=2] No such file or directory")
    }

    func testStatusMapping() {
        let load = bridgeError(chain(), status: .load, context: "load failed")
        XCTAssertEqual(load.status, .load)
        XCTAssertTrue(load.message.hasPrefix("load failed: [com.apple.CoreML code=0]"))
        let feature = NSError(domain: "com.apple.CoreML", code: 1, userInfo: [NSLocalizedDescriptionKey: "bad input type"])
        XCTAssertEqual(bridgeError(feature, status: .predict, context: "p").status, .schemaMismatch)
        XCTAssertEqual(bridgeError(feature, status: .load, context: "l").status, .load)
        let passthrough = bridgeError(BridgeError(.timeout, "late"), status: .predict, context: "x")
        XCTAssertEqual(passthrough.status, .timeout)
        XCTAssertEqual(passthrough.message, "late")
        let shim = NSError(domain: coreMLShimErrorDomain, code: 1, userInfo: nil)
        XCTAssertEqual(bridgeError(shim, status: .compile, context: "c").status, .unavailable)
    }

    func testSwiftErrorsAndDepthLimit() {
        struct Custom: Error {}
        XCTAssertTrue(describeErrorChain(Custom()).contains("code="))
        var e = NSError(domain: "d0", code: 0, userInfo: nil)
        for i in 1...20 { e = NSError(domain: "d\(i)", code: i, userInfo: [NSUnderlyingErrorKey: e]) }
        let text = describeErrorChain(e, maxDepth: 4)
        XCTAssertEqual(text.components(separatedBy: "caused by").count, 5)
        XCTAssertTrue(text.hasSuffix("(further underlying errors omitted)"))
    }
}

final class DeadlineTests: XCTestCase {
    func testCompletesBeforeDeadline() throws {
        let q = DispatchQueue(label: "t")
        let v = try runWithDeadline(on: q, timeoutMs: 2000, what: "w") { 42 }
        XCTAssertEqual(v, 42)
    }

    func testTimesOutAndDisposesLateResult() {
        let q = DispatchQueue(label: "t")
        let disposed = expectation(description: "late value disposed")
        let start = Date()
        XCTAssertThrowsError(try runWithDeadline(on: q, timeoutMs: 50, what: "slow",
                                                 dispose: { (v: Int) in XCTAssertEqual(v, 7); disposed.fulfill() }) {
            usleep(1_000_000); return 7
        }) { XCTAssertEqual(($0 as? BridgeError)?.status, .timeout) }
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(elapsed, 0.045)
        XCTAssertLessThan(elapsed, 0.6, "returns at the deadline, not when the work ends")
        wait(for: [disposed], timeout: 5)
    }

    func testQueuedWorkSkippedAfterAbandon() {
        let q = DispatchQueue(label: "t")
        q.async { usleep(200_000) }
        var ran = false
        XCTAssertThrowsError(try runWithDeadline(on: q, timeoutMs: 20, what: "queued") { ran = true })
        q.sync {}
        XCTAssertFalse(ran, "work whose caller gave up before it started is skipped")
    }

    func testErrorsPassThrough() {
        let q = DispatchQueue(label: "t")
        XCTAssertThrowsError(try runWithDeadline(on: q, timeoutMs: 1000, what: "e") { () -> Int in
            throw BridgeError(.predict, "boom")
        }) { XCTAssertEqual(($0 as? BridgeError)?.message, "boom") }
    }

    func testCompletionRacingTheDeadlineIsNotLost() {
        // Many tight races: the result is either delivered or disposed, never both, never lost.
        final class Flag: @unchecked Sendable {
            let done = DispatchSemaphore(value: 0)
            var delivered = false
        }
        for _ in 0..<200 {
            let pending = PendingResult<Int>()
            let flag = Flag()
            DispatchQueue.global().async {
                flag.delivered = pending.complete(.success(1))
                flag.done.signal()
            }
            let r = pending.wait(timeoutMs: 1)
            flag.done.wait()
            // Delivered exactly when the caller got it.
            XCTAssertEqual(r != nil, flag.delivered)
        }
    }

    func testTimeoutValidation() {
        XCTAssertThrowsError(try validateTimeout(0))
        XCTAssertThrowsError(try validateTimeout(-1))
        XCTAssertEqual(try validateTimeout(5), 5)
        XCTAssertEqual(try validateTimeout(Int64.max), maxTimeoutMs)
    }
}

final class SchemaTests: XCTestCase {
    func f(_ name: String, _ c: ShapeConstraint, shape: [Int] = [], optional: Bool = false) -> FeatureSchema {
        FeatureSchema(name: name, optional: optional, dtype: .f32, shape: shape, constraint: c)
    }

    func tensor(_ name: String, _ shape: [Int]) throws -> HostTensor {
        try HostTensor(name: name, dtype: .f32, shape: shape, buffer: TensorBuffer(byteCount: shape.reduce(1, *) * 4))
    }

    func testValidation() throws {
        let s = ModelSchema(inputs: [
            f("fixed", .unspecified, shape: [1, 3]),
            f("enum", .enumerated([[1, 2], [1, 4]])),
            f("range", .range([DimRange(lower: 1, upper: 1), DimRange(lower: 2, upper: nil)])),
            f("opt", .none, optional: true),
        ], outputs: [])
        let good = [try tensor("fixed", [1, 3]), try tensor("enum", [1, 4]), try tensor("range", [1, 100])]
        XCTAssertNoThrow(try s.validate(good))
        func expectMismatch(_ ts: [HostTensor], line: UInt = #line) {
            XCTAssertThrowsError(try s.validate(ts), line: line) {
                XCTAssertEqual(($0 as? BridgeError)?.status, .schemaMismatch, line: line)
            }
        }
        expectMismatch([try tensor("fixed", [3, 1]), good[1], good[2]])
        expectMismatch([good[0], try tensor("enum", [1, 3]), good[2]])
        expectMismatch([good[0], good[1], try tensor("range", [1, 1])])
        expectMismatch([good[0], good[1], try tensor("range", [2, 5])])
        expectMismatch([good[0], good[1], try tensor("range", [1, 5, 1])])
        expectMismatch([good[0], good[1]])
        expectMismatch(good + [try tensor("nope", [1])])
    }

    func testJSON() throws {
        var meta = ModelMetadata()
        meta.author = "me"
        meta.userDefined = ["k": "v"]
        let s = ModelSchema(inputs: [f("b", .range([DimRange(lower: 1, upper: nil)]), shape: [1]), f("a", .enumerated([[1], [2]]))],
                            outputs: [FeatureSchema(name: "label", featureType: "string", dtype: nil, shape: [], constraint: .none)],
                            metadata: meta)
        let obj = try JSONSerialization.jsonObject(with: Data(s.json().utf8)) as! [String: Any]
        let inputs = obj["inputs"] as! [[String: Any]]
        XCTAssertEqual(inputs.map { $0["name"] as! String }, ["a", "b"], "sorted by name")
        XCTAssertEqual(inputs[0]["dtype"] as? String, "f32")
        XCTAssertEqual(inputs[0]["dtype_code"] as? Int, 1)
        let c0 = inputs[0]["shape_constraint"] as! [String: Any]
        XCTAssertEqual(c0["type"] as? String, "enumerated")
        XCTAssertEqual(c0["enumerated_shapes"] as? [[Int]], [[1], [2]])
        let r = (inputs[1]["shape_constraint"] as! [String: Any])["ranges"] as! [[String: Any]]
        XCTAssertEqual(r[0]["lower"] as? Int, 1)
        XCTAssertTrue(r[0]["upper"] is NSNull)
        let out = (obj["outputs"] as! [[String: Any]])[0]
        XCTAssertTrue(out["dtype"] is NSNull)
        XCTAssertEqual(out["feature_type"] as? String, "string")
        let m = obj["metadata"] as! [String: Any]
        XCTAssertEqual(m["author"] as? String, "me")
        XCTAssertEqual(m["user_defined"] as? [String: String], ["k": "v"])
    }
}

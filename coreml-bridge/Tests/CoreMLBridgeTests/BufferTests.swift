import XCTest
import Foundation
import CoreMLBridgeC
@testable import CoreMLBridge

/// coreml_predict_into and coreml_debug_counters through the C ABI, and the
/// buffer pool itself.
final class BufferTests: BridgeTestCase {
    /// A caller-owned f32 output buffer of `shape` laid out with `strides`,
    /// every element set to `fill`.
    final class COut {
        let name: UnsafeMutablePointer<CChar>
        let shape: UnsafeMutablePointer<Int64>
        let strides: UnsafeMutablePointer<Int64>
        let data: UnsafeMutablePointer<Float>
        let count: Int
        let buffer: CoremlOutputBuffer

        init(_ name: String, shape: [Int], strides: [Int], count: Int, fill: Float, byteLen: Int? = nil) {
            self.name = strdup(name)!
            self.shape = .allocate(capacity: shape.count)
            self.strides = .allocate(capacity: strides.count)
            for (i, d) in shape.enumerated() { self.shape[i] = Int64(d) }
            for (i, s) in strides.enumerated() { self.strides[i] = Int64(s) }
            self.count = count
            data = .allocate(capacity: count)
            data.initialize(repeating: fill, count: count)
            buffer = CoremlOutputBuffer(name: UnsafePointer(self.name), dtype: DType.f32.rawValue,
                                        rank: Int32(shape.count), shape: UnsafePointer(self.shape),
                                        strides: UnsafePointer(self.strides), data: UnsafeMutableRawPointer(data),
                                        byte_len: UInt64(byteLen ?? count * 4))
        }

        var values: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

        deinit {
            free(name)
            shape.deallocate()
            strides.deallocate()
            data.deallocate()
        }
    }

    func predictInto(_ h: UnsafeMutableRawPointer?, _ inputs: [CInput], _ outputs: [COut],
                     timeoutMs: Int64 = 5000) -> (Int32, String?) {
        var err: UnsafeMutablePointer<CChar>?
        let ins = inputs.map { $0.tensor }
        let outs = outputs.map { $0.buffer }
        let st = ins.withUnsafeBufferPointer { i in
            outs.withUnsafeBufferPointer { o in
                coreml_predict_into(h, i.baseAddress, Int32(i.count), o.baseAddress, Int32(o.count), timeoutMs, &err)
            }
        }
        return (st, C.takeString(err))
    }

    func counters(_ h: UnsafeMutableRawPointer?) -> [String: Int] {
        var out: UnsafeMutablePointer<CChar>?
        var err: UnsafeMutablePointer<CChar>?
        let st = coreml_debug_counters(h, &out, &err)
        XCTAssertEqual(st, OK, C.takeString(err) ?? "")
        let text = C.takeString(out) ?? "{}"
        return (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Int]) ?? [:]
    }

    let adder = """
    {"behavior": "add_one",
     "inputs": [{"name": "x", "dtype": "f32", "shape": [2, 3]}],
     "outputs": [{"name": "y", "dtype": "f32", "shape": [2, 3]}]}
    """

    func x(_ base: Float) -> CInput {
        CInput("x", dtype: .f32, shape: [2, 3], bytes: bytes((0..<6).map { base + Float($0) }))
    }

    func testWritesAStridedCallerBufferOnceAndReusesItsStagingBuffers() {
        let h = loaded("adder_into", adder)
        defer { C.free(h) }
        // Rows padded to 4 elements: the padding must stay as it was.
        let y = COut("y", shape: [2, 3], strides: [4, 1], count: 8, fill: -1)
        var (st, err) = predictInto(h, [x(10)], [y])
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(y.values, [11, 12, 13, -1, 14, 15, 16, -1])
        let first = counters(h)
        (st, err) = predictInto(h, [x(20)], [y])
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(y.values, [21, 22, 23, -1, 24, 25, 26, -1])
        let second = counters(h)
        XCTAssertEqual(first["buffer_allocations"], 2, "one input staging buffer, one output backing")
        XCTAssertEqual(second["buffer_allocations"], 2, "the second call reuses them")
        XCTAssertEqual(second["calls"], 2)
        XCTAssertEqual(second["output_copies"], 2)
        XCTAssertEqual(second["input_copies"], 2)
        XCTAssertEqual(second["outputs_in_backing"], 2)
        XCTAssertEqual(second["bytes_copied"], 4 * 24)
        XCTAssertEqual(second["pooled_buffers"], 2)
    }

    func testATimedOutCallNeverWritesTheCallersBuffer() {
        let h = loaded("sleep_300ms")
        defer { C.free(h) }
        let y = COut("y", shape: [1], strides: [1], count: 1, fill: -5)
        let (st, err) = predictInto(h, [CInput("x", dtype: .f32, shape: [1], bytes: bytes([7] as [Float]))], [y], timeoutMs: 50)
        XCTAssertEqual(st, code(COREML_ERR_TIMEOUT), err ?? "")
        usleep(700_000) // the late prediction ends in the meantime
        XCTAssertEqual(y.values, [-5])
        XCTAssertEqual(counters(h)["calls"], 0)
    }

    func testBadOutputBuffersAreRefusedBeforeAnyWrite() {
        let h = loaded("adder_bad", adder)
        defer { C.free(h) }
        var err: UnsafeMutablePointer<CChar>?
        let input = x(0)
        var st = [input.tensor].withUnsafeBufferPointer { coreml_predict_into(h, $0.baseAddress, 1, nil, 1, 1000, &err) }
        XCTAssertEqual(st, code(COREML_ERR_INVALID_ARGUMENT))
        XCTAssertTrue(C.takeString(err)?.contains("outputs is NULL") ?? false)

        let stray = COut("z", shape: [2, 3], strides: [3, 1], count: 6, fill: -1)
        var message: String?
        (st, message) = predictInto(h, [input], [stray])
        XCTAssertEqual(st, code(COREML_ERR_SCHEMA_MISMATCH))
        XCTAssertTrue(message?.hasPrefix("output buffer") ?? false, message ?? "")

        let wrongShape = COut("y", shape: [3, 2], strides: [2, 1], count: 6, fill: -1)
        (st, message) = predictInto(h, [input], [wrongShape])
        XCTAssertEqual(st, code(COREML_ERR_SCHEMA_MISMATCH), message ?? "")
        XCTAssertTrue(message?.hasPrefix("output buffer 'y' is f32 [3, 2]") ?? false, message ?? "")
        XCTAssertEqual(wrongShape.values, [Float](repeating: -1, count: 6), "nothing written")

        let short = COut("y", shape: [2, 3], strides: [3, 1], count: 6, fill: -1, byteLen: 20)
        (st, message) = predictInto(h, [input], [short])
        XCTAssertEqual(st, code(COREML_ERR_INVALID_ARGUMENT))
        XCTAssertTrue(message?.contains("byte_len is 20") ?? false, message ?? "")

        st = coreml_debug_counters(nil, nil, &err)
        XCTAssertEqual(st, code(COREML_ERR_INVALID_ARGUMENT))
        _ = C.takeString(err)
    }

    func testPoolLeasesGiveBackAndCounts() throws {
        let pool = BufferPool()
        let a = try pool.lease(byteCount: 64)
        let b = try pool.lease(byteCount: 64)
        XCTAssertNotEqual(a.pointer, b.pointer)
        pool.giveBack([a, b])
        let c = try pool.lease(byteCount: 64)
        XCTAssertTrue(c.pointer == a.pointer || c.pointer == b.pointer, "an idle buffer is reused")
        _ = try pool.lease(byteCount: 32)
        let s = pool.snapshot
        XCTAssertEqual(s.bufferAllocations, 3)
        XCTAssertEqual(s.bufferBytesAllocated, 160)
        XCTAssertEqual(s.pooledBuffers, 1)
    }
}

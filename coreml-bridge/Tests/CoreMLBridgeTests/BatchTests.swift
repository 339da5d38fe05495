import XCTest
import Foundation
import CoreMLBridgeC
@testable import CoreMLBridge

/// ABI v2 batches, through the C declarations, against the test runtime.
final class BatchTests: BridgeTestCase {
    func x(_ v: [Float]) -> CInput { CInput("x", dtype: .f32, shape: [v.count], bytes: bytes(v)) }

    func testEveryMemberRunsInOrder() {
        let h = loaded("add_one")
        defer { C.free(h) }
        let (st, outs, err) = cPredictBatch(h, [[x([1])], [x([2, 3])], [x([10, 20, 30])]])
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(outs.map { $0.first?.values(Float.self) ?? [] }, [[2], [3, 4], [11, 21, 31]])
        XCTAssertEqual(liveOutputs.count, 0)
    }

    func testABadMemberIsRefusedBeforeAnythingRuns() {
        let h = loaded("slow_fixed", #"{"sleep_ms": 300, "inputs": [{"name": "x", "dtype": "f32", "shape": [2]}]}"#)
        defer { C.free(h) }
        let start = Date()
        var (st, outs, err) = cPredictBatch(h, [[x([1, 2])], [x([1, 2])], [x([1, 2, 3])]])
        XCTAssertEqual(st, code(COREML_ERR_SCHEMA_MISMATCH), err ?? "")
        XCTAssertTrue(err?.hasPrefix("batch member #2:") ?? false, err ?? "")
        XCTAssertTrue(outs.isEmpty)
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.2, "refused before any member ran")
        (st, _, err) = cPredictBatch(h, [[x([1, 2])], []])
        XCTAssertEqual(st, code(COREML_ERR_INVALID_ARGUMENT), err ?? "")
        XCTAssertTrue(err?.hasPrefix("batch member #1:") ?? false, err ?? "")
        (st, _, err) = cPredictBatch(h, [])
        XCTAssertEqual(st, code(COREML_ERR_INVALID_ARGUMENT), err ?? "")
        XCTAssertEqual(CoreMLBridgeC.coreml_predict_batch(h, nil, 1, 1000, nil, nil), code(COREML_ERR_INVALID_ARGUMENT))
    }

    func testOneDeadlineForTheWholeBatchPoisonsOnTimeout() {
        let h = loaded("sleep_150ms")
        defer { C.free(h) }
        let start = Date()
        let (st, outs, err) = cPredictBatch(h, [[x([1])], [x([2])], [x([3])]], timeoutMs: 300)
        let took = Date().timeIntervalSince(start)
        XCTAssertEqual(st, code(COREML_ERR_TIMEOUT), "3 x 150 ms do not fit in 300 ms: \(err ?? "")")
        XCTAssertTrue(outs.isEmpty, "no member's outputs on failure")
        XCTAssertLessThan(took, 0.45)
        XCTAssertTrue(err?.contains("poisoned") ?? false, err ?? "")
        XCTAssertEqual(cPredictBatch(h, [[x([1])]]).0, code(COREML_ERR_POISONED))
    }
}

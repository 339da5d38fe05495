import XCTest
import Foundation
import CoreMLBridgeC
@testable import CoreMLBridge

/// ABI v2 model states, through the C declarations, against the test
/// runtime's accumulator (state s += x, output y = s).
final class StateTests: BridgeTestCase {
    func x(_ v: [Float]) -> CInput { CInput("x", dtype: .f32, shape: [v.count], bytes: bytes(v)) }

    func testTheStateAccumulatesAcrossCallsAndStatesAreIndependent() {
        let h = loaded("accumulate")
        defer { C.free(h) }
        let (schemaStatus, schema, _) = C.schema(h)
        XCTAssertEqual(schemaStatus, OK)
        let states = schema?["states"] as? [[String: Any]]
        XCTAssertEqual(states?.count, 1)
        XCTAssertEqual(states?.first?["name"] as? String, "s")
        XCTAssertEqual(states?.first?["feature_type"] as? String, "state")
        XCTAssertEqual(states?.first?["dtype"] as? String, "f32")
        XCTAssertEqual(states?.first?["shape"] as? [Int], [3])

        let (st1, a, e1) = cMakeState(h)
        let (st2, b, e2) = cMakeState(h)
        XCTAssertEqual(st1, OK, e1 ?? "")
        XCTAssertEqual(st2, OK, e2 ?? "")
        defer { CoreMLBridgeC.coreml_free_state(a); CoreMLBridgeC.coreml_free_state(b) }
        XCTAssertNotEqual(a, b)
        var (ps, outs, err) = cPredictWithState(h, a, [x([1, 2, 3])])
        XCTAssertEqual(ps, OK, err ?? "")
        XCTAssertEqual(outs.first?.values(Float.self), [1, 2, 3])
        (ps, outs, err) = cPredictWithState(h, a, [x([10, 20, 30])])
        XCTAssertEqual(ps, OK, err ?? "")
        XCTAssertEqual(outs.first?.values(Float.self), [11, 22, 33], "the state outlives the call")
        (ps, outs, err) = cPredictWithState(h, b, [x([5, 5, 5])])
        XCTAssertEqual(outs.first?.values(Float.self), [5, 5, 5], "another state starts from zero")
        // Without a state the stateful model fails as Core ML's would.
        let (plain, _, perr) = cPredict(h, [x([1, 1, 1])])
        XCTAssertEqual(plain, code(COREML_ERR_PREDICT), perr ?? "")
        // A bad input is refused before the state changes.
        (ps, _, err) = cPredictWithState(h, a, [x([1, 1])])
        XCTAssertEqual(ps, code(COREML_ERR_SCHEMA_MISMATCH), err ?? "")
        (ps, outs, _) = cPredictWithState(h, a, [x([0, 0, 0])])
        XCTAssertEqual(outs.first?.values(Float.self), [11, 22, 33], "a refused call changed nothing")
    }

    func testAStateBelongsToItsModelAndBadHandlesAreRefused() {
        let h1 = loaded("accumulate")
        let h2 = loaded("accumulate")
        defer { C.free(h1); C.free(h2) }
        let (_, s1, _) = cMakeState(h1)
        defer { CoreMLBridgeC.coreml_free_state(s1) }
        var (st, _, err) = cPredictWithState(h2, s1, [x([1, 2, 3])])
        XCTAssertEqual(st, code(COREML_ERR_STATE_MISMATCH), err ?? "")
        XCTAssertTrue(err?.contains("belongs to model handle") ?? false, err ?? "")
        (st, _, err) = cPredictWithState(h1, nil, [x([1, 2, 3])])
        XCTAssertEqual(st, code(COREML_ERR_INVALID_HANDLE), err ?? "")
        (st, _, err) = cPredictWithState(h1, h1, [x([1, 2, 3])])
        XCTAssertEqual(st, code(COREML_ERR_INVALID_HANDLE), "a model handle is not a state: \(err ?? "")")
        (st, _, err) = cPredictWithState(s1, s1, [x([1, 2, 3])])
        XCTAssertEqual(st, code(COREML_ERR_INVALID_HANDLE), "a state is not a model handle: \(err ?? "")")
        var out: UnsafeMutableRawPointer?
        XCTAssertEqual(CoreMLBridgeC.coreml_make_state(h1, 1000, nil, nil), code(COREML_ERR_INVALID_ARGUMENT))
        XCTAssertEqual(CoreMLBridgeC.coreml_make_state(nil, 1000, &out, nil), code(COREML_ERR_INVALID_HANDLE))
        XCTAssertEqual(CoreMLBridgeC.coreml_make_state(h1, 0, &out, nil), code(COREML_ERR_INVALID_ARGUMENT))
        XCTAssertNil(out)
        // Freed states are unknown; frees of NULL/unknown/repeated ones are ignored.
        let (_, s2, _) = cMakeState(h1)
        CoreMLBridgeC.coreml_free_state(s2)
        CoreMLBridgeC.coreml_free_state(s2)
        CoreMLBridgeC.coreml_free_state(nil)
        CoreMLBridgeC.coreml_free_state(UnsafeMutableRawPointer(bitPattern: 0xdead_beef))
        (st, _, _) = cPredictWithState(h1, s2, [x([1, 2, 3])])
        XCTAssertEqual(st, code(COREML_ERR_INVALID_HANDLE))
        // A stateless model makes an empty state and predicts as without one.
        let plain = loaded("add_one")
        defer { C.free(plain) }
        let (ps, empty, perr) = cMakeState(plain)
        XCTAssertEqual(ps, OK, perr ?? "")
        defer { CoreMLBridgeC.coreml_free_state(empty) }
        let (ys, outs, yerr) = cPredictWithState(plain, empty, [x([1])])
        XCTAssertEqual(ys, OK, yerr ?? "")
        XCTAssertEqual(outs.first?.values(Float.self), [2])
    }

    func testAStateInUseIsRefusedAndATimeoutPoisonsStateAndHandle() {
        let h = loaded("accumulate_slow", #"{"behavior": "accumulate", "sleep_ms": 400}"#)
        defer { C.free(h) }
        let (_, s, _) = cMakeState(h)
        defer { CoreMLBridgeC.coreml_free_state(s) }
        let hs = SendableHandle(h), ss = SendableHandle(s)
        let first = Box<Int32>(-1)
        let done = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            let input = CInput("x", dtype: .f32, shape: [3], bytes: bytes([Float(1), 1, 1]))
            first.value = cPredictWithState(hs.raw, ss.raw, [input]).0
            done.signal()
        }
        usleep(100_000)
        let start = Date()
        let (busy, _, berr) = cPredictWithState(h, s, [x([1, 1, 1])])
        XCTAssertEqual(busy, code(COREML_ERR_STATE_IN_USE), berr ?? "")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.1, "refused at once, not after waiting")
        done.wait()
        XCTAssertEqual(first.value, OK)

        let (t, _, terr) = cPredictWithState(h, s, [x([1, 1, 1])], timeoutMs: 50)
        XCTAssertEqual(t, code(COREML_ERR_TIMEOUT), terr ?? "")
        XCTAssertTrue(terr?.contains("state are now poisoned") ?? false, terr ?? "")
        usleep(500_000) // the late prediction finishes
        let (again, _, aerr) = cPredictWithState(h, s, [x([1, 1, 1])])
        XCTAssertEqual(again, code(COREML_ERR_POISONED), aerr ?? "")
        XCTAssertEqual(cMakeState(h).0, code(COREML_ERR_POISONED), "the handle is poisoned too")
        // A fresh handle cannot adopt the poisoned state.
        let h2 = loaded("accumulate")
        defer { C.free(h2) }
        XCTAssertEqual(cPredictWithState(h2, s, [x([1, 1, 1])]).0, code(COREML_ERR_STATE_MISMATCH))
    }
}

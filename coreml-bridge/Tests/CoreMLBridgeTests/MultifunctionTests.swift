import XCTest
import Foundation
import CoreMLBridgeC
@testable import CoreMLBridge

/// ABI v2 multifunction loads, through the C declarations, against the test
/// runtime (a fake with two functions: "plus" adds one, "same" is identity).
final class MultifunctionTests: BridgeTestCase {
    let spec = #"{"functions": {"plus": "add_one", "same": "identity"}, "default_function": "same"}"#

    func loadFunction(_ path: String, _ name: String?) -> (Int32, UnsafeMutableRawPointer?, String?) {
        var h: UnsafeMutableRawPointer?
        var err: UnsafeMutablePointer<CChar>?
        let st = CoreMLBridgeC.coreml_load_model_function(path, name, 0, 5000, &h, &err)
        return (st, h, C.takeString(err))
    }

    func testEachFunctionRunsItsOwnProgramAndTheSchemaListsThem() {
        let path = compiled("two", spec)
        let x = CInput("x", dtype: .f32, shape: [2], bytes: bytes([Float(1), 2]))
        let (ps, plus, perr) = loadFunction(path, "plus")
        XCTAssertEqual(ps, OK, perr ?? "")
        defer { C.free(plus) }
        XCTAssertEqual(cPredict(plus, [x]).1.first?.values(Float.self), [2, 3])
        let (schemaStatus, schema, _) = C.schema(plus)
        XCTAssertEqual(schemaStatus, OK)
        XCTAssertEqual(schema?["functions"] as? [String], ["plus", "same"])
        XCTAssertEqual(schema?["function"] as? String, "plus")
        let (ds, dflt, derr) = loadFunction(path, nil)
        XCTAssertEqual(ds, OK, derr ?? "")
        defer { C.free(dflt) }
        XCTAssertEqual(cPredict(dflt, [x]).1.first?.values(Float.self), [1, 2], "the default function")
        XCTAssertTrue(C.schema(dflt).1?["function"] is NSNull)
        // A state of one function's handle is refused by another's.
        let (_, s, _) = cMakeState(plus)
        defer { CoreMLBridgeC.coreml_free_state(s) }
        XCTAssertEqual(cPredictWithState(dflt, s, [x]).0, code(COREML_ERR_STATE_MISMATCH))
    }

    func testUnknownAndEmptyNamesAreRefused() {
        let path = compiled("two", spec)
        var (st, h, err) = loadFunction(path, "nope")
        XCTAssertEqual(st, code(COREML_ERR_LOAD), err ?? "")
        XCTAssertTrue(err?.contains("no function 'nope'") ?? false, err ?? "")
        XCTAssertTrue(err?.contains("plus") ?? false, "the message lists the functions: \(err ?? "")")
        XCTAssertNil(h)
        (st, h, err) = loadFunction(path, "")
        XCTAssertEqual(st, code(COREML_ERR_INVALID_ARGUMENT), err ?? "")
        (st, h, err) = loadFunction(compiled("single"), "plus")
        XCTAssertEqual(st, code(COREML_ERR_LOAD), "a single-function model has no named functions: \(err ?? "")")
        let (one, single, _) = loadFunction(compiled("single2"), nil)
        XCTAssertEqual(one, OK)
        XCTAssertEqual(C.schema(single).1?["functions"] as? [String], [])
        C.free(single)
    }
}

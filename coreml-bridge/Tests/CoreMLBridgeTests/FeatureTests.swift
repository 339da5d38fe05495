import XCTest
import Foundation
import CoreMLBridgeC
@testable import CoreMLBridge

/// A feature input in C memory, owned by the test.
final class CFeature {
    let name: UnsafeMutablePointer<CChar>
    let string: UnsafeMutablePointer<CChar>?
    let tensorInput: CInput?
    var feature: CoremlFeature

    init(_ name: String, int64: Int64? = nil, double: Double? = nil, string: String? = nil, tensor: CInput? = nil) {
        self.name = strdup(name)!
        self.string = string.map { strdup($0)! }
        tensorInput = tensor
        let empty = CoremlTensor(name: nil, dtype: 0, rank: 0, shape: nil, strides: nil, data: nil, byte_len: 0)
        var kind = COREML_FEATURE_TENSOR
        if int64 != nil { kind = COREML_FEATURE_INT64 }
        if double != nil { kind = COREML_FEATURE_DOUBLE }
        if string != nil { kind = COREML_FEATURE_STRING }
        feature = CoremlFeature(name: UnsafePointer(self.name), kind: Int32(kind.rawValue), tensor: tensor?.tensor ?? empty,
                                int64_value: int64 ?? 0, double_value: double ?? 0,
                                string_value: self.string.map { UnsafePointer($0) })
    }

    deinit {
        free(name)
        free(string)
    }
}

enum OutValue: Equatable {
    case tensor([Float]), int64(Int64), double(Double), string(String), stringDict([String: Double])
}

/// coreml_predict_features through C; copies the outputs and frees them.
func cPredictFeatures(_ h: UnsafeMutableRawPointer?, _ inputs: [CFeature], timeoutMs: Int64 = 5000) -> (Int32, [String: OutValue], String?) {
    var outs: UnsafeMutablePointer<CoremlFeatureOutputs>?
    var err: UnsafeMutablePointer<CChar>?
    let descriptors = inputs.map { $0.feature }
    let st = descriptors.withUnsafeBufferPointer {
        CoreMLBridgeC.coreml_predict_features(h, $0.baseAddress, Int32(inputs.count), timeoutMs, &outs, &err)
    }
    var result: [String: OutValue] = [:]
    if let o = outs {
        for i in 0..<Int(o.pointee.count) {
            let f = o.pointee.features[i]
            let name = String(cString: f.name)
            switch f.kind {
            case Int32(COREML_FEATURE_TENSOR.rawValue):
                let n = Int(f.tensor.byte_len) / 4
                result[name] = .tensor(Array(UnsafeBufferPointer(start: f.tensor.data.assumingMemoryBound(to: Float.self), count: n)))
            case Int32(COREML_FEATURE_INT64.rawValue): result[name] = .int64(f.int64_value)
            case Int32(COREML_FEATURE_DOUBLE.rawValue): result[name] = .double(f.double_value)
            case Int32(COREML_FEATURE_STRING.rawValue): result[name] = .string(String(cString: f.string_value))
            case Int32(COREML_FEATURE_DICTIONARY.rawValue):
                var d: [String: Double] = [:]
                for k in 0..<Int(f.dict_count) { d[String(cString: f.dict_string_keys[k]!)] = f.dict_values[k] }
                result[name] = .stringDict(d)
            default: break
            }
        }
        CoreMLBridgeC.coreml_free_feature_outputs(o)
    }
    withExtendedLifetime(inputs) {}
    return (st, result, C.takeString(err))
}

/// ABI v2 feature values of every kind, through the C declarations.
final class FeatureTests: BridgeTestCase {
    func testAClassifierReturnsItsLabelAndProbabilities() {
        let h = loaded("classify")
        defer { C.free(h) }
        let schema = C.schema(h).1
        let c = schema?["classifier"] as? [String: Any]
        XCTAssertEqual(c?["label_output"] as? String, "classLabel")
        XCTAssertEqual(c?["probabilities_output"] as? String, "classLabel_probs")
        XCTAssertEqual(c?["labels"] as? [String], ["cat", "dog", "fish"])
        let x = CFeature("x", tensor: CInput("x", dtype: .f32, shape: [3], bytes: bytes([Float(0.25), 0.5, 0.25])))
        let (st, outs, err) = cPredictFeatures(h, [x])
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(outs["classLabel"], .string("dog"))
        XCTAssertEqual(outs["classLabel_probs"], .stringDict(["cat": 0.25, "dog": 0.5, "fish": 0.25]))
        XCTAssertEqual(liveFeatureOutputs.count, 0)
    }

    func testScalarsAndStringsGoInAndComeOut() {
        let spec = #"{"behavior": "add_one", "inputs": [{"name": "n", "feature_type": "int64"}, {"name": "d", "feature_type": "double"}, {"name": "s", "feature_type": "string"}, {"name": "x", "dtype": "f32", "shape": [2]}], "outputs": [{"name": "n_out", "feature_type": "int64"}, {"name": "d_out", "feature_type": "double"}, {"name": "s_out", "feature_type": "string"}, {"name": "x_out", "dtype": "f32", "shape": [2]}]}"#
        let h = loaded("kinds", spec)
        defer { C.free(h) }
        let inputs = [CFeature("n", int64: 41), CFeature("d", double: 1.5), CFeature("s", string: "héllo"),
                      CFeature("x", tensor: CInput("x", dtype: .f32, shape: [2], bytes: bytes([Float(1), 2])))]
        let (st, outs, err) = cPredictFeatures(h, inputs)
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(outs["n_out"], .int64(42))
        XCTAssertEqual(outs["d_out"], .double(2.5))
        XCTAssertEqual(outs["s_out"], .string("héllo"))
        XCTAssertEqual(outs["x_out"], .tensor([2, 3]))
        // A value of the wrong kind is refused naming both kinds.
        let wrong = [CFeature("n", string: "41"), inputs[1], inputs[2], inputs[3]]
        let (ws, _, werr) = cPredictFeatures(h, wrong)
        XCTAssertEqual(ws, code(COREML_ERR_SCHEMA_MISMATCH), werr ?? "")
        XCTAssertTrue(werr?.contains("is a int64 feature; got a string value") ?? false, werr ?? "")
        // Unknown kinds, NULL strings, missing inputs.
        let bad = CFeature("n", int64: 1)
        bad.feature.kind = 99
        XCTAssertEqual(cPredictFeatures(h, [bad]).0, code(COREML_ERR_INVALID_ARGUMENT))
        let nullString = CFeature("s", string: "x")
        nullString.feature.string_value = nil
        XCTAssertEqual(cPredictFeatures(h, [nullString]).0, code(COREML_ERR_INVALID_ARGUMENT))
        XCTAssertEqual(cPredictFeatures(h, [inputs[0]]).0, code(COREML_ERR_SCHEMA_MISMATCH), "missing inputs")
        XCTAssertEqual(CoreMLBridgeC.coreml_predict_features(h, nil, 1, 1000, nil, nil), code(COREML_ERR_INVALID_ARGUMENT))
    }
}

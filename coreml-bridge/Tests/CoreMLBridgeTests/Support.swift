import XCTest
import Foundation
import CoreMLBridgeC
@testable import CoreMLBridge

/// Calls into the bridge through the C declarations of coreml_bridge.h
/// (module CoreMLBridgeC), exactly as a C or Rust caller does.
enum C {
    static func takeString(_ p: UnsafeMutablePointer<CChar>?) -> String? {
        guard let p = p else { return nil }
        defer { CoreMLBridgeC.coreml_free_string(p) }
        return String(cString: p)
    }

    static func compile(_ package: String, _ dest: String, timeoutMs: Int64 = 5000) -> (Int32, String?, String?) {
        var out: UnsafeMutablePointer<CChar>?
        var err: UnsafeMutablePointer<CChar>?
        let st = CoreMLBridgeC.coreml_compile_model(package, dest, timeoutMs, &out, &err)
        return (st, takeString(out), takeString(err))
    }

    static func load(_ path: String, units: Int32 = 0, timeoutMs: Int64 = 5000) -> (Int32, UnsafeMutableRawPointer?, String?) {
        var h: UnsafeMutableRawPointer?
        var err: UnsafeMutablePointer<CChar>?
        let st = CoreMLBridgeC.coreml_load_model(path, units, timeoutMs, &h, &err)
        return (st, h, takeString(err))
    }

    static func schema(_ h: UnsafeMutableRawPointer?) -> (Int32, [String: Any]?, String?) {
        var out: UnsafeMutablePointer<CChar>?
        var err: UnsafeMutablePointer<CChar>?
        let st = CoreMLBridgeC.coreml_model_schema(h, &out, &err)
        let obj = takeString(out).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        return (st, obj, takeString(err))
    }

    static func computePlan(_ path: String) -> (Int32, [String: Any]?, String?) {
        var out: UnsafeMutablePointer<CChar>?
        var err: UnsafeMutablePointer<CChar>?
        let st = CoreMLBridgeC.coreml_compute_plan(path, 0, 5000, &out, &err)
        let obj = takeString(out).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        return (st, obj, takeString(err))
    }

    static func runtimeInfo() -> (Int32, [String: Any]?, String?) {
        var out: UnsafeMutablePointer<CChar>?
        var err: UnsafeMutablePointer<CChar>?
        let st = CoreMLBridgeC.coreml_runtime_info(&out, &err)
        let obj = takeString(out).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        return (st, obj, takeString(err))
    }

    static func free(_ h: UnsafeMutableRawPointer?) { CoreMLBridgeC.coreml_free_model(h) }
}

/// An input tensor owned by the test, in C memory.
final class CInput {
    let name: UnsafeMutablePointer<CChar>
    let shape: UnsafeMutablePointer<Int64>
    let strides: UnsafeMutablePointer<Int64>?
    let data: UnsafeMutableRawPointer
    let tensor: CoremlTensor

    init(_ name: String, dtype: DType, shape: [Int], strides: [Int]? = nil, bytes: [UInt8]) {
        self.name = strdup(name)!
        self.shape = .allocate(capacity: shape.count)
        for (i, d) in shape.enumerated() { self.shape[i] = Int64(d) }
        if let s = strides {
            let p = UnsafeMutablePointer<Int64>.allocate(capacity: s.count)
            for (i, v) in s.enumerated() { p[i] = Int64(v) }
            self.strides = p
        } else {
            self.strides = nil
        }
        let buf = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        bytes.withUnsafeBytes { buf.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
        data = buf
        let stridesPtr = self.strides.map { UnsafePointer($0) }
        tensor = CoremlTensor(name: UnsafePointer(self.name), dtype: dtype.rawValue, rank: Int32(shape.count),
                              shape: UnsafePointer(self.shape), strides: stridesPtr,
                              data: UnsafeRawPointer(buf), byte_len: UInt64(bytes.count))
    }

    /// Overwrites the caller's buffer (to prove the bridge copied it).
    func scribble() { memset(data, 0x5A, Int(tensor.byte_len)) }

    deinit {
        free(name)
        shape.deallocate()
        strides?.deallocate()
        data.deallocate()
    }
}

struct OutTensor {
    var name: String
    var dtype: Int32
    var shape: [Int64]
    var bytes: [UInt8]
    func values<T>(_: T.Type) -> [T] { bytes.withUnsafeBytes { Array($0.bindMemory(to: T.self)) } }
}

/// coreml_predict through C; copies the outputs and frees them.
func cPredict(_ h: UnsafeMutableRawPointer?, _ inputs: [CInput], timeoutMs: Int64 = 5000) -> (Int32, [OutTensor], String?) {
    var outs: UnsafeMutablePointer<CoremlOutputs>?
    var err: UnsafeMutablePointer<CChar>?
    let descriptors = inputs.map { $0.tensor }
    let st = descriptors.withUnsafeBufferPointer {
        CoreMLBridgeC.coreml_predict(h, $0.baseAddress, Int32(inputs.count), timeoutMs, &outs, &err)
    }
    var result: [OutTensor] = []
    if let o = outs {
        for i in 0..<Int(o.pointee.count) {
            let t = o.pointee.tensors[i]
            result.append(OutTensor(
                name: String(cString: t.name), dtype: t.dtype,
                shape: Array(UnsafeBufferPointer(start: t.shape, count: Int(t.rank))),
                bytes: Array(UnsafeRawBufferPointer(start: t.data, count: Int(t.byte_len)))))
        }
        CoreMLBridgeC.coreml_free_outputs(o)
    }
    withExtendedLifetime(inputs) {}
    return (st, result, C.takeString(err))
}

func bytes<T>(_ a: [T]) -> [UInt8] { a.withUnsafeBytes { Array($0) } }

let OK = Int32(COREML_OK.rawValue)
func code(_ s: CoremlStatus) -> Int32 { Int32(s.rawValue) }

/// A scratch directory with fake packages; removed by the test case.
class BridgeTestCase: XCTestCase {
    var dir: URL!

    override func setUp() {
        super.setUp()
        setenv("COREML_BRIDGE_TEST_RUNTIME", "1", 1)
        dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("coreml-bridge-tests-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: dir)
        setenv("COREML_BRIDGE_TEST_RUNTIME", "1", 1)
        super.tearDown()
    }

    /// Writes <dir>/<name>.mlpackage/fake_model.json (or an empty package when json is nil).
    func package(_ name: String, _ json: String? = nil) -> String {
        let p = dir.appendingPathComponent(name + ".mlpackage")
        try? FileManager.default.createDirectory(at: p, withIntermediateDirectories: true)
        if let json = json {
            try? json.write(to: p.appendingPathComponent("fake_model.json"), atomically: true, encoding: .utf8)
        }
        return p.path
    }

    /// Compiles a fake package through the C ABI into <dir>/compiled-<uuid>/.
    func compiled(_ name: String, _ json: String? = nil, file: StaticString = #filePath, line: UInt = #line) -> String {
        let dest = dir.appendingPathComponent("compiled-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        let (st, path, err) = C.compile(package(name, json), dest.path)
        XCTAssertEqual(st, OK, err ?? "", file: file, line: line)
        return path ?? "/missing"
    }

    func loaded(_ name: String, _ json: String? = nil, file: StaticString = #filePath, line: UInt = #line) -> UnsafeMutableRawPointer? {
        let (st, h, err) = C.load(compiled(name, json, file: file, line: line))
        XCTAssertEqual(st, OK, err ?? "", file: file, line: line)
        return h
    }
}

/// A value shared with another thread in a test (locked).
final class Box<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T {
        get { lock.lock(); defer { lock.unlock() }; return v }
        set { lock.lock(); v = newValue; lock.unlock() }
    }
    func mutate(_ f: (inout T) -> Void) { lock.lock(); f(&v); lock.unlock() }
}

/// A model handle handed to another thread in a test.
struct SendableHandle: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer?
    init(_ raw: UnsafeMutableRawPointer?) { self.raw = raw }
}

/// coreml_make_state through C.
func cMakeState(_ h: UnsafeMutableRawPointer?, timeoutMs: Int64 = 5000) -> (Int32, UnsafeMutableRawPointer?, String?) {
    var s: UnsafeMutableRawPointer?
    var err: UnsafeMutablePointer<CChar>?
    let st = CoreMLBridgeC.coreml_make_state(h, timeoutMs, &s, &err)
    return (st, s, C.takeString(err))
}

/// coreml_predict_with_state through C; copies the outputs and frees them.
func cPredictWithState(_ h: UnsafeMutableRawPointer?, _ state: UnsafeMutableRawPointer?, _ inputs: [CInput],
                       timeoutMs: Int64 = 5000) -> (Int32, [OutTensor], String?) {
    var outs: UnsafeMutablePointer<CoremlOutputs>?
    var err: UnsafeMutablePointer<CChar>?
    let descriptors = inputs.map { $0.tensor }
    let st = descriptors.withUnsafeBufferPointer {
        CoreMLBridgeC.coreml_predict_with_state(h, state, $0.baseAddress, Int32(inputs.count), timeoutMs, &outs, &err)
    }
    var result: [OutTensor] = []
    if let o = outs {
        for i in 0..<Int(o.pointee.count) {
            let t = o.pointee.tensors[i]
            result.append(OutTensor(
                name: String(cString: t.name), dtype: t.dtype,
                shape: Array(UnsafeBufferPointer(start: t.shape, count: Int(t.rank))),
                bytes: Array(UnsafeRawBufferPointer(start: t.data, count: Int(t.byte_len)))))
        }
        CoreMLBridgeC.coreml_free_outputs(o)
    }
    withExtendedLifetime(inputs) {}
    return (st, result, C.takeString(err))
}

/// coreml_predict_batch through C: one CInput list per member; copies every
/// member's outputs and frees them.
func cPredictBatch(_ h: UnsafeMutableRawPointer?, _ members: [[CInput]], timeoutMs: Int64 = 5000) -> (Int32, [[OutTensor]], String?) {
    var err: UnsafeMutablePointer<CChar>?
    let descriptors = members.map { $0.map { $0.tensor } }
    var slots = [UnsafeMutablePointer<CoremlOutputs>?](repeating: nil, count: max(members.count, 1))
    let st: Int32 = withArrays(descriptors) { bases in
        let batch = zip(bases, descriptors).map { CoremlBatchMember(inputs: $0, n_inputs: Int32($1.count)) }
        return batch.withUnsafeBufferPointer { b in
            slots.withUnsafeMutableBufferPointer {
                CoreMLBridgeC.coreml_predict_batch(h, b.baseAddress, Int32(members.count), timeoutMs, $0.baseAddress, &err)
            }
        }
    }
    var result: [[OutTensor]] = []
    for o in slots.prefix(members.count) {
        guard let o = o else { continue }
        var one: [OutTensor] = []
        for i in 0..<Int(o.pointee.count) {
            let t = o.pointee.tensors[i]
            one.append(OutTensor(
                name: String(cString: t.name), dtype: t.dtype,
                shape: Array(UnsafeBufferPointer(start: t.shape, count: Int(t.rank))),
                bytes: Array(UnsafeRawBufferPointer(start: t.data, count: Int(t.byte_len)))))
        }
        result.append(one)
        CoreMLBridgeC.coreml_free_outputs(o)
    }
    withExtendedLifetime(members) {}
    return (st, result, C.takeString(err))
}

/// Calls `body` with stable base addresses of every array (in order).
func withArrays<T, R>(_ arrays: [[T]], _ body: ([UnsafePointer<T>?]) -> R) -> R {
    func go(_ i: Int, _ acc: [UnsafePointer<T>?]) -> R {
        if i == arrays.count { return body(acc) }
        return arrays[i].withUnsafeBufferPointer { go(i + 1, acc + [$0.baseAddress]) }
    }
    return go(0, [])
}

import XCTest
import Foundation
import CoreMLBridgeC
import CoreMLBridgeCHarness
@testable import CoreMLBridge

/// The C ABI end to end with the test runtime: the calls go through the C
/// declarations of coreml_bridge.h.
final class CABITests: BridgeTestCase {
    func testConstantsMatchTheHeader() {
        let c: [CoremlStatus] = [COREML_OK, COREML_ERR_INVALID_ARGUMENT, COREML_ERR_COMPILE, COREML_ERR_LOAD,
                                 COREML_ERR_SCHEMA_MISMATCH, COREML_ERR_PREDICT, COREML_ERR_TIMEOUT, COREML_ERR_POISONED,
                                 COREML_ERR_UNAVAILABLE, COREML_ERR_OUT_OF_MEMORY, COREML_ERR_INTERNAL,
                                 COREML_ERR_INVALID_HANDLE, COREML_ERR_UNSUPPORTED, COREML_ERR_STATE_IN_USE,
                                 COREML_ERR_STATE_MISMATCH]
        XCTAssertEqual(c.map(code), BridgeStatus.allCases.map { $0.rawValue })
        let d: [CoremlDType] = [COREML_DTYPE_F32, COREML_DTYPE_F16, COREML_DTYPE_F64, COREML_DTYPE_I32, COREML_DTYPE_I8, COREML_DTYPE_I64]
        XCTAssertEqual(d.map { Int32($0.rawValue) }, DType.allCases.map { $0.rawValue })
        let u: [CoremlComputeUnits] = [COREML_COMPUTE_ALL, COREML_COMPUTE_CPU_ONLY, COREML_COMPUTE_CPU_AND_GPU, COREML_COMPUTE_CPU_AND_NE]
        XCTAssertEqual(u.map { Int32($0.rawValue) }, ComputeUnits.allCases.map { $0.rawValue })
        XCTAssertEqual(CoreMLBridgeC.coreml_bridge_abi_version(), COREML_BRIDGE_ABI_VERSION)
        XCTAssertEqual(bridgeABIVersion, COREML_BRIDGE_ABI_VERSION)
        XCTAssertEqual(COREML_MAX_RANK, 16)
    }

    func testStructLayoutAgreesBetweenCAndSwift() {
        var sizes = [size_t](repeating: 0, count: 6)
        sizes.withUnsafeMutableBufferPointer { harness_layout($0.baseAddress) }
        XCTAssertEqual(sizes.map { Int($0) }, [
            MemoryLayout<CoremlTensor>.size, MemoryLayout<CoremlTensor>.offset(of: \CoremlTensor.byte_len)!,
            MemoryLayout<CoremlOutputTensor>.size, MemoryLayout<CoremlOutputTensor>.offset(of: \CoremlOutputTensor.byte_len)!,
            MemoryLayout<CoremlOutputs>.size, MemoryLayout<CoremlOutputs>.offset(of: \CoremlOutputs.reserved)!,
        ])
        XCTAssertEqual(MemoryLayout<CoremlTensor>.size, 48)
        var batch = [size_t](repeating: 0, count: 2)
        batch.withUnsafeMutableBufferPointer { harness_batch_layout($0.baseAddress) }
        XCTAssertEqual(batch.map { Int($0) }, [MemoryLayout<CoremlBatchMember>.size,
                                               MemoryLayout<CoremlBatchMember>.offset(of: \CoremlBatchMember.n_inputs)!])
    }

    func testBadArgumentsFromC() {
        let path = compiled("identity")
        var msg = [CChar](repeating: 0, count: 512)
        let failures = harness_bad_arguments(path, &msg, msg.count)
        XCTAssertEqual(failures, 0, String(cString: msg))
        XCTAssertEqual(liveOutputs.count, 0, "every output object was freed")
    }

    func testRoundTripFromC() {
        let path = compiled("add_one")
        var msg = [CChar](repeating: 0, count: 512)
        XCTAssertEqual(harness_roundtrip(path, &msg, msg.count), 0, String(cString: msg))
    }

    func testCompileLoadSchemaPredict() throws {
        let json = """
        {"behavior": "add_one", "pad_outputs": 3,
         "inputs": [{"name": "x", "dtype": "f32", "shape": [2, 3]}],
         "outputs": [{"name": "y", "dtype": "f32", "shape": [2, 3]}],
         "metadata": {"author": "tests", "description": "adds one", "version": "1.2", "license": "MIT",
                      "user_defined": {"com.example.k": "v"}}}
        """
        let dest = dir.appendingPathComponent("cache")
        try FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        let (st, path, err) = C.compile(package("adder", json), dest.path)
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(path, dest.appendingPathComponent("adder.mlmodelc").path)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dest.appendingPathComponent("adder.mlmodelc/fake_model.json").path))

        let (st2, _, err2) = C.compile(package("adder", json), dest.path)
        XCTAssertEqual(st2, code(COREML_ERR_INVALID_ARGUMENT), "never overwrites")
        XCTAssertTrue(err2?.contains("already exists") ?? false)

        let (ls, h, lerr) = C.load(path!, units: 3)
        XCTAssertEqual(ls, OK, lerr ?? "")
        defer { C.free(h) }
        let (ss, schema, _) = C.schema(h)
        XCTAssertEqual(ss, OK)
        let inputs = schema?["inputs"] as? [[String: Any]]
        XCTAssertEqual(inputs?.first?["name"] as? String, "x")
        XCTAssertEqual(inputs?.first?["shape"] as? [Int], [2, 3])
        XCTAssertEqual((inputs?.first?["shape_constraint"] as? [String: Any])?["type"] as? String, "unspecified")
        let meta = schema?["metadata"] as? [String: Any]
        XCTAssertEqual(meta?["version"] as? String, "1.2")
        XCTAssertEqual(meta?["user_defined"] as? [String: String], ["com.example.k": "v"])

        let x = CInput("x", dtype: .f32, shape: [2, 3], bytes: bytes([1, 2, 3, 4, 5, 6] as [Float]))
        let (ps, outs, perr) = cPredict(h, [x])
        XCTAssertEqual(ps, OK, perr ?? "")
        XCTAssertEqual(outs.count, 1)
        XCTAssertEqual(outs.first?.name, "y")
        XCTAssertEqual(outs.first?.shape, [2, 3])
        XCTAssertEqual(outs.first?.values(Float.self), [2, 3, 4, 5, 6, 7])

        let wrong = CInput("x", dtype: .f32, shape: [3, 2], bytes: bytes([Float](repeating: 0, count: 6)))
        let (ws, _, werr) = cPredict(h, [wrong])
        XCTAssertEqual(ws, code(COREML_ERR_SCHEMA_MISMATCH))
        XCTAssertTrue(werr?.contains("[2, 3]") ?? false, werr ?? "")
    }

    /// Every dtype through the whole path: strided (padded) input in, padded
    /// output gathered through its strides, row-major bytes out.
    func testEveryDTypeWithPaddedInputsAndOutputs() {
        let h = loaded("add_one_padded", #"{"behavior": "add_one", "pad_outputs": 5}"#)
        defer { C.free(h) }
        let shape = [2, 3, 4]
        let strides = [40, 12, 2] // every element has a gap after it, rows padded too
        let n = 24
        func check<T: Equatable>(_ dtype: DType, _ values: [T], _ plusOne: [T], filler: T, line: UInt = #line) {
            var padded = [T](repeating: filler, count: 80)
            var i = 0
            for a in 0..<2 { for b in 0..<3 { for c in 0..<4 { padded[a * 40 + b * 12 + c * 2] = values[i]; i += 1 } } }
            let x = CInput("x", dtype: dtype, shape: shape, strides: strides, bytes: bytes(padded))
            let (st, outs, err) = cPredict(h, [x])
            XCTAssertEqual(st, OK, err ?? "", line: line)
            XCTAssertEqual(outs.first?.dtype, dtype.rawValue, line: line)
            XCTAssertEqual(outs.first?.shape, [2, 3, 4], line: line)
            XCTAssertEqual(outs.first?.bytes.count, n * dtype.size, line: line)
            XCTAssertEqual(outs.first?.values(T.self), plusOne, line: line)
        }
        let f = (0..<n).map { Float($0) - 5.5 }
        check(.f32, f, f.map { $0 + 1 }, filler: .nan)
        let d = (0..<n).map { Double($0) * 0.25 }
        check(.f64, d, d.map { $0 + 1 }, filler: .nan)
        let i32 = (0..<n).map { Int32($0) * 1000 - 7 }
        check(.i32, i32, i32.map { $0 + 1 }, filler: -1)
        let i8 = (0..<n).map { Int8($0) - 12 }
        check(.i8, i8, i8.map { $0 + 1 }, filler: -1)
        let h16 = (0..<n).map { Half.fromFloat(Float($0) * 0.5) }
        check(.f16, h16, h16.map { Half.fromFloat(Half.toFloat($0) + 1) }, filler: 0x7e00)
    }

    func testInputsAreCopiedBeforeTheCallReturns() {
        let h = loaded("sleep_100ms")
        defer { C.free(h) }
        let x = CInput("x", dtype: .i32, shape: [4], bytes: bytes([1, 2, 3, 4] as [Int32]))
        let (st, outs, err) = cPredict(h, [x])
        x.scribble() // the caller reuses its buffer the moment the call returns
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(outs.first?.values(Int32.self), [1, 2, 3, 4])
        // And a late prediction never reads it: time out, scribble, let it finish.
        let y = CInput("x", dtype: .i32, shape: [4], bytes: bytes([5, 6, 7, 8] as [Int32]))
        let h2 = loaded("sleep_150ms")
        defer { C.free(h2) }
        XCTAssertEqual(cPredict(h2, [y], timeoutMs: 20).0, code(COREML_ERR_TIMEOUT))
        y.scribble()
        usleep(250_000)
    }

    func testEnumeratedRangeMissingAndOptionalInputs() {
        let json = """
        {"inputs": [{"name": "a", "dtype": "f32", "enumerated_shapes": [[1, 2], [1, 4]]},
                    {"name": "b", "dtype": "i32", "ranges": [{"lower": 1, "upper": 2}, {"lower": 3}]},
                    {"name": "c", "dtype": "f32", "optional": true}],
         "outputs": [{"name": "ya"}, {"name": "yb"}]}
        """
        let h = loaded("multi", json)
        defer { C.free(h) }
        let a = CInput("a", dtype: .f32, shape: [1, 4], bytes: bytes([Float](repeating: 1, count: 4)))
        let b = CInput("b", dtype: .i32, shape: [2, 100], bytes: bytes([Int32](repeating: 2, count: 200)))
        let (st, outs, err) = cPredict(h, [b, a])
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(outs.map { $0.name }, ["ya", "yb"])
        XCTAssertEqual(outs.map { $0.shape }, [[1, 4], [2, 100]])

        let aBad = CInput("a", dtype: .f32, shape: [1, 3], bytes: bytes([Float](repeating: 1, count: 3)))
        XCTAssertEqual(cPredict(h, [aBad, b]).0, code(COREML_ERR_SCHEMA_MISMATCH))
        let bBad = CInput("b", dtype: .i32, shape: [3, 3], bytes: bytes([Int32](repeating: 2, count: 9)))
        XCTAssertEqual(cPredict(h, [a, bBad]).0, code(COREML_ERR_SCHEMA_MISMATCH))
        let (ms, _, merr) = cPredict(h, [a])
        XCTAssertEqual(ms, code(COREML_ERR_SCHEMA_MISMATCH))
        XCTAssertTrue(merr?.contains("missing") ?? false, merr ?? "")
    }

    func testFailuresCarryTheNSErrorChain() {
        let json = """
        {"fail_stage": "predict", "error": {"domain": "com.apple.CoreML", "code": 0, "message": "Failed to evaluate model.",
          "underlying": {"domain": "com.apple.Espresso", "code": -7, "message": "ANE program failed",
            "underlying": {"domain": "NSPOSIXErrorDomain", "code": 12, "message": "Cannot allocate memory"}}}}
        """
        let h = loaded("failing", json)
        defer { C.free(h) }
        let x = CInput("x", dtype: .f32, shape: [1], bytes: bytes([Float(1)]))
        let (st, outs, err) = cPredict(h, [x])
        XCTAssertEqual(st, code(COREML_ERR_PREDICT))
        XCTAssertTrue(outs.isEmpty)
        XCTAssertEqual(err, "prediction failed: [com.apple.CoreML code=0] Failed to evaluate model.; caused by: "
                       + "[com.apple.Espresso code=-7] ANE program failed; caused by: [NSPOSIXErrorDomain code=12] Cannot allocate memory")
        XCTAssertFalse(Bridge.handles.lookup(UInt(bitPattern: h))!.isPoisoned, "a failure is not a timeout")

        let feature = loaded("featuretype", #"{"fail_stage": "predict", "error": {"domain": "com.apple.CoreML", "code": 1, "message": "type mismatch"}}"#)
        defer { C.free(feature) }
        XCTAssertEqual(cPredict(feature, [x]).0, code(COREML_ERR_SCHEMA_MISMATCH))

        let dest = dir.appendingPathComponent("d")
        try? FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        let (cs, cpath, cerr) = C.compile(package("fail_compile"), dest.path)
        XCTAssertEqual(cs, code(COREML_ERR_COMPILE))
        XCTAssertNil(cpath)
        XCTAssertTrue(cerr?.contains("caused by: [NSPOSIXErrorDomain code=5]") ?? false, cerr ?? "")
        let (ls, lh, lerr) = C.load(compiled("fail_load"))
        XCTAssertEqual(ls, code(COREML_ERR_LOAD))
        XCTAssertNil(lh)
        XCTAssertTrue(lerr?.hasPrefix("load failed for") ?? false, lerr ?? "")
    }

    func testComputePlanAndRuntimeInfo() {
        let path = compiled("planned", #"{"operations": [{"operator": "conv", "device": "neural_engine", "cost": 0.75}, {"operator": "softmax", "device": "cpu", "cost": 0.25}]}"#)
        let (st, plan, err) = C.computePlan(path)
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(plan?["model_type"] as? String, "program")
        XCTAssertEqual((plan?["operations"] as? [[String: Any]])?.map { $0["operator"] as! String }, ["conv", "softmax"])
        XCTAssertEqual(plan?["device_counts"] as? [String: Int], ["cpu": 1, "gpu": 0, "neural_engine": 1, "unknown": 0])

        let (is_, info, ierr) = C.runtimeInfo()
        XCTAssertEqual(is_, OK, ierr ?? "")
        XCTAssertEqual(info?["bridge_abi_version"] as? Int, 2)
        XCTAssertEqual(info?["test_runtime"] as? Bool, true)
        XCTAssertNotNil(info?["os_version"] as? String)
    }
}

/// Deadlines, poisoning and handle lifetime under concurrency.
final class ConcurrencyTests: BridgeTestCase {
    func input(_ v: Float = 1) -> CInput { CInput("x", dtype: .f32, shape: [1], bytes: bytes([v])) }

    func testTimeoutWithinDeadlineThenPoisoned() {
        let h = loaded("sleep_2000ms")
        defer { C.free(h) }
        let start = Date()
        let (st, outs, err) = cPredict(h, [input()], timeoutMs: 100)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(st, code(COREML_ERR_TIMEOUT), err ?? "")
        XCTAssertTrue(outs.isEmpty)
        XCTAssertGreaterThanOrEqual(elapsed, 0.095)
        XCTAssertLessThan(elapsed, 1.0, "timeout returns at the deadline (+ margin), not when the work ends")
        XCTAssertTrue(err?.contains("poisoned") ?? false, err ?? "")

        let again = Date()
        let (ps, _, perr) = cPredict(h, [input()], timeoutMs: 5000)
        XCTAssertEqual(ps, code(COREML_ERR_POISONED), perr ?? "")
        XCTAssertLessThan(Date().timeIntervalSince(again), 0.1, "poisoned handles fail at once")
        XCTAssertEqual(C.schema(h).0, OK, "schema still works on a poisoned handle")
    }

    /// Issue #13: a descriptor with zero strides and a huge shape describes
    /// far more than it backs. It is checked against the model and the byte
    /// cap before any copy, and a copy that is allowed honours the deadline.
    func testHugeZeroStrideInputsAreRefusedOrStoppedInTime() {
        let one = bytes([Float(1)])
        // Past the byte cap: refused at once, nothing allocated.
        let h = loaded("add_one")
        defer { C.free(h) }
        var start = Date()
        let huge = CInput("x", dtype: .f32, shape: [1 << 20, 1 << 20], strides: [0, 0], bytes: one)
        var (st, _, err) = cPredict(h, [huge], timeoutMs: 60_000)
        XCTAssertEqual(st, code(COREML_ERR_OUT_OF_MEMORY), err ?? "")
        XCTAssertTrue(err?.contains("COREML_BRIDGE_MAX_INPUT_BYTES") ?? false, err ?? "")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5)
        // Under the cap (1 GiB) but far longer to gather than the timeout:
        // the copy stops at the deadline, and the handle is not poisoned
        // (nothing ran on the model).
        start = Date()
        let big = CInput("x", dtype: .f32, shape: [1 << 28], strides: [0], bytes: one)
        (st, _, err) = cPredict(h, [big], timeoutMs: 20)
        let took = Date().timeIntervalSince(start)
        XCTAssertEqual(st, code(COREML_ERR_TIMEOUT), err ?? "")
        XCTAssertTrue(err?.contains("copying input 'x'") ?? false, err ?? "")
        XCTAssertLessThan(took, 0.25, "the copy honours the 20 ms deadline (took \(took) s)")
        XCTAssertEqual(cPredict(h, [input(2)]).0, OK, "a copy timeout does not poison the handle")
        // A shape the model does not take is refused before the copy.
        let fixed = loaded("fixed", #"{"inputs": [{"name": "x", "dtype": "f32", "shape": [2]}]}"#)
        defer { C.free(fixed) }
        start = Date()
        (st, _, err) = cPredict(fixed, [big], timeoutMs: 60_000)
        XCTAssertEqual(st, code(COREML_ERR_SCHEMA_MISMATCH), err ?? "")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5)
        // So is an element type Core ML does not convert.
        let i8 = CInput("x", dtype: .i8, shape: [2], bytes: [1, 2])
        (st, _, err) = cPredict(fixed, [i8])
        XCTAssertEqual(st, code(COREML_ERR_SCHEMA_MISMATCH), err ?? "")
        XCTAssertTrue(err?.contains("the model takes f32") ?? false, err ?? "")
        XCTAssertEqual(cPredict(fixed, [CInput("x", dtype: .f64, shape: [2], bytes: bytes([1.0, 2.0]))]).0, OK,
                       "f64 converts to an f32 feature")
    }

    func testFreeWhileTimedOutWorkIsStillRunning() {
        var h = loaded("sleep_300ms")
        weak var model = Bridge.handles.lookup(UInt(bitPattern: h))?.model as AnyObject?
        var x: CInput? = input(3)
        XCTAssertEqual(cPredict(h, [x!], timeoutMs: 50).0, code(COREML_ERR_TIMEOUT))
        C.free(h)           // the late prediction is still running
        x = nil             // and the caller's input memory is gone
        XCTAssertNotNil(model, "the running work keeps the model alive")
        XCTAssertEqual(C.schema(h).0, code(COREML_ERR_INVALID_HANDLE))
        h = nil
        // The late work finishes (touching only bridge memory) and releases it.
        let deadline = Date().addingTimeInterval(5)
        while model != nil, Date() < deadline { usleep(20_000) }
        XCTAssertNil(model, "and releases it when done")
    }

    func testFreeWhileAPredictionIsWaiting() {
        let h = SendableHandle(loaded("sleep_200ms"))
        let group = DispatchGroup()
        let result = Box<(Int32, [OutTensor], String?)>((0, [], nil))
        let x = input(7)
        DispatchQueue.global().async(group: group) { result.value = cPredict(h.raw, [x], timeoutMs: 5000) }
        usleep(50_000)
        C.free(h.raw)
        group.wait()
        XCTAssertEqual(result.value.0, OK, result.value.2 ?? "")
        XCTAssertEqual(result.value.1.first?.values(Float.self), [7])
    }

    func testQueuedPredictionTimesOutBehindARunningOne() {
        let sh = SendableHandle(loaded("sleep_600ms"))
        let h = sh.raw
        defer { C.free(h) }
        let group = DispatchGroup()
        let firstBox = Box<Int32>(-1)
        let x = input()
        DispatchQueue.global().async(group: group) { firstBox.value = cPredict(sh.raw, [x], timeoutMs: 3000).0 }
        usleep(30_000)
        let start = Date()
        XCTAssertEqual(cPredict(h, [input()], timeoutMs: 60).0, code(COREML_ERR_TIMEOUT))
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5)
        group.wait()
        XCTAssertEqual(firstBox.value, OK, "the running prediction still completes")
        XCTAssertEqual(cPredict(h, [input()]).0, code(COREML_ERR_POISONED))
    }

    func testStuckCallsAreCappedThenAdmittedAgain() {
        StuckWork.setLimitForTesting(2)
        defer { StuckWork.setLimitForTesting(nil) }
        // Stuck work left by earlier tests (the counter is process-wide) ends first.
        let settle = Date().addingTimeInterval(5)
        while StuckWork.current > 0, Date() < settle { usleep(20_000) }
        let a = loaded("sleep_400ms"), b = loaded("sleep_400ms"), c = loaded("sleep_400ms")
        let other = compiled("identity")
        defer { C.free(a); C.free(b); C.free(c) }
        XCTAssertEqual(StuckWork.current, 0)
        XCTAssertEqual(cPredict(a, [input()], timeoutMs: 20).0, code(COREML_ERR_TIMEOUT))
        XCTAssertEqual(cPredict(b, [input()], timeoutMs: 20).0, code(COREML_ERR_TIMEOUT))
        XCTAssertEqual(StuckWork.current, 2, "two timed-out predictions are still running")
        // At the cap: new work is refused at once, nothing is started.
        let start = Date()
        let (st, outs, err) = cPredict(c, [input()], timeoutMs: 5000)
        XCTAssertEqual(st, code(COREML_ERR_UNAVAILABLE), err ?? "")
        XCTAssertTrue(outs.isEmpty)
        XCTAssertTrue(err?.contains("limit 2") ?? false, err ?? "")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.1, "refused without waiting")
        XCTAssertEqual(C.load(other).0, code(COREML_ERR_UNAVAILABLE), "loads are refused too")
        // When the stuck calls return, the count falls and work is admitted again.
        let deadline = Date().addingTimeInterval(5)
        while StuckWork.current > 0, Date() < deadline { usleep(20_000) }
        XCTAssertEqual(StuckWork.current, 0)
        XCTAssertEqual(cPredict(c, [input(5)], timeoutMs: 5000).0, OK, "c was never poisoned: its call was refused, not run")
    }

    func testOneHandleIsSerialised() {
        let h = SendableHandle(loaded("sleep_80ms"))
        defer { C.free(h.raw) }
        let start = Date()
        let statuses = Box<[Int32]>([])
        DispatchQueue.concurrentPerform(iterations: 4) { i in
            let st = cPredict(h.raw, [CInput("x", dtype: .f32, shape: [1], bytes: bytes([Float(i)]))], timeoutMs: 5000).0
            statuses.mutate { $0.append(st) }
        }
        XCTAssertEqual(statuses.value, [OK, OK, OK, OK])
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.31, "four 80 ms predictions ran one at a time")
    }

    func testManyConcurrentPredictsOnDifferentHandles() {
        let handles = (0..<8).map { _ in SendableHandle(loaded("sleep_50ms")) }
        defer { handles.forEach { C.free($0.raw) } }
        let start = Date()
        let bad = Box<[String]>([])
        let threads = 8
        let group = DispatchGroup()
        for t in 0..<threads {
            group.enter()
            Thread {
                for k in 0..<5 {
                    let v = Float(t * 100 + k)
                    let x = CInput("x", dtype: .f32, shape: [1], bytes: bytes([v]))
                    let (st, outs, err) = cPredict(handles[t].raw, [x], timeoutMs: 5000)
                    if st != OK || outs.first?.values(Float.self) != [v] {
                        bad.mutate { $0.append("\(t)/\(k): \(st) \(err ?? "")") }
                    }
                }
                group.leave()
            }.start()
        }
        group.wait()
        XCTAssertEqual(bad.value, [])
        // 40 predictions of 50 ms: serial would take 2 s; per-handle queues overlap (~0.25 s).
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.2)
    }

    func testCompileTimeoutLeavesNothingBehind() throws {
        let dest = dir.appendingPathComponent("cache")
        try FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        let stem = "slowcompile\(UInt32.random(in: 0...UInt32.max))"
        let (st, path, err) = C.compile(package(stem, #"{"compile_sleep_ms": 300}"#), dest.path, timeoutMs: 50)
        XCTAssertEqual(st, code(COREML_ERR_TIMEOUT), err ?? "")
        XCTAssertNil(path)
        func leftovers() throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: NSTemporaryDirectory()).filter { $0.contains(stem) }
        }
        usleep(350_000) // the late compile has finished by now (300 ms)
        let deadline = Date().addingTimeInterval(5)
        while try !leftovers().isEmpty, Date() < deadline { usleep(20_000) }
        XCTAssertEqual(try leftovers(), [], "a late compile deletes its temporary output")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dest.path), [], "and never writes dest_dir")
        let (st2, path2, err2) = C.compile(package(stem, #"{"compile_sleep_ms": 300}"#), dest.path, timeoutMs: 5000)
        XCTAssertEqual(st2, OK, err2 ?? "")
        XCTAssertEqual(path2, dest.appendingPathComponent(stem + ".mlmodelc").path)
    }

    func testLoadTimeoutGivesNoHandle() {
        let path = compiled("slowload", #"{"load_sleep_ms": 300}"#)
        let before = Bridge.handles.count
        let (st, h, err) = C.load(path, timeoutMs: 50)
        XCTAssertEqual(st, code(COREML_ERR_TIMEOUT), err ?? "")
        XCTAssertNil(h)
        usleep(400_000)
        XCTAssertEqual(Bridge.handles.count, before)
    }
}

/// What a caller sees where Core ML does not exist and the test runtime is off.
final class UnavailableTests: BridgeTestCase {
    #if !canImport(CoreML)
    func testModelCallsSayUnavailable() {
        let path = compiled("identity") // compiled with the test runtime on
        unsetenv("COREML_BRIDGE_TEST_RUNTIME")
        let reason = "Core ML is not available on this platform (Linux)"
        let (ls, h, lerr) = C.load(path)
        XCTAssertEqual(ls, code(COREML_ERR_UNAVAILABLE))
        XCTAssertNil(h)
        XCTAssertTrue(lerr?.contains(reason) ?? false, lerr ?? "")
        let dest = dir.appendingPathComponent("d")
        try? FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        let (cs, _, cerr) = C.compile(package("identity"), dest.path)
        XCTAssertEqual(cs, code(COREML_ERR_UNAVAILABLE))
        XCTAssertTrue(cerr?.contains(reason) ?? false, cerr ?? "")
        XCTAssertEqual(C.computePlan(path).0, code(COREML_ERR_UNAVAILABLE))

        let (is_, info, _) = C.runtimeInfo()
        XCTAssertEqual(is_, OK)
        XCTAssertEqual(info?["coreml_available"] as? Bool, false)
        XCTAssertEqual(info?["platform"] as? String, "Linux")
        XCTAssertEqual(info?["reason"] as? String, reason)
        XCTAssertEqual(info?["test_runtime"] as? Bool, false)
        XCTAssertTrue(info?["neural_engine_present"] is NSNull)
        XCTAssertEqual(info?["compute_plan_available"] as? Bool, false)
    }

    func testHandlesFromTheTestRuntimeKeepWorking() {
        let h = loaded("add_one")
        defer { C.free(h) }
        unsetenv("COREML_BRIDGE_TEST_RUNTIME")
        let (st, outs, _) = cPredict(h, [CInput("x", dtype: .f32, shape: [1], bytes: bytes([Float(1)]))])
        XCTAssertEqual(st, OK)
        XCTAssertEqual(outs.first?.values(Float.self), [2])
    }

    /// The Core ML adapter compiled against CoreMLShim: every call reports
    /// "unavailable" and nothing traps.
    func testCoreMLAdapterAgainstTheShim() {
        let runtime = CoreMLRuntime()
        let path = compiled("identity")
        XCTAssertThrowsError(try Bridge.load(compiledPath: path, computeUnits: .cpuAndNeuralEngine, timeoutMs: 2000, runtime: runtime)) {
            XCTAssertEqual(($0 as? BridgeError)?.status, .unavailable, "\($0)")
        }
        let dest = dir.appendingPathComponent("d")
        try? FileManager.default.createDirectory(at: dest, withIntermediateDirectories: true)
        XCTAssertThrowsError(try Bridge.compile(packagePath: package("identity"), destDir: dest.path, timeoutMs: 2000, runtime: runtime)) {
            XCTAssertEqual(($0 as? BridgeError)?.status, .unavailable, "\($0)")
        }
        XCTAssertThrowsError(try Bridge.computePlanJSON(compiledPath: path, computeUnits: .all, timeoutMs: 2000, runtime: runtime)) {
            XCTAssertEqual(($0 as? BridgeError)?.status, .unavailable, "\($0)")
        }
        let info = runtime.runtimeInfo()
        XCTAssertFalse(info.coremlAvailable)
        XCTAssertNotNil(info.reason)
        let x = try! HostTensor(name: "x", dtype: .i8, shape: [2], buffer: TensorBuffer(byteCount: 2))
        XCTAssertThrowsError(try CoreMLLoadedModel.multiArray(for: x)) {
            let b = bridgeError($0, status: .predict, context: "predict")
            XCTAssertEqual(b.status, .unavailable)
            XCTAssertTrue(b.message.contains("[CoreMLShim.Unavailable code=1] Core ML is not available"), b.message)
        }
    }
    #endif
}

import Foundation
import Dispatch

/// The bridge operations in Swift terms. The C entry points (CAPI.swift) only
/// translate arguments and results; tests drive both layers.
public enum Bridge {
    public static let handles = HandleTable<ModelHandle>()
    /// Model states; their ids never collide with model handles.
    public static let states = HandleTable<StateHandle>(base: 0x00C0_57A7_0000_0000)
    /// Compile, load and compute-plan work (each call waits with its own deadline).
    static let workQueue = DispatchQueue(label: "coreml-bridge.work", attributes: .concurrent)

    static func fileURL(_ path: String, what: String) throws -> URL {
        guard !path.isEmpty else { throw BridgeError.invalid("\(what) is empty") }
        return URL(fileURLWithPath: path).standardizedFileURL
    }

    static func requireExists(_ url: URL, what: String, directory: Bool? = nil) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) else {
            throw BridgeError.invalid("\(what) '\(url.path)' does not exist")
        }
        if let wantDir = directory, isDir.boolValue != wantDir {
            throw BridgeError.invalid("\(what) '\(url.path)' is \(wantDir ? "not a directory" : "a directory")")
        }
    }

    /// Compiles `packagePath` to `<destDir>/<stem>.mlmodelc`; returns its path.
    public static func compile(packagePath: String, destDir: String, timeoutMs: Int64,
                               runtime: ModelRuntime = Runtimes.current) throws -> String {
        let timeout = try validateTimeout(timeoutMs)
        let package = try fileURL(packagePath, what: "package_path")
        let dest = try fileURL(destDir, what: "dest_dir")
        try requireExists(package, what: "package_path")
        try requireExists(dest, what: "dest_dir", directory: true)
        let stem = package.deletingPathExtension().lastPathComponent
        guard !stem.isEmpty, stem != "/", stem != ".", stem != ".." else {
            throw BridgeError.invalid("cannot derive a model name from '\(packagePath)'")
        }
        let target = dest.appendingPathComponent(stem + ".mlmodelc")
        if FileManager.default.fileExists(atPath: target.path) {
            throw BridgeError.invalid("'\(target.path)' already exists; the bridge does not overwrite")
        }
        let temp: URL
        do {
            temp = try runWithDeadline(on: workQueue, timeoutMs: timeout,
                                       what: "compiling '\(package.path)'",
                                       dispose: { late in try? FileManager.default.removeItem(at: late) }) {
                try runtime.compile(packageAt: package)
            }
        } catch {
            throw bridgeError(error, status: .compile, context: "compile failed for '\(package.path)'")
        }
        // Only the caller's thread, after a successful wait, writes into dest_dir.
        do {
            try FileManager.default.moveItem(at: temp, to: target)
        } catch {
            try? FileManager.default.removeItem(at: temp)
            throw bridgeError(error, status: .compile, context: "could not move the compiled model to '\(target.path)'")
        }
        return target.path
    }

    /// Loads a compiled model; returns its handle id.
    public static func load(compiledPath: String, computeUnits: ComputeUnits, functionName: String? = nil,
                            timeoutMs: Int64, runtime: ModelRuntime = Runtimes.current) throws -> UInt {
        if let f = functionName, f.isEmpty { throw BridgeError.invalid("function_name is empty") }
        let timeout = try validateTimeout(timeoutMs)
        let url = try fileURL(compiledPath, what: "compiled_path")
        try requireExists(url, what: "compiled_path")
        // The model's own serial queue: the load runs there too, so the model
        // is only ever touched by this queue.
        let queue = DispatchQueue(label: "coreml-bridge.model.\(url.lastPathComponent)")
        let model: LoadedModel
        do {
            model = try runWithDeadline(on: queue, timeoutMs: timeout, what: "loading '\(url.path)'") {
                try runtime.load(compiledAt: url, computeUnits: computeUnits, functionName: functionName)
            }
        } catch {
            throw bridgeError(error, status: .load, context: "load failed for '\(url.path)'")
        }
        return handles.insert(ModelHandle(model: model, queue: queue))
    }

    static func lookup(_ id: UInt) throws -> ModelHandle {
        guard id != 0 else { throw BridgeError(.invalidHandle, "model handle is NULL") }
        guard let h = handles.lookup(id) else {
            throw BridgeError(.invalidHandle, String(format: "unknown model handle 0x%llx (never loaded, already freed, or not a handle)", UInt64(id)))
        }
        return h
    }

    public static func schemaJSON(handle id: UInt) throws -> String {
        try lookup(id).schema.json()
    }

    /// Runs one prediction on the handle's queue and waits with the deadline.
    public static func predict(handle id: UInt, inputs: [HostTensor], timeoutMs: Int64) throws -> [HostTensor] {
        let deadline = try CallDeadline(timeoutMs: timeoutMs)
        let h = try lookup(id)
        try h.checkNotPoisoned()
        try h.schema.validate(inputs)
        return try predict(h, inputs: inputs, deadline: deadline)
    }

    /// The prediction itself: inputs already validated and copied; waits
    /// for what is left of `deadline`. A timeout poisons the handle.
    static func predict(_ h: ModelHandle, inputs: [HostTensor], deadline: CallDeadline) throws -> [HostTensor] {
        try h.checkNotPoisoned()
        let left = try deadline.remainingMs("prediction")
        let model = h.model
        do {
            // The work item retains `model` and `inputs` (Swift-owned copies):
            // freeing the handle or returning to the caller cannot pull memory
            // from under a late prediction.
            return try runWithDeadline(on: h.queue, timeoutMs: left, what: "prediction") {
                try model.predict(inputs)
            }
        } catch let e as BridgeError where e.status == .timeout {
            h.poison("a prediction timed out after \(deadline.timeoutMs) ms")
            throw BridgeError(.timeout, "prediction did not finish within \(deadline.timeoutMs) ms; the model handle is now poisoned")
        } catch {
            throw bridgeError(error, status: .predict, context: "prediction failed")
        }
    }

    /// A batch on the handle's queue, waiting for what is left of
    /// `deadline`; inputs validated and copied. A timeout poisons the handle.
    static func predictBatch(_ h: ModelHandle, batch: [[HostTensor]], deadline: CallDeadline) throws -> [[HostTensor]] {
        try h.checkNotPoisoned()
        let left = try deadline.remainingMs("batch prediction")
        let model = h.model
        let results: [[HostTensor]]
        do {
            results = try runWithDeadline(on: h.queue, timeoutMs: left, what: "batch prediction") {
                try model.predictBatch(batch)
            }
        } catch let e as BridgeError where e.status == .timeout {
            h.poison("a batch prediction timed out after \(deadline.timeoutMs) ms")
            throw BridgeError(.timeout, "batch prediction of \(batch.count) members did not finish within \(deadline.timeoutMs) ms; the model handle is now poisoned")
        } catch {
            throw bridgeError(error, status: .predict, context: "batch prediction failed")
        }
        guard results.count == batch.count else {
            throw BridgeError(.internalError, "batch prediction returned \(results.count) results for \(batch.count) members")
        }
        return results
    }

    /// Feature values of any kind on the handle's queue, waiting for what
    /// is left of `deadline`; inputs validated and copied. A timeout
    /// poisons the handle.
    static func predictFeatures(_ h: ModelHandle, inputs: [NamedFeature], deadline: CallDeadline) throws -> [NamedFeature] {
        try h.checkNotPoisoned()
        let left = try deadline.remainingMs("prediction")
        let model = h.model
        do {
            return try runWithDeadline(on: h.queue, timeoutMs: left, what: "prediction") {
                try model.predictFeatures(inputs)
            }
        } catch let e as BridgeError where e.status == .timeout {
            h.poison("a prediction timed out after \(deadline.timeoutMs) ms")
            throw BridgeError(.timeout, "prediction did not finish within \(deadline.timeoutMs) ms; the model handle is now poisoned")
        } catch {
            throw bridgeError(error, status: .predict, context: "prediction failed")
        }
    }

    // MARK: State

    static func lookupState(_ id: UInt) throws -> StateHandle {
        guard id != 0 else { throw BridgeError(.invalidHandle, "model state is NULL") }
        guard let s = states.lookup(id) else {
            throw BridgeError(.invalidHandle, String(format: "unknown model state 0x%llx (never made, already freed, or not a state)", UInt64(id)))
        }
        return s
    }

    /// Makes a state for the model (Core ML: `makeState()`) on the handle's
    /// queue, under the deadline; returns its id. A late state is dropped.
    /// A timeout here does not poison the handle (no prediction ran).
    public static func makeState(handle id: UInt, timeoutMs: Int64) throws -> UInt {
        let deadline = try CallDeadline(timeoutMs: timeoutMs)
        let h = try lookup(id)
        try h.checkNotPoisoned()
        let model = h.model
        let state: AnyObject
        do {
            state = try runWithDeadline(on: h.queue, timeoutMs: try deadline.remainingMs("making a state"),
                                        what: "making a state") { try model.makeState() }
        } catch {
            throw bridgeError(error, status: .predict, context: "making a state failed")
        }
        return states.insert(StateHandle(owner: id, state: state))
    }

    /// Checks that `state` belongs to model handle `id` and takes it for
    /// this call (`.stateMismatch`, `.stateInUse`, `.poisoned` otherwise).
    static func takeState(_ s: StateHandle, stateID: UInt, for id: UInt) throws {
        guard s.owner == id else {
            throw BridgeError(.stateMismatch, String(format: "model state 0x%llx belongs to model handle 0x%llx, not to 0x%llx; make a state with this model", UInt64(stateID), UInt64(s.owner), UInt64(id)))
        }
        try s.acquire()
    }

    /// One prediction with a state: inputs validated and copied, the state
    /// taken by the caller. A timeout poisons the handle and the state.
    static func predict(_ h: ModelHandle, state s: StateHandle, inputs: [HostTensor],
                        deadline: CallDeadline) throws -> [HostTensor] {
        try h.checkNotPoisoned()
        let left = try deadline.remainingMs("prediction with a state")
        let model = h.model
        let state = s.state
        do {
            return try runWithDeadline(on: h.queue, timeoutMs: left, what: "prediction with a state") {
                try model.predict(inputs, state: state)
            }
        } catch let e as BridgeError where e.status == .timeout {
            h.poison("a prediction with a state timed out after \(deadline.timeoutMs) ms")
            s.poison("a prediction using it timed out after \(deadline.timeoutMs) ms")
            throw BridgeError(.timeout, "prediction with a state did not finish within \(deadline.timeoutMs) ms; the model handle and the state are now poisoned")
        } catch {
            throw bridgeError(error, status: .predict, context: "prediction with a state failed")
        }
    }

    public static func free(state id: UInt) {
        states.remove(id)
    }

    public static func free(handle id: UInt) {
        handles.remove(id)
    }

    public static func computePlanJSON(compiledPath: String, computeUnits: ComputeUnits, timeoutMs: Int64,
                                       runtime: ModelRuntime = Runtimes.current) throws -> String {
        let timeout = try validateTimeout(timeoutMs)
        let url = try fileURL(compiledPath, what: "compiled_path")
        try requireExists(url, what: "compiled_path")
        let plan: [String: Any]
        do {
            plan = try runWithDeadline(on: workQueue, timeoutMs: timeout, what: "compute plan of '\(url.path)'") {
                try runtime.computePlan(compiledAt: url, computeUnits: computeUnits)
            }
        } catch {
            throw bridgeError(error, status: .load, context: "compute plan failed for '\(url.path)'")
        }
        return try encodeJSON(plan)
    }

    public static func runtimeInfoJSON() throws -> String {
        try encodeJSON(Runtimes.platform.runtimeInfo().jsonObject)
    }
}

/// Counts devices in a compute plan's operation list (shared by runtimes).
func computePlanObject(modelType: String, operations: [[String: Any]]) -> [String: Any] {
    var counts: [String: Int] = ["cpu": 0, "gpu": 0, "neural_engine": 0, "unknown": 0]
    for op in operations {
        let d = (op["preferred_device"] as? String) ?? "unknown"
        counts[counts[d] == nil ? "unknown" : d, default: 0] += 1
    }
    return ["model_type": modelType, "operations": operations, "device_counts": counts]
}

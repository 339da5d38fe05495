import Foundation
import Dispatch

/// Runs the body inside an autorelease pool where one exists (Apple
/// platforms); a plain call elsewhere.
@inline(__always)
func withAutoreleasePool<T>(_ body: () throws -> T) rethrows -> T {
    #if canImport(ObjectiveC)
    return try autoreleasepool { try body() }
    #else
    return try body()
    #endif
}

/// Longest deadline the bridge accepts; larger timeouts are clamped to it.
let maxTimeoutMs: Int64 = 30 * 24 * 3600 * 1000

func validateTimeout(_ timeoutMs: Int64) throws -> Int64 {
    guard timeoutMs > 0 else {
        throw BridgeError.invalid("timeout_ms must be > 0 (got \(timeoutMs))")
    }
    return min(timeoutMs, maxTimeoutMs)
}

/// The deadline of one C call, started when its timeout is validated: the
/// copy of the caller's inputs and the queued work share it, so a call never
/// runs much past its timeout whatever part of it is slow.
public struct CallDeadline: Sendable {
    /// The caller's timeout (after clamping).
    public let timeoutMs: Int64
    let end: UInt64 // DispatchTime.uptimeNanoseconds

    /// Validates `timeoutMs` (see `validateTimeout`) and starts the clock.
    public init(timeoutMs: Int64) throws {
        let t = try validateTimeout(timeoutMs)
        self.timeoutMs = t
        let (e, o) = DispatchTime.now().uptimeNanoseconds.addingReportingOverflow(UInt64(t) * 1_000_000)
        end = o ? UInt64.max : e
    }

    public var expired: Bool { DispatchTime.now().uptimeNanoseconds >= end }

    /// Whole milliseconds left (rounded up, >= 1); throws `.timeout` naming
    /// `what` when none are.
    public func remainingMs(_ what: String) throws -> Int64 {
        let now = DispatchTime.now().uptimeNanoseconds
        guard end > now else {
            throw BridgeError(.timeout, "\(what) did not finish within \(timeoutMs) ms")
        }
        return Int64(min((end - now + 999_999) / 1_000_000, UInt64(maxTimeoutMs)))
    }
}

/// The hand-over point between a caller waiting with a deadline and a worker
/// on some queue. The worker owns everything it touches; the caller takes the
/// result only if it arrives before the deadline. After a timeout the slot is
/// abandoned: the worker's late result is refused and the worker disposes of
/// it (`complete` returns false), so nothing late ever reaches the caller.
public final class PendingResult<T>: @unchecked Sendable {
    private let lock = NSLock()
    private let semaphore = DispatchSemaphore(value: 0)
    private var result: Result<T, Error>?
    private var abandoned = false

    public init() {}

    /// True once the waiting caller gave up; a queued worker may skip its work.
    public var isAbandoned: Bool {
        lock.lock(); defer { lock.unlock() }
        return abandoned
    }

    /// Worker side. Returns false when the caller already gave up: the result
    /// was not delivered and the worker must dispose of it.
    @discardableResult
    public func complete(_ r: Result<T, Error>) -> Bool {
        lock.lock()
        if abandoned {
            lock.unlock()
            return false
        }
        result = r
        lock.unlock()
        semaphore.signal()
        return true
    }

    /// Caller side: waits until `timeoutMs` has passed. Returns nil on
    /// timeout (and abandons the slot), the worker's result otherwise.
    /// With `countsAsStuck`, an abandonment is counted in `StuckWork` (under
    /// this slot's lock, so the worker's `complete` sees it and uncounts it).
    public func wait(timeoutMs: Int64, countsAsStuck: Bool = false) -> Result<T, Error>? {
        let deadline = DispatchTime.now() + .milliseconds(Int(min(timeoutMs, maxTimeoutMs)))
        let waited = semaphore.wait(timeout: deadline)
        lock.lock(); defer { lock.unlock() }
        if let r = result { return r } // also covers a completion racing the deadline
        if waited == .timedOut {
            abandoned = true
            if countsAsStuck { StuckWork.enter() }
        }
        return result
    }
}

/// Work whose caller timed out but which has not returned yet: each one holds
/// a thread (a Core ML call cannot be interrupted). Past `limit` such calls
/// the bridge starts no new work and answers `.unavailable` instead, so a
/// model that never returns cannot make the process accumulate threads
/// without bound. The limit is `COREML_BRIDGE_MAX_STUCK` (default 8, 1...1024).
public enum StuckWork {
    private static let lock = NSLock()
    private static var count = 0
    private static var limitOverride: Int?

    /// The cap in force.
    public static var limit: Int {
        lock.lock(); defer { lock.unlock() }
        if let l = limitOverride { return l }
        return envLimit
    }

    private static let envLimit: Int = {
        if let s = ProcessInfo.processInfo.environment["COREML_BRIDGE_MAX_STUCK"], let v = Int(s), (1...1024).contains(v) {
            return v
        }
        return 8
    }()

    /// Calls abandoned by their caller and still running now.
    public static var current: Int {
        lock.lock(); defer { lock.unlock() }
        return count
    }

    /// For tests: sets (or with nil restores) the cap.
    public static func setLimitForTesting(_ l: Int?) {
        lock.lock(); limitOverride = l; lock.unlock()
    }

    /// Throws `.unavailable` when the cap is reached: called before any new
    /// work is queued.
    static func admit(_ what: String) throws {
        let (n, l) = (current, limit)
        if n >= l {
            throw BridgeError(.unavailable, "\(what) refused: \(n) earlier calls timed out and are still running (limit \(l), COREML_BRIDGE_MAX_STUCK); the bridge starts no new work until they return")
        }
    }

    static func enter() { lock.lock(); count += 1; lock.unlock() }
    static func leave() { lock.lock(); count -= 1; lock.unlock() }
}

/// Runs `work` on `queue` and waits for it with a deadline. `dispose` is
/// called (on the worker) with a successful value nobody will receive because
/// the caller timed out. Throws `BridgeError(.timeout)` on timeout, and
/// `.unavailable` without starting anything when `StuckWork.limit` calls
/// are already stuck.
func runWithDeadline<T>(on queue: DispatchQueue, timeoutMs: Int64, what: String,
                        dispose: @escaping (T) -> Void = { _ in },
                        _ work: @escaping () throws -> T) throws -> T {
    try StuckWork.admit(what)
    let pending = PendingResult<T>()
    queue.async {
        // An abandoned slot was counted as stuck by the caller (see wait):
        // the worker uncounts it once it is done with it, run or skipped.
        if pending.isAbandoned {
            StuckWork.leave()
            return
        }
        let r: Result<T, Error> = withAutoreleasePool { Result { try work() } }
        if !pending.complete(r) {
            if case .success(let value) = r { dispose(value) }
            StuckWork.leave()
        }
    }
    guard let r = pending.wait(timeoutMs: timeoutMs, countsAsStuck: true) else {
        throw BridgeError(.timeout, "\(what) did not finish within \(timeoutMs) ms")
    }
    return try r.get()
}

/// Calls an async API from synchronous code running on a dispatch queue
/// (never on a Swift concurrency thread): the calling thread blocks until
/// the task finishes. The bridge's own deadline sits around the caller.
func blockingAwait<T>(_ operation: @escaping () async throws -> T) throws -> T {
    let box = PendingResult<T>()
    Task.detached {
        do { box.complete(.success(try await operation())) } catch { box.complete(.failure(error)) }
    }
    // Effectively unbounded: the caller's deadline is enforced one level up.
    guard let r = box.wait(timeoutMs: maxTimeoutMs) else {
        throw BridgeError(.timeout, "async operation did not finish")
    }
    return try r.get()
}

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
    public func wait(timeoutMs: Int64) -> Result<T, Error>? {
        let deadline = DispatchTime.now() + .milliseconds(Int(min(timeoutMs, maxTimeoutMs)))
        let waited = semaphore.wait(timeout: deadline)
        lock.lock(); defer { lock.unlock() }
        if let r = result { return r } // also covers a completion racing the deadline
        if waited == .timedOut { abandoned = true }
        return result
    }
}

/// Runs `work` on `queue` and waits for it with a deadline. `dispose` is
/// called (on the worker) with a successful value nobody will receive because
/// the caller timed out. Throws `BridgeError(.timeout)` on timeout.
func runWithDeadline<T>(on queue: DispatchQueue, timeoutMs: Int64, what: String,
                        dispose: @escaping (T) -> Void = { _ in },
                        _ work: @escaping () throws -> T) throws -> T {
    let pending = PendingResult<T>()
    queue.async {
        if pending.isAbandoned { return }
        let r: Result<T, Error> = withAutoreleasePool { Result { try work() } }
        if !pending.complete(r), case .success(let value) = r {
            dispose(value)
        }
    }
    guard let r = pending.wait(timeoutMs: timeoutMs) else {
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

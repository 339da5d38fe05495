import Foundation

/// Opaque handles for the C ABI: integer identifiers in a locked table.
/// Identifiers are never reused, so a stale handle (already freed) or a
/// garbage value is simply not found: the caller gets an error, not a crash.
/// The table holds one strong reference per entry; queued work holds its
/// own, so removing an entry never frees an object that is still in use.
public final class HandleTable<T: AnyObject>: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [UInt: T] = [:]
    private var nextID: UInt
    private let step: UInt

    /// `base` makes handles recognisable and keeps small integers (0, 1, ...)
    /// from ever being valid.
    public init(base: UInt = 0x00C0_4E11_0000_0000, step: UInt = 16) {
        self.nextID = base
        self.step = step
    }

    public func insert(_ object: T) -> UInt {
        lock.lock(); defer { lock.unlock() }
        nextID &+= step
        if nextID == 0 { nextID &+= step } // never hand out NULL
        entries[nextID] = object
        return nextID
    }

    public func lookup(_ id: UInt) -> T? {
        lock.lock(); defer { lock.unlock() }
        return entries[id]
    }

    @discardableResult
    public func remove(_ id: UInt) -> T? {
        lock.lock(); defer { lock.unlock() }
        return entries.removeValue(forKey: id)
    }

    public var count: Int {
        lock.lock(); defer { lock.unlock() }
        return entries.count
    }
}

/// One loaded model behind a C handle: the model, its serial queue (every
/// prediction runs there, one at a time), its schema, and the poisoned flag.
public final class ModelHandle: @unchecked Sendable {
    public let model: LoadedModel
    public let queue: DispatchQueue
    public let schema: ModelSchema
    /// Staging buffers of `coreml_predict_into` and their counters.
    public let buffers = BufferPool()
    private let lock = NSLock()
    private var poisonReason: String?

    init(model: LoadedModel, queue: DispatchQueue) {
        self.model = model
        self.queue = queue
        self.schema = model.schema
    }

    public var isPoisoned: Bool {
        lock.lock(); defer { lock.unlock() }
        return poisonReason != nil
    }

    var poisonedBecause: String? {
        lock.lock(); defer { lock.unlock() }
        return poisonReason
    }

    /// Throws `.poisoned` once a prediction on this handle timed out.
    func checkNotPoisoned() throws {
        if let reason = poisonedBecause {
            throw BridgeError(.poisoned, "model handle is poisoned (\(reason)); free it and load the model again")
        }
    }

    func poison(_ reason: String) {
        lock.lock(); defer { lock.unlock() }
        if poisonReason == nil { poisonReason = reason }
    }
}

/// One model state behind a C handle (Core ML's `MLState`): the model
/// handle it belongs to, whether a call is using it, and the poisoned flag.
/// A state is used by one call at a time; a second call is refused with
/// `.stateInUse` instead of waiting (MLState is not safe to share).
public final class StateHandle: @unchecked Sendable {
    /// The id of the model handle that made it.
    public let owner: UInt
    let state: AnyObject
    private let lock = NSLock()
    private var inUse = false
    private var poisonReason: String?

    init(owner: UInt, state: AnyObject) {
        self.owner = owner
        self.state = state
    }

    /// Marks the state in use by the calling entry point; refuses a poisoned
    /// state or one another call is using. Pair with `release()`.
    func acquire() throws {
        lock.lock(); defer { lock.unlock() }
        if let reason = poisonReason {
            throw BridgeError(.poisoned, "model state is poisoned (\(reason)); free it and make a new state")
        }
        if inUse {
            throw BridgeError(.stateInUse, "model state is in use by another call; a state serves one call at a time")
        }
        inUse = true
    }

    func release() {
        lock.lock(); inUse = false; lock.unlock()
    }

    func poison(_ reason: String) {
        lock.lock(); defer { lock.unlock() }
        if poisonReason == nil { poisonReason = reason }
    }

    public var isPoisoned: Bool {
        lock.lock(); defer { lock.unlock() }
        return poisonReason != nil
    }
}

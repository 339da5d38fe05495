import Foundation

/// Mirrors `CoremlStatus` in coreml_bridge.h (a test checks every value
/// against the C constants).
public enum BridgeStatus: Int32, CaseIterable, Sendable {
    case ok = 0
    case invalidArgument = 1
    case compile = 2
    case load = 3
    case schemaMismatch = 4
    case predict = 5
    case timeout = 6
    case poisoned = 7
    case unavailable = 8
    case outOfMemory = 9
    case internalError = 10
    case invalidHandle = 11
    case unsupported = 12
    case stateInUse = 13
    case stateMismatch = 14
}

/// The one error type that crosses into the C layer: a status and a message.
public struct BridgeError: Error, CustomStringConvertible, Sendable {
    public let status: BridgeStatus
    public let message: String

    public init(_ status: BridgeStatus, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "\(status): \(message)" }

    static func invalid(_ message: String) -> BridgeError { BridgeError(.invalidArgument, message) }
}

/// `MLModelErrorDomain`; spelled out so the mapping also works where Core ML
/// does not exist.
let coreMLErrorDomain = "com.apple.CoreML"
/// The error domain of CoreMLShim (the declarations-only stand-in for Core ML
/// where it does not exist); kept in step with CoreMLShim.shimErrorDomain.
let coreMLShimErrorDomain = "CoreMLShim.Unavailable"
/// `MLModelError.Code.featureType`: an input did not match the model.
let coreMLFeatureTypeErrorCode = 1

/// Turns any error into a `BridgeError`: bridge errors pass through, every
/// other error (an `NSError` from Core ML, usually) becomes `status` with a
/// message carrying domain, code and the underlying chain.
func bridgeError(_ error: Error, status: BridgeStatus, context: String) -> BridgeError {
    if let b = error as? BridgeError { return b }
    let ns = error as NSError
    var mapped = status
    if ns.domain == coreMLShimErrorDomain { mapped = .unavailable }
    if status == .predict, ns.domain == coreMLErrorDomain, ns.code == coreMLFeatureTypeErrorCode {
        mapped = .schemaMismatch
    }
    return BridgeError(mapped, "\(context): \(describeErrorChain(error))")
}

/// "[domain code=N] description; caused by: [domain code=M] ..." following
/// `NSUnderlyingErrorKey` (and `NSMultipleUnderlyingErrorsKey`) up to a depth.
public func describeErrorChain(_ error: Error, maxDepth: Int = 8) -> String {
    var parts: [String] = []
    var current: NSError? = error as NSError
    var seen = Set<ObjectIdentifier>()
    var depth = 0
    while let e = current, depth < maxDepth {
        if !seen.insert(ObjectIdentifier(e)).inserted { parts.append("(cycle)"); break }
        parts.append(describeOne(e))
        current = underlying(of: e)
        depth += 1
    }
    if current != nil, depth == maxDepth { parts.append("(further underlying errors omitted)") }
    return parts.joined(separator: "; caused by: ")
}

private func describeOne(_ e: NSError) -> String {
    var text = e.localizedDescription
    if let reason = e.userInfo[NSLocalizedFailureReasonErrorKey] as? String,
       !reason.isEmpty, !text.contains(reason) {
        text += " (\(reason))"
    }
    if let debug = e.userInfo[NSDebugDescriptionErrorKey] as? String,
       !debug.isEmpty, !text.contains(debug) {
        text += " [\(debug)]"
    }
    return "[\(e.domain) code=\(e.code)] \(text)"
}

private func underlying(of e: NSError) -> NSError? {
    if let u = e.userInfo[NSUnderlyingErrorKey] as? NSError { return u }
    if let u = e.userInfo[NSUnderlyingErrorKey] as? Error { return u as NSError }
    if let many = e.userInfo["NSMultipleUnderlyingErrorsKey"] as? [Error], let first = many.first {
        return first as NSError
    }
    return nil
}

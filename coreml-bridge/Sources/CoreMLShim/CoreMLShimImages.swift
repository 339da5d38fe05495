// CoreMLShimImages — the CoreVideo and Core ML declarations behind image
// inputs (coreml_predict_images): the bridge makes a CVPixelBuffer, copies
// the caller's pixels into it and feeds it as MLFeatureValue(pixelBuffer:);
// the schema reads MLImageConstraint. Same rules as CoreMLShim.swift: every
// declaration mirrors the Swift signature of the Apple documentation page
// named in its comment (developer.apple.com/documentation/corevideo/... or
// .../coreml/...), nothing traps, and under canImport(CoreML) this file is
// empty. The CoreVideo functions and constants are checked against
// objc2-core-video (shim_map.py rows of kind "cfunc" and "cvalue").
#if !canImport(CoreML)
import Foundation

// MARK: CoreVideo types

/// `typealias OSType = FourCharCode` (MacTypes; UInt32).
public typealias OSType = UInt32
/// corevideo/cvreturn: `typealias CVReturn = Int32`
public typealias CVReturn = Int32
/// corevideo/cvoptionflags: `typealias CVOptionFlags = UInt64`
public typealias CVOptionFlags = UInt64

/// corevideo/cvbuffer: `class CVBuffer` (a Core Foundation type: opaque here,
/// and never made: CVPixelBufferCreate fails in the shim).
public final class CVBuffer {
    private init() {}
}

/// corevideo/cvimagebuffer: `typealias CVImageBuffer = CVBuffer`
public typealias CVImageBuffer = CVBuffer
/// corevideo/cvpixelbuffer: `typealias CVPixelBuffer = CVImageBuffer`
public typealias CVPixelBuffer = CVImageBuffer

/// corefoundation/cfallocator: `class CFAllocator` (opaque here)
public final class CFAllocator {
    private init() {}
}

/// corefoundation/cfdictionary: `class CFDictionary` (opaque here)
public final class CFDictionary {
    private init() {}
}

/// corevideo/cvpixelbufferlockflags: `struct CVPixelBufferLockFlags`
public struct CVPixelBufferLockFlags: OptionSet, Sendable {
    public let rawValue: CVOptionFlags
    public init(rawValue: CVOptionFlags) { self.rawValue = rawValue }
}

// MARK: CoreVideo constants (the values objc2-core-video carries)

/// corevideo/kcvreturnsuccess: `var kCVReturnSuccess: CVReturn { get }`
public let kCVReturnSuccess: CVReturn = 0
/// corevideo/kcvpixelformattype_32bgra: `var kCVPixelFormatType_32BGRA: OSType { get }`
public let kCVPixelFormatType_32BGRA: OSType = 0x4247_5241
/// corevideo/kcvpixelformattype_32argb: `var kCVPixelFormatType_32ARGB: OSType { get }`
public let kCVPixelFormatType_32ARGB: OSType = 0x0000_0020
/// corevideo/kcvpixelformattype_onecomponent8: `var kCVPixelFormatType_OneComponent8: OSType { get }`
public let kCVPixelFormatType_OneComponent8: OSType = 0x4C30_3038
/// corevideo/kcvpixelformattype_onecomponent16half: `var kCVPixelFormatType_OneComponent16Half: OSType { get }`
public let kCVPixelFormatType_OneComponent16Half: OSType = 0x4C30_3068

// MARK: CoreVideo functions

/// corevideo/cvpixelbuffercreate(_:_:_:_:_:_:):
/// `func CVPixelBufferCreate(_ allocator: CFAllocator?, _ width: Int, _ height: Int,
///                           _ pixelFormatType: OSType, _ pixelBufferAttributes: CFDictionary?,
///                           _ pixelBufferOut: UnsafeMutablePointer<CVPixelBuffer?>) -> CVReturn`
/// (The shim makes nothing: kCVReturnUnsupported, -6923.)
public func CVPixelBufferCreate(_ allocator: CFAllocator?, _ width: Int, _ height: Int,
                                _ pixelFormatType: OSType, _ pixelBufferAttributes: CFDictionary?,
                                _ pixelBufferOut: UnsafeMutablePointer<CVPixelBuffer?>) -> CVReturn {
    pixelBufferOut.pointee = nil
    return -6923
}

/// corevideo/cvpixelbufferlockbaseaddress(_:_:):
/// `func CVPixelBufferLockBaseAddress(_ pixelBuffer: CVPixelBuffer, _ lockFlags: CVPixelBufferLockFlags) -> CVReturn`
public func CVPixelBufferLockBaseAddress(_ pixelBuffer: CVPixelBuffer, _ lockFlags: CVPixelBufferLockFlags) -> CVReturn {
    -6923
}

/// corevideo/cvpixelbufferunlockbaseaddress(_:_:):
/// `func CVPixelBufferUnlockBaseAddress(_ pixelBuffer: CVPixelBuffer, _ unlockFlags: CVPixelBufferLockFlags) -> CVReturn`
public func CVPixelBufferUnlockBaseAddress(_ pixelBuffer: CVPixelBuffer, _ unlockFlags: CVPixelBufferLockFlags) -> CVReturn {
    -6923
}

/// corevideo/cvpixelbuffergetbaseaddress(_:):
/// `func CVPixelBufferGetBaseAddress(_ pixelBuffer: CVPixelBuffer) -> UnsafeMutableRawPointer?`
public func CVPixelBufferGetBaseAddress(_ pixelBuffer: CVPixelBuffer) -> UnsafeMutableRawPointer? {
    nil
}

/// corevideo/cvpixelbuffergetbytesperrow(_:):
/// `func CVPixelBufferGetBytesPerRow(_ pixelBuffer: CVPixelBuffer) -> Int`
public func CVPixelBufferGetBytesPerRow(_ pixelBuffer: CVPixelBuffer) -> Int {
    0
}

// MARK: Core ML image features

extension MLFeatureValue {
    /// mlfeaturevalue/init(pixelbuffer:): `convenience init(pixelBuffer value: CVPixelBuffer)`
    /// (no CVPixelBuffer can exist here; this value is .invalid)
    public convenience init(pixelBuffer value: CVPixelBuffer) {
        self.init(shimInvalid: ())
    }
}

extension MLFeatureDescription {
    /// mlfeaturedescription/imageconstraint: `var imageConstraint: MLImageConstraint? { get }`
    public var imageConstraint: MLImageConstraint? { nil }
}

/// mlimageconstraint: `class MLImageConstraint : NSObject`
open class MLImageConstraint: NSObject {
    /// mlimageconstraint/pixelswide: `var pixelsWide: Int { get }`
    open var pixelsWide: Int { 0 }
    /// mlimageconstraint/pixelshigh: `var pixelsHigh: Int { get }`
    open var pixelsHigh: Int { 0 }
    /// mlimageconstraint/pixelformattype: `var pixelFormatType: OSType { get }`
    open var pixelFormatType: OSType { 0 }
    /// mlimageconstraint/sizeconstraint: `var sizeConstraint: MLImageSizeConstraint { get }`
    open var sizeConstraint: MLImageSizeConstraint { MLImageSizeConstraint() }
}

/// mlimagesizeconstrainttype: `enum MLImageSizeConstraintType : Int, @unchecked Sendable`
public enum MLImageSizeConstraintType: Int {
    case unspecified = 0
    case enumerated = 2
    case range = 3
}

/// mlimagesizeconstraint: `class MLImageSizeConstraint : NSObject`
open class MLImageSizeConstraint: NSObject {
    /// mlimagesizeconstraint/type: `var type: MLImageSizeConstraintType { get }`
    open var type: MLImageSizeConstraintType { .unspecified }
    /// mlimagesizeconstraint/pixelswiderange: `var pixelsWideRange: NSRange { get }`
    open var pixelsWideRange: NSRange { NSRange(location: 0, length: 0) }
    /// mlimagesizeconstraint/pixelshighrange: `var pixelsHighRange: NSRange { get }`
    open var pixelsHighRange: NSRange { NSRange(location: 0, length: 0) }
    /// mlimagesizeconstraint/enumeratedimagesizes: `var enumeratedImageSizes: [MLImageSize] { get }`
    open var enumeratedImageSizes: [MLImageSize] { [] }
}

/// mlimagesize: `class MLImageSize : NSObject`
open class MLImageSize: NSObject {
    /// mlimagesize/pixelswide: `var pixelsWide: Int { get }`
    open var pixelsWide: Int { 0 }
    /// mlimagesize/pixelshigh: `var pixelsHigh: Int { get }`
    open var pixelsHigh: Int { 0 }
}
#endif

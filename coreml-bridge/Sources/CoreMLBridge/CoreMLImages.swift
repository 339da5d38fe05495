// The Core ML adapter's image side: an MLImageConstraint as the bridge's
// ImageSchema, and CVPixelBuffer-backed pixel storage for image inputs. Like
// CoreMLRuntime.swift it type-checks against CoreMLShim on Linux and has not
// been run anywhere in our CI (no Mac).
#if canImport(CoreML)
import CoreML
import CoreVideo
#else
import CoreMLShim
#endif
import Foundation

extension CoreMLRuntime {
    /// An image feature's constraint: default size, pixel format type and
    /// MLImageSizeConstraint (NSRange: lower = location, upper = location +
    /// length - 1 when the length is finite; Core ML still refuses what it
    /// does not take).
    static func imageSchema(_ c: MLImageConstraint) -> ImageSchema {
        let sc = c.sizeConstraint
        var sizes = ImageSizeConstraint.unspecified
        switch sc.type {
        case .enumerated:
            sizes = .enumerated(sc.enumeratedImageSizes.map { ImageSize(width: $0.pixelsWide, height: $0.pixelsHigh) })
        case .range:
            func dim(_ r: NSRange) -> DimRange {
                let unbounded = r.length >= Int(Int32.max) || r.location > Int.max - r.length
                return DimRange(lower: r.location, upper: unbounded ? nil : r.location + max(r.length, 1) - 1)
            }
            sizes = .range(width: dim(sc.pixelsWideRange), height: dim(sc.pixelsHighRange))
        default:
            break
        }
        return ImageSchema(width: c.pixelsWide, height: c.pixelsHigh, pixelFormat: c.pixelFormatType, sizes: sizes)
    }
}

/// A CVPixelBuffer made by the bridge (CVPixelBufferCreate) and locked for
/// writing until `finishWriting`; Core ML reads it through
/// MLFeatureValue(pixelBuffer:) and retains it as long as it needs it.
final class CVPixelStorage: PixelStorage, @unchecked Sendable {
    let buffer: CVPixelBuffer
    let width: Int
    let height: Int
    let pixelFormat: UInt32
    let bytesPerRow: Int
    let baseAddress: UnsafeMutableRawPointer
    private var locked = true

    init(width: Int, height: Int, pixelFormat: UInt32, bytesPerPixel: Int) throws {
        var out: CVPixelBuffer?
        let status = CVPixelBufferCreate(nil, width, height, OSType(pixelFormat), nil, &out)
        guard status == kCVReturnSuccess, let pb = out else {
            throw BridgeError(.outOfMemory, "CVPixelBufferCreate(\(width)x\(height), \(CVPixelFormat.name(pixelFormat))) failed with CVReturn \(status)")
        }
        guard CVPixelBufferLockBaseAddress(pb, []) == kCVReturnSuccess else {
            throw BridgeError(.internalError, "CVPixelBufferLockBaseAddress failed")
        }
        guard let base = CVPixelBufferGetBaseAddress(pb) else {
            _ = CVPixelBufferUnlockBaseAddress(pb, [])
            throw BridgeError(.internalError, "CVPixelBufferGetBaseAddress gave NULL")
        }
        let bpr = CVPixelBufferGetBytesPerRow(pb)
        guard let row = Strided.checkedMul(width, bytesPerPixel), bpr >= row else {
            _ = CVPixelBufferUnlockBaseAddress(pb, [])
            throw BridgeError(.internalError, "CVPixelBufferGetBytesPerRow gave \(bpr), less than a row of \(width) pixels")
        }
        buffer = pb
        self.width = width
        self.height = height
        self.pixelFormat = pixelFormat
        bytesPerRow = bpr
        baseAddress = base
    }

    func finishWriting() {
        guard locked else { return }
        locked = false
        _ = CVPixelBufferUnlockBaseAddress(buffer, [])
    }

    deinit { finishWriting() }
}

extension CoreMLLoadedModel {
    /// A CVPixelBuffer of the feature's pixel format (made on the caller's
    /// thread: CVPixelBufferCreate is thread-safe).
    func makePixelStorage(width: Int, height: Int, pixelFormat: UInt32, bytesPerPixel: Int) throws -> PixelStorage {
        try CVPixelStorage(width: width, height: height, pixelFormat: pixelFormat, bytesPerPixel: bytesPerPixel)
    }

    /// MLFeatureValue(pixelBuffer:) over the bridge's CVPixelBuffer.
    static func featureValue(_ image: HostImage) throws -> MLFeatureValue {
        guard let s = image.storage as? CVPixelStorage else {
            throw BridgeError(.internalError, "input '\(image.name)': pixels not in a CVPixelBuffer")
        }
        return MLFeatureValue(pixelBuffer: s.buffer)
    }
}

// Image inputs (coreml_predict_images): the caller's pixel descriptors, the
// image features of a model's schema, and the checked, deadline-bounded copy
// of the pixels into bridge-owned pixel storage (a CVPixelBuffer under Core
// ML, malloc'ed rows in the test runtime).
import CoreMLBridgeC
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// CoreVideo pixel format types (OSType raw values) Core ML takes for images.
public enum CVPixelFormat {
    /// kCVPixelFormatType_32BGRA ('BGRA').
    public static let bgra32: UInt32 = 0x4247_5241
    /// kCVPixelFormatType_32ARGB.
    public static let argb32: UInt32 = 0x0000_0020
    /// kCVPixelFormatType_OneComponent8 ('L008').
    public static let oneComponent8: UInt32 = 0x4C30_3038
    /// kCVPixelFormatType_OneComponent16Half ('L00h').
    public static let oneComponent16Half: UInt32 = 0x4C30_3068

    static func name(_ f: UInt32) -> String {
        switch f {
        case bgra32: return "32BGRA"
        case argb32: return "32ARGB"
        case oneComponent8: return "OneComponent8"
        case oneComponent16Half: return "OneComponent16Half"
        default: return String(format: "0x%08x", f)
        }
    }
}

/// The caller's pixel format (CoremlPixelFormat).
public enum PixelFormat: Int32, Sendable {
    case rgb8 = 1, bgr8 = 2, bgra8 = 3, argb8 = 4, gray8 = 5, grayF16 = 6

    public var bytesPerPixel: Int {
        switch self {
        case .rgb8, .bgr8: return 3
        case .bgra8, .argb8: return 4
        case .gray8: return 1
        case .grayF16: return 2
        }
    }

    public var name: String {
        switch self {
        case .rgb8: return "RGB8"
        case .bgr8: return "BGR8"
        case .bgra8: return "BGRA8"
        case .argb8: return "ARGB8"
        case .gray8: return "GRAY8"
        case .grayF16: return "GRAY_F16"
        }
    }

    /// The CoreVideo format the bridge stores it as: packed RGB and BGR
    /// become 32BGRA (Core ML takes no 24-bit format), the rest as they are.
    public var storedAs: UInt32 {
        switch self {
        case .rgb8, .bgr8, .bgra8: return CVPixelFormat.bgra32
        case .argb8: return CVPixelFormat.argb32
        case .gray8: return CVPixelFormat.oneComponent8
        case .grayF16: return CVPixelFormat.oneComponent16Half
        }
    }

    /// Bytes per pixel of the stored form.
    var storedBytesPerPixel: Int {
        switch self {
        case .rgb8, .bgr8, .bgra8, .argb8: return 4
        case .gray8: return 1
        case .grayF16: return 2
        }
    }
}

/// What an image feature's pixels are: Core ML only distinguishes color
/// (32BGRA / 32ARGB) from grayscale by its pixel format type; the test
/// runtime may say RGB or BGR.
public enum ImageColorLayout: String, Sendable {
    case color, rgb, bgr, grayscale
    case grayscaleF16 = "grayscale_f16"

    /// From MLImageConstraint.pixelFormatType.
    public init(pixelFormat: UInt32) {
        switch pixelFormat {
        case CVPixelFormat.oneComponent8: self = .grayscale
        case CVPixelFormat.oneComponent16Half: self = .grayscaleF16
        default: self = .color
        }
    }

    /// The caller's formats an image of this layout takes.
    public var accepted: [PixelFormat] {
        switch self {
        case .color, .rgb, .bgr: return [.rgb8, .bgr8, .bgra8, .argb8]
        case .grayscale: return [.gray8]
        case .grayscaleF16: return [.grayF16]
        }
    }
}

public struct ImageSize: Hashable, Sendable {
    public var width: Int
    public var height: Int
    public init(width: Int, height: Int) { self.width = width; self.height = height }
}

/// MLImageSizeConstraint: sizes besides the default.
public enum ImageSizeConstraint: Equatable, Sendable {
    case unspecified
    case enumerated([ImageSize])
    case range(width: DimRange, height: DimRange)
}

/// An image feature (MLImageConstraint): default size, pixel format and
/// the sizes it accepts.
public struct ImageSchema: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var pixelFormat: UInt32
    public var colorLayout: ImageColorLayout
    public var sizes: ImageSizeConstraint

    public init(width: Int, height: Int, pixelFormat: UInt32, colorLayout: ImageColorLayout? = nil,
                sizes: ImageSizeConstraint = .unspecified) {
        self.width = width
        self.height = height
        self.pixelFormat = pixelFormat
        self.colorLayout = colorLayout ?? ImageColorLayout(pixelFormat: pixelFormat)
        self.sizes = sizes
    }

    public func accepts(width w: Int, height h: Int) -> Bool {
        if w == width && h == height { return true }
        switch sizes {
        case .unspecified: return false
        case .enumerated(let list): return list.contains(ImageSize(width: w, height: h))
        case .range(let rw, let rh):
            func within(_ v: Int, _ r: DimRange) -> Bool { v >= r.lower && (r.upper.map { v <= $0 } ?? true) }
            return within(w, rw) && within(h, rh)
        }
    }

    var sizesDescription: String {
        switch sizes {
        case .unspecified: return "\(width)x\(height)"
        case .enumerated(let list):
            var all = [ImageSize(width: width, height: height)]
            for s in list where !all.contains(s) { all.append(s) }
            return "one of " + all.map { "\($0.width)x\($0.height)" }.joined(separator: ", ")
        case .range(let rw, let rh):
            func r(_ x: DimRange) -> String { "\(x.lower)...\(x.upper.map(String.init) ?? "inf")" }
            return "width \(r(rw)) and height \(r(rh)) (default \(width)x\(height))"
        }
    }

    var jsonObject: [String: Any] {
        func range(_ r: DimRange) -> [String: Any] { ["lower": r.lower, "upper": r.upper.map { $0 as Any } ?? NSNull()] }
        var c: [String: Any]
        switch sizes {
        case .unspecified: c = ["type": "unspecified"]
        case .enumerated(let list):
            c = ["type": "enumerated", "enumerated_sizes": list.map { ["width": $0.width, "height": $0.height] }]
        case .range(let rw, let rh):
            c = ["type": "range", "width_range": range(rw), "height_range": range(rh)]
        }
        return ["width": width, "height": height, "pixel_format": Int(pixelFormat),
                "color_layout": colorLayout.rawValue, "size_constraint": c]
    }
}

/// Bridge-owned pixels an image is copied into. Made on the caller's thread
/// (CVPixelBufferCreate and malloc are thread-safe), written once there,
/// then only read by the model's queue.
public protocol PixelStorage: AnyObject {
    var width: Int { get }
    var height: Int { get }
    /// CoreVideo OSType of the stored pixels.
    var pixelFormat: UInt32 { get }
    var bytesPerRow: Int { get }
    /// Writable while the storage is being filled (locked, for CoreVideo).
    var baseAddress: UnsafeMutableRawPointer { get }
    /// Ends writing (CVPixelBufferUnlockBaseAddress); called once, after the copy.
    func finishWriting()
}

/// Pixel rows in malloc'ed memory, zero-filled, each row padded to a
/// multiple of 64 bytes as CoreVideo pads its buffers, so stride handling
/// is exercised even where CoreVideo does not exist.
public final class HostPixels: PixelStorage, @unchecked Sendable {
    public let width: Int
    public let height: Int
    public let pixelFormat: UInt32
    public let bytesPerRow: Int
    public let baseAddress: UnsafeMutableRawPointer

    /// Fails (outOfMemory) when the size overflows or calloc fails.
    public init(width: Int, height: Int, pixelFormat: UInt32, bytesPerPixel: Int) throws {
        guard let row = Strided.checkedMul(width, bytesPerPixel), let padded = Strided.checkedAdd(row, 63),
              let total = Strided.checkedMul(padded & ~63, height), let p = calloc(max(total, 1), 1) else {
            throw BridgeError(.outOfMemory, "could not allocate a \(width)x\(height) pixel buffer")
        }
        self.width = width
        self.height = height
        self.pixelFormat = pixelFormat
        self.bytesPerRow = padded & ~63
        baseAddress = p
    }

    public func finishWriting() {}

    deinit { free(baseAddress) }
}

/// A bridge-owned image input, ready for a runtime.
public struct HostImage: @unchecked Sendable {
    public let name: String
    /// What the caller gave (the stored format is `storage.pixelFormat`).
    public let sourceFormat: PixelFormat
    public let storage: PixelStorage
}

/// A caller's image descriptor, checked, nothing copied yet.
struct ImageView {
    let name: String
    let format: PixelFormat
    let width: Int
    let height: Int
    let bytesPerRow: Int
    let data: UnsafeRawPointer
    /// Stored bytes the copy will take (rows padded to 64 bytes): for the byte cap.
    let storedBytes: Int
}

/// Reads the caller's image descriptors, checking every field with
/// overflow-checked arithmetic; nothing is allocated.
func readImageViews(_ images: UnsafePointer<CoremlImage>?, _ count: Int32) throws -> [ImageView] {
    guard count >= 0, count <= maxInputs else {
        throw BridgeError.invalid("n_images must be in 0...\(maxInputs) (got \(count))")
    }
    guard count > 0 else { return [] }
    guard let images = images else { throw BridgeError.invalid("images is NULL (n_images is \(count))") }
    var result: [ImageView] = []
    for i in 0..<Int(count) {
        let d = images[i]
        let name = try string(d.name, "image #\(i) name")
        let label = "image #\(i) '\(name)'"
        guard let format = PixelFormat(rawValue: d.pixel_format) else {
            throw BridgeError.invalid("\(label): unknown pixel_format \(d.pixel_format) (1 RGB8, 2 BGR8, 3 BGRA8, 4 ARGB8, 5 GRAY8, 6 GRAY_F16)")
        }
        guard d.width >= 1, d.height >= 1 else {
            throw BridgeError.invalid("\(label): width and height must be >= 1 (got \(d.width)x\(d.height))")
        }
        let w = Int(d.width), h = Int(d.height)
        guard let row = Strided.checkedMul(w, format.bytesPerPixel) else {
            throw BridgeError.invalid("\(label): a row of \(w) pixels overflows")
        }
        guard d.bytes_per_row >= Int64(row) else {
            throw BridgeError.invalid("\(label): bytes_per_row must be at least \(row) (\(w) \(format.name) pixels of \(format.bytesPerPixel) bytes); got \(d.bytes_per_row)")
        }
        guard d.bytes_per_row <= Int64(Int.max), let need = Strided.checkedMul(h - 1, Int(d.bytes_per_row))
            .flatMap({ Strided.checkedAdd($0, row) }) else {
            throw BridgeError.invalid("\(label): \(h) rows of \(d.bytes_per_row) bytes overflow")
        }
        guard d.byte_len >= UInt64(need) else {
            throw BridgeError.invalid("\(label): byte_len must be at least \(need) (\(h) rows of \(d.bytes_per_row) bytes, the last one \(row)); got \(d.byte_len)")
        }
        guard let data = d.data else { throw BridgeError.invalid("\(label): data is NULL") }
        guard let storedRow = Strided.checkedMul(w, format.storedBytesPerPixel).flatMap({ Strided.checkedAdd($0, 63) }),
              let stored = Strided.checkedMul(storedRow & ~63, h) else {
            throw BridgeError.invalid("\(label): a \(w)x\(h) image overflows")
        }
        result.append(ImageView(name: name, format: format, width: w, height: h, bytesPerRow: Int(d.bytes_per_row),
                                data: data, storedBytes: stored))
    }
    return result
}

extension ModelSchema {
    /// Checks images against the model's image features: the feature
    /// exists and is an image, the pixel format fits its color layout and
    /// the size is one it accepts.
    func validate(images: [ImageView]) throws {
        let byName = Dictionary(inputs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for v in images {
            guard let f = byName[v.name] else {
                throw BridgeError(.schemaMismatch, "input '\(v.name)' is not an input of the model (inputs: \(inputs.map { $0.name }))")
            }
            guard f.featureType == "image" else {
                throw BridgeError(.schemaMismatch, "input '\(v.name)' is a \(f.featureType) feature; got an image")
            }
            guard let spec = f.image else { continue } // an image feature without a constraint: Core ML decides
            let ok = spec.colorLayout.accepted
            guard ok.contains(v.format) else {
                throw BridgeError(.schemaMismatch, "input '\(v.name)' is a \(spec.colorLayout.rawValue) image (\(CVPixelFormat.name(spec.pixelFormat))) taking \(ok.map { $0.name }.joined(separator: ", ")) pixels; got \(v.format.name)")
            }
            guard spec.accepts(width: v.width, height: v.height) else {
                throw BridgeError(.schemaMismatch, "input '\(v.name)' is \(v.width)x\(v.height); the model accepts \(spec.sizesDescription)")
            }
        }
    }
}

/// Copies (and for RGB8 / BGR8 converts to 32BGRA) one image into
/// `storage`, row by row through both strides, checking the deadline every
/// 64 rows. Sizes were checked by `readImageViews`; the storage's are
/// checked here before the first byte moves.
func copyImage(_ v: ImageView, into storage: PixelStorage, deadline: CallDeadline) throws -> HostImage {
    defer { storage.finishWriting() }
    let srcRow = v.width * v.format.bytesPerPixel
    let dstRow = v.width * v.format.storedBytesPerPixel
    guard storage.width == v.width, storage.height == v.height, storage.pixelFormat == v.format.storedAs,
          storage.bytesPerRow >= dstRow else {
        throw BridgeError(.internalError, "input '\(v.name)': pixel storage is \(storage.width)x\(storage.height) \(CVPixelFormat.name(storage.pixelFormat)) with \(storage.bytesPerRow) bytes per row; needed \(v.width)x\(v.height) \(CVPixelFormat.name(v.format.storedAs)) with \(dstRow)")
    }
    for y in 0..<v.height {
        if y % 64 == 0 && deadline.expired {
            throw BridgeError(.timeout, "copying image '\(v.name)' (\(v.width)x\(v.height)) did not finish within \(deadline.timeoutMs) ms; nothing ran")
        }
        let src = (v.data + y * v.bytesPerRow).assumingMemoryBound(to: UInt8.self)
        let dst = (storage.baseAddress + y * storage.bytesPerRow).assumingMemoryBound(to: UInt8.self)
        switch v.format {
        case .rgb8:
            for x in 0..<v.width {
                dst[4 * x] = src[3 * x + 2]
                dst[4 * x + 1] = src[3 * x + 1]
                dst[4 * x + 2] = src[3 * x]
                dst[4 * x + 3] = 255
            }
        case .bgr8:
            for x in 0..<v.width {
                dst[4 * x] = src[3 * x]
                dst[4 * x + 1] = src[3 * x + 1]
                dst[4 * x + 2] = src[3 * x + 2]
                dst[4 * x + 3] = 255
            }
        case .bgra8, .argb8, .gray8, .grayF16:
            memcpy(dst, src, srcRow)
        }
    }
    return HostImage(name: v.name, sourceFormat: v.format, storage: storage)
}

/// Reads, checks (descriptors, schema, byte cap) and copies feature and
/// image inputs, in that order: nothing is copied before all are checked.
func readAndCopyFeaturesAndImages(_ inputs: UnsafePointer<CoremlFeature>?, _ nInputs: Int32,
                                  _ images: UnsafePointer<CoremlImage>?, _ nImages: Int32,
                                  model: LoadedModel, schema: ModelSchema,
                                  deadline: CallDeadline) throws -> [NamedFeature] {
    guard nInputs >= 0 else { throw BridgeError.invalid("n_inputs must be >= 0 (got \(nInputs))") }
    let views = nInputs > 0 ? try readFeatureViews(inputs, nInputs) : []
    let imageViews = try readImageViews(images, nImages)
    guard views.count + imageViews.count >= 1 else {
        throw BridgeError.invalid("no inputs: n_inputs and n_images are both 0")
    }
    let featureNames = Set(views.map { $0.name })
    if let dup = imageViews.map({ $0.name }).first(where: { featureNames.contains($0) }) {
        throw BridgeError.invalid("image '\(dup)': duplicate name (also in inputs)")
    }
    if Set(imageViews.map { $0.name }).count != imageViews.count {
        throw BridgeError.invalid("images: duplicate name")
    }
    try schema.validate(features: featureSignatures(views) + imageViews.map { ($0.name, "image", nil) })
    try schema.validate(images: imageViews)
    let tensorViews = views.compactMap { v -> InputView? in
        if case .tensor(let t) = v.view { return t }
        return nil
    }
    try checkInputBytes(tensorViews)
    var total = tensorViews.reduce(0) { $0 + $1.byteCount } // within the cap: checked just above
    for i in imageViews {
        guard let t = Strided.checkedAdd(total, i.storedBytes), t <= maxInputBytes else {
            throw BridgeError(.outOfMemory, "the inputs need more than \(maxInputBytes) bytes of copies (image '\(i.name)': \(i.width)x\(i.height) = \(i.storedBytes) bytes; COREML_BRIDGE_MAX_INPUT_BYTES raises the cap)")
        }
        total = t
    }
    var result = try copyFeatureViews(views, deadline: deadline)
    for v in imageViews {
        let storage = try model.makePixelStorage(width: v.width, height: v.height, pixelFormat: v.format.storedAs,
                                                 bytesPerPixel: v.format.storedBytesPerPixel)
        result.append(NamedFeature(name: v.name, value: .image(try copyImage(v, into: storage, deadline: deadline))))
    }
    return result
}

@_cdecl("coreml_predict_images")
public func coreml_predict_images(_ handle: UnsafeMutableRawPointer?,
                                  _ inputs: UnsafePointer<CoremlFeature>?,
                                  _ nInputs: Int32,
                                  _ images: UnsafePointer<CoremlImage>?,
                                  _ nImages: Int32,
                                  _ timeoutMs: Int64,
                                  _ outOutputs: UnsafeMutablePointer<UnsafeMutablePointer<CoremlFeatureOutputs>?>?,
                                  _ outErr: CStringOut?) -> Int32 {
    cEntry(outErr) {
        outOutputs?.pointee = nil
        let out = try requireOut(outOutputs, "out_outputs")
        let deadline = try CallDeadline(timeoutMs: timeoutMs)
        let h = try Bridge.lookup(handleID(handle))
        try h.checkNotPoisoned()
        let features = try readAndCopyFeaturesAndImages(inputs, nInputs, images, nImages, model: h.model,
                                                        schema: h.schema, deadline: deadline)
        let results = try Bridge.predictFeatures(h, inputs: features, deadline: deadline)
        out.pointee = try makeFeatureOutputs(results)
    }
}

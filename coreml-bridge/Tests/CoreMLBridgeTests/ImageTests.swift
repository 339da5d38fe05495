import XCTest
import Foundation
import CoreMLBridgeC
@testable import CoreMLBridge

/// An image input in C memory, owned by the test.
final class CImage {
    let name: UnsafeMutablePointer<CChar>
    let data: UnsafeMutableRawPointer?
    var image: CoremlImage

    init(_ name: String, format: Int32, width: Int32, height: Int32, bytesPerRow: Int64, bytes: [UInt8],
         byteLen: UInt64? = nil, nullData: Bool = false) {
        self.name = strdup(name)!
        if nullData {
            data = nil
        } else {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
            bytes.withUnsafeBytes { if let b = $0.baseAddress { p.copyMemory(from: b, byteCount: bytes.count) } }
            data = p
        }
        image = CoremlImage(name: UnsafePointer(self.name), pixel_format: format, width: width, height: height,
                            bytes_per_row: bytesPerRow, data: data.map { UnsafeRawPointer($0) },
                            byte_len: byteLen ?? UInt64(bytes.count))
    }

    deinit {
        free(name)
        data?.deallocate()
    }
}

/// The fake image model's outputs.
struct ImageOut {
    var pixels: [Int32] = []
    var shape: [Int64] = []
    var format: Int64 = 0
}

/// coreml_predict_images through C; copies the outputs and frees them.
func cPredictImages(_ h: UnsafeMutableRawPointer?, _ features: [CFeature] = [], _ images: [CImage],
                    timeoutMs: Int64 = 5000) -> (Int32, ImageOut, String?) {
    var outs: UnsafeMutablePointer<CoremlFeatureOutputs>?
    var err: UnsafeMutablePointer<CChar>?
    let fd = features.map { $0.feature }
    let id = images.map { $0.image }
    let st = fd.withUnsafeBufferPointer { f in
        id.withUnsafeBufferPointer { i in
            CoreMLBridgeC.coreml_predict_images(h, features.isEmpty ? nil : f.baseAddress, Int32(features.count),
                                                images.isEmpty ? nil : i.baseAddress, Int32(images.count),
                                                timeoutMs, &outs, &err)
        }
    }
    var result = ImageOut()
    if let o = outs {
        for k in 0..<Int(o.pointee.count) {
            let f = o.pointee.features[k]
            switch String(cString: f.name) {
            case "pixels":
                let n = Int(f.tensor.byte_len) / 4
                result.pixels = Array(UnsafeBufferPointer(start: f.tensor.data.assumingMemoryBound(to: Int32.self), count: n))
                result.shape = Array(UnsafeBufferPointer(start: f.tensor.shape, count: Int(f.tensor.rank)))
            case "pixel_format": result.format = f.int64_value
            default: break
            }
        }
        CoreMLBridgeC.coreml_free_feature_outputs(o)
    }
    withExtendedLifetime((features, images)) {}
    return (st, result, C.takeString(err))
}

let rgb8 = Int32(COREML_PIXEL_RGB8.rawValue)
let bgr8 = Int32(COREML_PIXEL_BGR8.rawValue)
let bgra8 = Int32(COREML_PIXEL_BGRA8.rawValue)
let argb8 = Int32(COREML_PIXEL_ARGB8.rawValue)
let gray8 = Int32(COREML_PIXEL_GRAY8.rawValue)

/// Image inputs (coreml_predict_images) against the test runtime's image model.
final class ImageTests: BridgeTestCase {
    /// A 4x3 RGB image whose pixel (x, y) is (10y + x, 100 + x, 200 + y), rows padded to `stride`.
    func rgbImage(stride: Int) -> [UInt8] {
        var b = [UInt8](repeating: 0xEE, count: stride * 3)
        for y in 0..<3 {
            for x in 0..<4 {
                b[y * stride + 3 * x] = UInt8(10 * y + x)
                b[y * stride + 3 * x + 1] = UInt8(100 + x)
                b[y * stride + 3 * x + 2] = UInt8(200 + y)
            }
        }
        return b
    }

    /// The same pixels as 32BGRA with alpha 255, packed.
    func expectedBGRA() -> [Int32] {
        var e: [Int32] = []
        for y in 0..<3 { for x in 0..<4 { e += [Int32(200 + y), Int32(100 + x), Int32(10 * y + x), 255] } }
        return e
    }

    func testRGBWithPaddedRowsBecomes32BGRA() {
        let h = loaded("image")
        defer { C.free(h) }
        let img = CImage("image", format: rgb8, width: 4, height: 3, bytesPerRow: 16, bytes: rgbImage(stride: 16))
        let (st, out, err) = cPredictImages(h, [], [img])
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(out.shape, [3, 4, 4])
        XCTAssertEqual(out.pixels, expectedBGRA())
        XCTAssertEqual(out.format, 0x4247_5241) // kCVPixelFormatType_32BGRA
    }

    func testBGRAndBGRAAndARGBKeepTheirBytes() {
        let h = loaded("image")
        defer { C.free(h) }
        // BGR -> BGRA: the same bytes as the RGB case reordered by the caller.
        var bgr = [UInt8](repeating: 0, count: 36)
        var bgra = [UInt8](repeating: 0, count: 48 + 48) // stride 32
        for y in 0..<3 {
            for x in 0..<4 {
                let (r, g, b) = (UInt8(10 * y + x), UInt8(100 + x), UInt8(200 + y))
                bgr[y * 12 + 3 * x] = b; bgr[y * 12 + 3 * x + 1] = g; bgr[y * 12 + 3 * x + 2] = r
                bgra[y * 32 + 4 * x] = b; bgra[y * 32 + 4 * x + 1] = g; bgra[y * 32 + 4 * x + 2] = r; bgra[y * 32 + 4 * x + 3] = 255
            }
        }
        let a = cPredictImages(h, [], [CImage("image", format: bgr8, width: 4, height: 3, bytesPerRow: 12, bytes: bgr)])
        XCTAssertEqual(a.0, OK, a.2 ?? "")
        XCTAssertEqual(a.1.pixels, expectedBGRA())
        let b = cPredictImages(h, [], [CImage("image", format: bgra8, width: 4, height: 3, bytesPerRow: 32, bytes: bgra)])
        XCTAssertEqual(b.0, OK, b.2 ?? "")
        XCTAssertEqual(b.1.pixels, expectedBGRA())
        let argb: [UInt8] = (0..<48).map { UInt8($0) }
        let c = cPredictImages(h, [], [CImage("image", format: argb8, width: 4, height: 3, bytesPerRow: 16, bytes: argb)])
        XCTAssertEqual(c.0, OK, c.2 ?? "")
        XCTAssertEqual(c.1.pixels, (0..<48).map { Int32($0) })
        XCTAssertEqual(c.1.format, 0x20) // kCVPixelFormatType_32ARGB
    }

    func testGrayscaleFeatureTakesGray8Only() {
        let json = #"{"behavior": "image", "inputs": [{"name": "image", "feature_type": "image", "image": {"width": 2, "height": 2, "color_layout": "grayscale"}}]}"#
        let h = loaded("gray", json)
        defer { C.free(h) }
        let (st, out, err) = cPredictImages(h, [], [CImage("image", format: gray8, width: 2, height: 2, bytesPerRow: 3, bytes: [1, 2, 99, 3, 4])])
        XCTAssertEqual(st, OK, err ?? "")
        XCTAssertEqual(out.pixels, [1, 2, 3, 4])
        XCTAssertEqual(out.format, 0x4C30_3038)
        let bad = cPredictImages(h, [], [CImage("image", format: rgb8, width: 2, height: 2, bytesPerRow: 6, bytes: [UInt8](repeating: 0, count: 12))])
        XCTAssertEqual(bad.0, code(COREML_ERR_SCHEMA_MISMATCH))
        XCTAssertTrue(bad.2?.contains("grayscale") == true && bad.2?.contains("GRAY8") == true && bad.2?.contains("got RGB8") == true, bad.2 ?? "")
    }

    func testSchemaDescribesImagesAndTheirSizes() {
        let json = #"{"behavior": "image", "inputs": [{"name": "image", "feature_type": "image", "image": {"width": 4, "height": 3, "color_layout": "bgr", "enumerated_sizes": [[8, 6]]}}]}"#
        let h = loaded("sizes", json)
        defer { C.free(h) }
        let inputs = C.schema(h).1?["inputs"] as? [[String: Any]]
        let image = inputs?.first?["image"] as? [String: Any]
        XCTAssertEqual(inputs?.first?["feature_type"] as? String, "image")
        XCTAssertEqual(image?["width"] as? Int, 4)
        XCTAssertEqual(image?["height"] as? Int, 3)
        XCTAssertEqual(image?["color_layout"] as? String, "bgr")
        XCTAssertEqual(image?["pixel_format"] as? Int, 0x4247_5241)
        let sc = image?["size_constraint"] as? [String: Any]
        XCTAssertEqual(sc?["type"] as? String, "enumerated")
        XCTAssertEqual((sc?["enumerated_sizes"] as? [[String: Int]])?.first, ["width": 8, "height": 6])
        // 8x6 is allowed, 5x5 is not.
        let ok = cPredictImages(h, [], [CImage("image", format: bgr8, width: 8, height: 6, bytesPerRow: 24, bytes: [UInt8](repeating: 7, count: 144))])
        XCTAssertEqual(ok.0, OK, ok.2 ?? "")
        XCTAssertEqual(ok.1.shape, [6, 8, 4])
        let bad = cPredictImages(h, [], [CImage("image", format: bgr8, width: 5, height: 5, bytesPerRow: 15, bytes: [UInt8](repeating: 7, count: 75))])
        XCTAssertEqual(bad.0, code(COREML_ERR_SCHEMA_MISMATCH))
        XCTAssertTrue(bad.2?.contains("5x5") == true && bad.2?.contains("one of 4x3, 8x6") == true, bad.2 ?? "")
    }

    func testRangeSizes() {
        let json = #"{"behavior": "image", "inputs": [{"name": "image", "feature_type": "image", "image": {"width": 4, "height": 3, "width_range": {"lower": 2, "upper": 8}, "height_range": {"lower": 1, "upper": null}}}]}"#
        let h = loaded("range", json)
        defer { C.free(h) }
        let ok = cPredictImages(h, [], [CImage("image", format: bgra8, width: 2, height: 9, bytesPerRow: 8, bytes: [UInt8](repeating: 1, count: 72))])
        XCTAssertEqual(ok.0, OK, ok.2 ?? "")
        let bad = cPredictImages(h, [], [CImage("image", format: bgra8, width: 9, height: 2, bytesPerRow: 36, bytes: [UInt8](repeating: 1, count: 72))])
        XCTAssertEqual(bad.0, code(COREML_ERR_SCHEMA_MISMATCH), bad.2 ?? "")
    }

    func testBadDescriptorsAreRefusedNamingWhatWasExpected() {
        let h = loaded("image")
        defer { C.free(h) }
        func check(_ img: CImage, _ status: CoremlStatus, _ words: [String], line: UInt = #line) {
            let (st, _, err) = cPredictImages(h, [], [img])
            XCTAssertEqual(st, code(status), err ?? "", line: line)
            for w in words { XCTAssertTrue(err?.contains(w) == true, "\(w) not in \(err ?? "nil")", line: line) }
        }
        let px = rgbImage(stride: 12)
        check(CImage("image", format: 9, width: 4, height: 3, bytesPerRow: 12, bytes: px), COREML_ERR_INVALID_ARGUMENT, ["unknown pixel_format 9"])
        check(CImage("image", format: rgb8, width: 0, height: 3, bytesPerRow: 12, bytes: px), COREML_ERR_INVALID_ARGUMENT, [">= 1", "0x3"])
        check(CImage("image", format: rgb8, width: 4, height: 3, bytesPerRow: 11, bytes: px), COREML_ERR_INVALID_ARGUMENT, ["at least 12", "got 11"])
        check(CImage("image", format: rgb8, width: 4, height: 3, bytesPerRow: 12, bytes: px, byteLen: 35), COREML_ERR_INVALID_ARGUMENT, ["at least 36", "got 35"])
        check(CImage("image", format: rgb8, width: 4, height: 3, bytesPerRow: 12, bytes: px, nullData: true), COREML_ERR_INVALID_ARGUMENT, ["data is NULL"])
        check(CImage("image", format: rgb8, width: 4, height: 3, bytesPerRow: Int64.max, bytes: px), COREML_ERR_INVALID_ARGUMENT, ["overflow"])
        check(CImage("image", format: rgb8, width: Int32.max, height: Int32.max, bytesPerRow: Int64(Int32.max) * 3, bytes: px), COREML_ERR_INVALID_ARGUMENT, ["overflow"])
        check(CImage("image", format: rgb8, width: 65536, height: 65536, bytesPerRow: 196_608, bytes: px), COREML_ERR_INVALID_ARGUMENT, ["byte_len must be at least 12884901888", "got 36"])
        check(CImage("image", format: rgb8, width: 5, height: 3, bytesPerRow: 15, bytes: [UInt8](repeating: 0, count: 45)), COREML_ERR_SCHEMA_MISMATCH, ["5x3", "4x3"])
        check(CImage("nope", format: rgb8, width: 4, height: 3, bytesPerRow: 12, bytes: px), COREML_ERR_SCHEMA_MISMATCH, ["not an input"])
        check(CImage("image", format: gray8, width: 4, height: 3, bytesPerRow: 4, bytes: [UInt8](repeating: 0, count: 12)), COREML_ERR_SCHEMA_MISMATCH, ["got GRAY8"])
    }

    func testAnImageForATensorInputAndATensorForAnImageAreRefused() {
        let h = loaded("identity")
        defer { C.free(h) }
        let img = CImage("x", format: rgb8, width: 4, height: 3, bytesPerRow: 12, bytes: rgbImage(stride: 12))
        let (st, _, err) = cPredictImages(h, [], [img])
        XCTAssertEqual(st, code(COREML_ERR_SCHEMA_MISMATCH))
        XCTAssertTrue(err?.contains("got a image value") == true || err?.contains("got an image") == true, err ?? "")
        let hi = loaded("image")
        defer { C.free(hi) }
        let t = CFeature("image", tensor: CInput("image", dtype: .f32, shape: [1], bytes: bytes([Float(1)])))
        let r = cPredictImages(hi, [t], [])
        XCTAssertEqual(r.0, code(COREML_ERR_SCHEMA_MISMATCH))
        XCTAssertTrue(r.2?.contains("image feature") == true, r.2 ?? "")
    }

    func testArgumentsAndDuplicates() {
        let h = loaded("image")
        defer { C.free(h) }
        let img = CImage("image", format: rgb8, width: 4, height: 3, bytesPerRow: 12, bytes: rgbImage(stride: 12))
        XCTAssertEqual(cPredictImages(h, [], []).0, code(COREML_ERR_INVALID_ARGUMENT))
        XCTAssertEqual(cPredictImages(h, [], [img, img]).0, code(COREML_ERR_INVALID_ARGUMENT))
        var err: UnsafeMutablePointer<CChar>?
        var outs: UnsafeMutablePointer<CoremlFeatureOutputs>?
        XCTAssertEqual(CoreMLBridgeC.coreml_predict_images(h, nil, 0, nil, 1, 5000, &outs, &err), code(COREML_ERR_INVALID_ARGUMENT))
        XCTAssertTrue(C.takeString(err)?.contains("images is NULL") == true)
        XCTAssertEqual(CoreMLBridgeC.coreml_predict_images(h, nil, -1, nil, 0, 5000, &outs, &err), code(COREML_ERR_INVALID_ARGUMENT))
        _ = C.takeString(err)
        XCTAssertEqual(CoreMLBridgeC.coreml_predict_images(nil, nil, 0, nil, 0, 5000, &outs, &err), code(COREML_ERR_INVALID_HANDLE))
        _ = C.takeString(err)
        XCTAssertNil(outs)
    }

    /// The copy checks the call's deadline: past it, `.timeout` naming the image, and nothing ran.
    func testTheCopyStopsAtTheDeadline() throws {
        let bytes = [UInt8](repeating: 5, count: 12 * 3)
        try bytes.withUnsafeBytes { raw in
            let view = ImageView(name: "image", format: .rgb8, width: 4, height: 3, bytesPerRow: 12,
                                 data: raw.baseAddress!, storedBytes: 3 * 64)
            let storage = try HostPixels(width: 4, height: 3, pixelFormat: CVPixelFormat.bgra32, bytesPerPixel: 4)
            XCTAssertEqual(storage.bytesPerRow, 64, "rows padded to 64 bytes, as CoreVideo pads them")
            let deadline = try CallDeadline(timeoutMs: 1)
            usleep(5000)
            XCTAssertThrowsError(try copyImage(view, into: storage, deadline: deadline)) { e in
                XCTAssertEqual((e as? BridgeError)?.status, .timeout)
                XCTAssertTrue((e as? BridgeError)?.message.contains("copying image 'image'") == true, "\(e)")
            }
            let ok = try copyImage(view, into: storage, deadline: try CallDeadline(timeoutMs: 5000))
            XCTAssertEqual(ok.storage.baseAddress.load(fromByteOffset: 64, as: UInt32.self), 0xFF05_0505)
        }
    }

    func testASlowImageModelTimesOutAndPoisons() {
        let h = loaded("slow", #"{"behavior": "image", "sleep_ms": 400}"#)
        defer { C.free(h) }
        let img = CImage("image", format: rgb8, width: 4, height: 3, bytesPerRow: 12, bytes: rgbImage(stride: 12))
        XCTAssertEqual(cPredictImages(h, [], [img], timeoutMs: 50).0, code(COREML_ERR_TIMEOUT))
        XCTAssertEqual(cPredictImages(h, [], [img]).0, code(COREML_ERR_POISONED))
    }
}

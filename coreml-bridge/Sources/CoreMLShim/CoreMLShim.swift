// CoreMLShim — a declarations-only mirror of the part of Apple's Core ML API
// that CoreMLBridge's Core ML adapter (CoreMLRuntime.swift) calls. It exists
// so the adapter TYPE-CHECKS where CoreML.framework does not exist (Linux):
// a typo, a wrong optional or a wrong argument label fails our Linux build.
//
// Rules:
// - Every declaration mirrors the Swift signature (names, labels, optionality,
//   throws/async, availability) of the Apple documentation page named in its
//   comment (developer.apple.com/documentation/coreml/...). Add a declaration
//   here only together with a call in the adapter, and copy its signature
//   from that page.
// - Nothing here ever traps: whatever can throw throws an "unavailable"
//   NSError (domain shimErrorDomain); the rest returns empty values. Objects
//   that Core ML would create (MLModel, MLMultiArray, MLComputePlan) cannot
//   be created at all, because their initialisers throw.
// - Under canImport(CoreML) this file is empty: Apple platforms use the real
//   framework. So is every other file of this directory (the check below
//   reads them all and fails one that is not guarded so).
// - `make test` checks every declaration against Apple's SDK without a Mac
//   (scripts/swift/shim_check.py): each needs a row in scripts/swift/
//   shim_map.py naming its Objective-C declaration (class, selector, enum
//   case); the objc2-core-ml crate, generated from the SDK headers, must have
//   it with the same instance/class kind, optionality of the result and of
//   each parameter (nullability), raw value, `throws`
//   (selector ends in `error:`), `async` (completion handler) and setter; its
//   `@available` must equal Apple's API_AVAILABLE as shim_map.AVAIL records
//   it. A new declaration without a row fails the build: add the row with
//   the declaration (a row in PENDING already serves).
#if !canImport(CoreML)
import Foundation

public let shimErrorDomain = "CoreMLShim.Unavailable"

func unavailable(_ what: String) -> NSError {
    NSError(domain: shimErrorDomain, code: 1, userInfo: [
        NSLocalizedDescriptionKey: "Core ML is not available on this platform: \(what) is a CoreMLShim declaration without an implementation",
    ])
}

// MARK: Configuration

/// mlcomputeunits: `enum MLComputeUnits : Int, @unchecked Sendable`
public enum MLComputeUnits: Int {
    case cpuOnly = 0
    case cpuAndGPU = 1
    case all = 2
    /// mlcomputeunits/cpuandneuralengine
    @available(macOS 13.0, iOS 16.0, tvOS 16.0, watchOS 9.0, *)
    case cpuAndNeuralEngine = 3
}

/// mlmodelconfiguration: `class MLModelConfiguration : NSObject`
open class MLModelConfiguration: NSObject {
    /// mlmodelconfiguration/computeunits: `var computeUnits: MLComputeUnits`
    open var computeUnits: MLComputeUnits = .all
    public override init() { super.init() }
}

// MARK: Model

/// mlmodel: `class MLModel : NSObject`
open class MLModel: NSObject {
    /// mlmodel/init(contentsof:configuration:):
    /// `convenience init(contentsOf url: URL, configuration: MLModelConfiguration) throws`
    public init(contentsOf url: URL, configuration: MLModelConfiguration) throws {
        throw unavailable("MLModel(contentsOf:configuration:)")
    }

    /// mlmodel/modeldescription: `var modelDescription: MLModelDescription { get }`
    open var modelDescription: MLModelDescription { MLModelDescription() }

    /// mlmodel/prediction(from:): `func prediction(from input: any MLFeatureProvider) throws -> any MLFeatureProvider`
    open func prediction(from input: any MLFeatureProvider) throws -> any MLFeatureProvider {
        throw unavailable("MLModel.prediction(from:)")
    }

    /// mlmodel/compilemodel(at:)-45ao6: `class func compileModel(at url: URL) async throws -> URL`
    @available(macOS 13.0, iOS 16.0, tvOS 16.0, *)
    open class func compileModel(at url: URL) async throws -> URL {
        throw unavailable("MLModel.compileModel(at:)")
    }
}

/// mlmodeldescription: `class MLModelDescription : NSObject`
open class MLModelDescription: NSObject {
    /// mlmodeldescription/inputdescriptionsbyname: `var inputDescriptionsByName: [String : MLFeatureDescription] { get }`
    open var inputDescriptionsByName: [String: MLFeatureDescription] { [:] }
    /// mlmodeldescription/outputdescriptionsbyname: `var outputDescriptionsByName: [String : MLFeatureDescription] { get }`
    open var outputDescriptionsByName: [String: MLFeatureDescription] { [:] }
    /// mlmodeldescription/metadata: `var metadata: [MLModelMetadataKey : Any] { get }`
    open var metadata: [MLModelMetadataKey: Any] { [:] }
}

/// mlmodelmetadatakey: `struct MLModelMetadataKey` (string-backed, Hashable)
public struct MLModelMetadataKey: Hashable, RawRepresentable {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    /// mlmodelmetadatakey/author
    public static let author = MLModelMetadataKey(rawValue: "MLModelAuthorKey")
    /// mlmodelmetadatakey/description
    public static let description = MLModelMetadataKey(rawValue: "MLModelDescriptionKey")
    /// mlmodelmetadatakey/versionstring
    public static let versionString = MLModelMetadataKey(rawValue: "MLModelVersionStringKey")
    /// mlmodelmetadatakey/license
    public static let license = MLModelMetadataKey(rawValue: "MLModelLicenseKey")
    /// mlmodelmetadatakey/creatordefinedkey
    public static let creatorDefinedKey = MLModelMetadataKey(rawValue: "MLModelCreatorDefinedKey")
}

/// mlfeaturetype: `enum MLFeatureType : Int, @unchecked Sendable`
public enum MLFeatureType: Int {
    case invalid = 0
    case int64 = 1
    case double = 2
    case string = 3
    case image = 4
    case multiArray = 5
    case dictionary = 6
    case sequence = 7
    /// mlfeaturetype/state
    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
    case state = 8
}

/// mlfeaturedescription: `class MLFeatureDescription : NSObject`
open class MLFeatureDescription: NSObject {
    /// mlfeaturedescription/name: `var name: String { get }`
    open var name: String { "" }
    /// mlfeaturedescription/type: `var type: MLFeatureType { get }`
    open var type: MLFeatureType { .invalid }
    /// mlfeaturedescription/isoptional: `var isOptional: Bool { get }`
    open var isOptional: Bool { false }
    /// mlfeaturedescription/multiarrayconstraint: `var multiArrayConstraint: MLMultiArrayConstraint? { get }`
    open var multiArrayConstraint: MLMultiArrayConstraint? { nil }
}

// MARK: Multi-arrays

/// mlmultiarraydatatype: `enum MLMultiArrayDataType : Int, @unchecked Sendable`
public enum MLMultiArrayDataType: Int {
    case double = 65600
    case float32 = 65568
    /// mlmultiarraydatatype/float16 (the SDK header's API_AVAILABLE: iOS 16, not the 15 the page once said)
    @available(macOS 12.0, iOS 16.0, tvOS 16.0, watchOS 9.0, *)
    case float16 = 65552
    case int32 = 131104
    /// mlmultiarraydatatype/int8
    @available(macOS 26.0, iOS 26.0, tvOS 26.0, watchOS 26.0, *)
    case int8 = 131080
    /// mlmultiarraydatatype/float64 (same value as .double)
    public static var float64: MLMultiArrayDataType { .double }
    /// mlmultiarraydatatype/float (same value as .float32)
    public static var float: MLMultiArrayDataType { .float32 }
}

/// mlmultiarray: `class MLMultiArray : NSObject`
open class MLMultiArray: NSObject {
    /// mlmultiarray/init(shape:datatype:):
    /// `init(shape: [NSNumber], dataType: MLMultiArrayDataType) throws`
    public init(shape: [NSNumber], dataType: MLMultiArrayDataType) throws {
        throw unavailable("MLMultiArray(shape:dataType:)")
    }

    /// mlmultiarray/init(datapointer:shape:datatype:strides:deallocator:):
    /// `init(dataPointer: UnsafeMutableRawPointer, shape: [NSNumber], dataType: MLMultiArrayDataType,
    ///       strides: [NSNumber], deallocator: ((UnsafeMutableRawPointer) -> Void)? = nil) throws`
    public init(dataPointer: UnsafeMutableRawPointer, shape: [NSNumber], dataType: MLMultiArrayDataType,
                strides: [NSNumber], deallocator: ((UnsafeMutableRawPointer) -> Void)? = nil) throws {
        throw unavailable("MLMultiArray(dataPointer:shape:dataType:strides:deallocator:)")
    }

    /// mlmultiarray/shape: `var shape: [NSNumber] { get }`
    open var shape: [NSNumber] { [] }
    /// mlmultiarray/strides: `var strides: [NSNumber] { get }`
    open var strides: [NSNumber] { [] }
    /// mlmultiarray/datatype: `var dataType: MLMultiArrayDataType { get }`
    open var dataType: MLMultiArrayDataType { .float32 }
    /// mlmultiarray/count: `var count: Int { get }`
    open var count: Int { 0 }

    /// mlmultiarray/withunsafebytes(_:):
    /// `func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R`
    @available(macOS 12.3, iOS 15.4, tvOS 15.4, watchOS 8.5, *)
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: nil, count: 0))
    }
}

/// mlmultiarrayconstraint: `class MLMultiArrayConstraint : NSObject`
open class MLMultiArrayConstraint: NSObject {
    /// mlmultiarrayconstraint/shape: `var shape: [NSNumber] { get }`
    open var shape: [NSNumber] { [] }
    /// mlmultiarrayconstraint/datatype: `var dataType: MLMultiArrayDataType { get }`
    open var dataType: MLMultiArrayDataType { .float32 }
    /// mlmultiarrayconstraint/shapeconstraint: `var shapeConstraint: MLMultiArrayShapeConstraint { get }`
    @available(macOS 10.14, iOS 12.0, tvOS 12.0, watchOS 5.0, *)
    open var shapeConstraint: MLMultiArrayShapeConstraint { MLMultiArrayShapeConstraint() }
}

/// mlmultiarrayshapeconstrainttype: `enum MLMultiArrayShapeConstraintType : Int, @unchecked Sendable`
@available(macOS 10.14, iOS 12.0, tvOS 12.0, watchOS 5.0, *)
public enum MLMultiArrayShapeConstraintType: Int {
    case unspecified = 1
    case enumerated = 2
    case range = 3
}

/// mlmultiarrayshapeconstraint: `class MLMultiArrayShapeConstraint : NSObject`
@available(macOS 10.14, iOS 12.0, tvOS 12.0, watchOS 5.0, *)
open class MLMultiArrayShapeConstraint: NSObject {
    /// mlmultiarrayshapeconstraint/type: `var type: MLMultiArrayShapeConstraintType { get }`
    open var type: MLMultiArrayShapeConstraintType { .unspecified }
    /// mlmultiarrayshapeconstraint/sizerangefordimension: `var sizeRangeForDimension: [NSValue] { get }`
    open var sizeRangeForDimension: [NSValue] { [] }
    /// mlmultiarrayshapeconstraint/enumeratedshapes: `var enumeratedShapes: [[NSNumber]] { get }`
    open var enumeratedShapes: [[NSNumber]] { [] }
}

// MARK: Features

/// mlfeatureprovider: `protocol MLFeatureProvider`
public protocol MLFeatureProvider {
    /// mlfeatureprovider/featurenames: `var featureNames: Set<String> { get }`
    var featureNames: Set<String> { get }
    /// mlfeatureprovider/featurevalue(for:): `func featureValue(for featureName: String) -> MLFeatureValue?`
    func featureValue(for featureName: String) -> MLFeatureValue?
}

/// mlfeaturevalue: `class MLFeatureValue : NSObject`
open class MLFeatureValue: NSObject {
    /// mlfeaturevalue/init(multiarray:): `convenience init(multiArray value: MLMultiArray)`
    /// (an MLMultiArray cannot exist here, so neither can the value: it is .invalid)
    public init(multiArray value: MLMultiArray) { super.init() }
    /// Not Apple's: the designated initialiser the shim's other feature
    /// value initialisers (extensions) delegate to; internal, so unchecked.
    init(shimInvalid: Void) { super.init() }
    /// mlfeaturevalue/type: `var type: MLFeatureType { get }`
    open var type: MLFeatureType { .invalid }
    /// mlfeaturevalue/multiarrayvalue: `var multiArrayValue: MLMultiArray? { get }`
    open var multiArrayValue: MLMultiArray? { nil }
    /// mlfeaturevalue/int64value: `var int64Value: Int64 { get }`
    open var int64Value: Int64 { 0 }
    /// mlfeaturevalue/doublevalue: `var doubleValue: Double { get }`
    open var doubleValue: Double { 0 }
}

/// mldictionaryfeatureprovider: `class MLDictionaryFeatureProvider : NSObject`
open class MLDictionaryFeatureProvider: NSObject, MLFeatureProvider {
    /// mldictionaryfeatureprovider/init(dictionary:): `init(dictionary: [String : Any]) throws`
    public init(dictionary: [String: Any]) throws {
        throw unavailable("MLDictionaryFeatureProvider(dictionary:)")
    }
    open var featureNames: Set<String> { [] }
    open func featureValue(for featureName: String) -> MLFeatureValue? { nil }
}

// MARK: Compute devices (macOS 14+)

/// mlcpucomputedevice: `class MLCPUComputeDevice`
@available(macOS 14.0, iOS 17.0, tvOS 17.0, watchOS 10.0, *)
public final class MLCPUComputeDevice: NSObject {}

/// mlgpucomputedevice: `class MLGPUComputeDevice`
@available(macOS 14.0, iOS 17.0, tvOS 17.0, watchOS 10.0, *)
public final class MLGPUComputeDevice: NSObject {}

/// mlneuralenginecomputedevice: `class MLNeuralEngineComputeDevice`
@available(macOS 14.0, iOS 17.0, tvOS 17.0, watchOS 10.0, *)
public final class MLNeuralEngineComputeDevice: NSObject {
    /// mlneuralenginecomputedevice/totalcorecount: `var totalCoreCount: Int { get }`
    public var totalCoreCount: Int { 0 }
}

/// mlcomputedevice: `enum MLComputeDevice` (Hashable, Sendable)
@available(macOS 14.0, iOS 17.0, tvOS 17.0, watchOS 10.0, *)
public enum MLComputeDevice {
    case cpu(MLCPUComputeDevice)
    case gpu(MLGPUComputeDevice)
    case neuralEngine(MLNeuralEngineComputeDevice)
    /// mlcomputedevice/allcomputedevices: `static var allComputeDevices: [MLComputeDevice] { get }`
    public static var allComputeDevices: [MLComputeDevice] { [] }
}

// MARK: Model structure and compute plan (macOS 14.4+)

/// mlmodelstructure-swift.enum: `enum MLModelStructure`
@available(macOS 14.4, iOS 17.4, tvOS 17.4, watchOS 10.4, *)
public enum MLModelStructure {
    case neuralNetwork(MLModelStructure.NeuralNetwork)
    case program(MLModelStructure.Program)
    case pipeline(MLModelStructure.Pipeline)
    case unsupported

    /// mlmodelstructure-swift.enum/neuralnetwork: `struct NeuralNetwork`
    public struct NeuralNetwork {
        /// .../neuralnetwork/layers: `let layers: [MLModelStructure.NeuralNetwork.Layer]`
        public let layers: [MLModelStructure.NeuralNetwork.Layer]

        /// .../neuralnetwork/layer: `struct Layer`
        public struct Layer {
            /// .../layer/name: `let name: String`
            public let name: String
            /// .../layer/type: `let type: String`
            public let type: String
            /// .../layer/inputnames: `let inputNames: [String]`
            public let inputNames: [String]
            /// .../layer/outputnames: `let outputNames: [String]`
            public let outputNames: [String]
        }
    }

    /// mlmodelstructure-swift.enum/program: `struct Program`
    public struct Program {
        /// .../program/functions: `let functions: [String : MLModelStructure.Program.Function]`
        public let functions: [String: MLModelStructure.Program.Function]

        /// .../program/function: `struct Function`
        public struct Function {
            /// .../function/block: `let block: MLModelStructure.Program.Block`
            public let block: MLModelStructure.Program.Block
            /// .../function/inputs: `let inputs: [MLModelStructure.Program.NamedValueType]`
            public let inputs: [MLModelStructure.Program.NamedValueType]
        }

        /// .../program/block: `struct Block`
        public struct Block {
            /// .../block/inputs: `let inputs: [MLModelStructure.Program.NamedValueType]`
            public let inputs: [MLModelStructure.Program.NamedValueType]
            /// .../block/operations: `let operations: [MLModelStructure.Program.Operation]`
            public let operations: [MLModelStructure.Program.Operation]
            /// .../block/outputnames: `let outputNames: [String]`
            public let outputNames: [String]
        }

        /// .../program/operation: `struct Operation`
        public struct Operation {
            /// .../operation/operatorname: `let operatorName: String`
            public let operatorName: String
            /// .../operation/outputs: `let outputs: [MLModelStructure.Program.NamedValueType]`
            public let outputs: [MLModelStructure.Program.NamedValueType]
            /// .../operation/blocks: `let blocks: [MLModelStructure.Program.Block]`
            public let blocks: [MLModelStructure.Program.Block]
        }

        /// .../program/namedvaluetype: `struct NamedValueType`
        public struct NamedValueType {
            /// .../namedvaluetype/name: `let name: String`
            public let name: String
        }
    }

    /// mlmodelstructure-swift.enum/pipeline: `struct Pipeline`
    public struct Pipeline {
        /// .../pipeline/submodels: `let subModels: [MLModelStructure]`
        public let subModels: [MLModelStructure]
        /// .../pipeline/submodelnames: `let subModelNames: [String]`
        public let subModelNames: [String]
    }
}

/// mlcomputeplan-1w21n: `class MLComputePlan`
@available(macOS 14.4, iOS 17.4, tvOS 17.4, watchOS 10.4, *)
public final class MLComputePlan {
    private init() { modelStructure = .unsupported }

    /// mlcomputeplan-1w21n/load(contentsof:configuration:):
    /// `static func load(contentsOf url: URL, configuration: MLModelConfiguration) async throws -> MLComputePlan`
    public static func load(contentsOf url: URL, configuration: MLModelConfiguration) async throws -> MLComputePlan {
        throw unavailable("MLComputePlan.load(contentsOf:configuration:)")
    }

    /// mlcomputeplan-1w21n/modelstructure: `final let modelStructure: MLModelStructure`
    public let modelStructure: MLModelStructure

    /// mlcomputeplan-1w21n/deviceusage(for:)-7cdlm:
    /// `func deviceUsage(for operation: MLModelStructure.Program.Operation) -> MLComputePlan.DeviceUsage?`
    public func deviceUsage(for operation: MLModelStructure.Program.Operation) -> MLComputePlan.DeviceUsage? { nil }

    /// mlcomputeplan-1w21n/deviceusage(for:) (layer overload):
    /// `func deviceUsage(for layer: MLModelStructure.NeuralNetwork.Layer) -> MLComputePlan.DeviceUsage?`
    public func deviceUsage(for layer: MLModelStructure.NeuralNetwork.Layer) -> MLComputePlan.DeviceUsage? { nil }

    /// mlcomputeplan-1w21n/estimatedcost(of:):
    /// `func estimatedCost(of operation: MLModelStructure.Program.Operation) -> MLComputePlan.Cost?`
    public func estimatedCost(of operation: MLModelStructure.Program.Operation) -> MLComputePlan.Cost? { nil }

    /// mlcomputeplan-1w21n/deviceusage: `struct DeviceUsage`
    public struct DeviceUsage {
        /// .../deviceusage/preferred: `let preferred: MLComputeDevice`
        public let preferred: MLComputeDevice
        /// .../deviceusage/supported: `let supported: [MLComputeDevice]`
        public let supported: [MLComputeDevice]
    }

    /// mlcomputeplan-1w21n/cost: `struct Cost`
    public struct Cost {
        /// .../cost/weight: `let weight: Double`
        public let weight: Double
    }
}
#endif

// CoreMLShimV2 — the declarations ABI version 2 of the bridge added (state,
// batch, multifunction). Same rules as CoreMLShim.swift: every declaration
// mirrors the Swift signature of the Apple documentation page named in its
// comment (developer.apple.com/documentation/coreml/...), nothing traps,
// whatever can throw throws the shim's "unavailable" NSError, and under
// canImport(CoreML) this file is empty.
//
// Kept apart from CoreMLShim.swift so the shim checker's table of that file
// is not disturbed; these declarations are not in that table yet.
#if !canImport(CoreML)
import Foundation

// MARK: Prediction options

/// mlpredictionoptions: `class MLPredictionOptions : NSObject`
open class MLPredictionOptions: NSObject {
    public override init() { super.init() }
}

// MARK: State (macOS 15)

/// mlstate: `class MLState : NSObject`
@available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
open class MLState: NSObject {
    // Core ML creates states (MLModel.makeState()); the shim never does.
    override init() { super.init() }
}

/// mlstateconstraint: `class MLStateConstraint : NSObject`
@available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
open class MLStateConstraint: NSObject {
    /// mlstateconstraint/buffershape: `var bufferShape: [NSNumber] { get }`
    open var bufferShape: [NSNumber] { [] }
    /// mlstateconstraint/datatype: `var dataType: MLMultiArrayDataType { get }`
    open var dataType: MLMultiArrayDataType { .float32 }
}

extension MLModelDescription {
    /// mlmodeldescription/statedescriptionsbyname:
    /// `var stateDescriptionsByName: [String : MLFeatureDescription] { get }`
    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
    public var stateDescriptionsByName: [String: MLFeatureDescription] { [:] }
}

extension MLFeatureDescription {
    /// mlfeaturedescription/stateconstraint: `var stateConstraint: MLStateConstraint? { get }`
    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
    public var stateConstraint: MLStateConstraint? { nil }
}

extension MLModel {
    /// mlmodel/makestate(): `func makeState() -> MLState`
    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
    public func makeState() -> MLState { MLState() }

    /// mlmodel/prediction(from:using:options:):
    /// `func prediction(from inputFeatures: any MLFeatureProvider, using state: MLState,
    ///                  options: MLPredictionOptions) throws -> any MLFeatureProvider`
    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
    public func prediction(from inputFeatures: any MLFeatureProvider, using state: MLState,
                           options: MLPredictionOptions) throws -> any MLFeatureProvider {
        throw unavailable("MLModel.prediction(from:using:options:)")
    }

    /// mlmodel/predictions(from:options:):
    /// `func predictions(from inputBatch: any MLBatchProvider, options: MLPredictionOptions) throws -> any MLBatchProvider`
    public func predictions(from inputBatch: any MLBatchProvider,
                            options: MLPredictionOptions) throws -> any MLBatchProvider {
        throw unavailable("MLModel.predictions(from:options:)")
    }
}

// MARK: Multifunction (macOS 15)

extension MLModelConfiguration {
    /// mlmodelconfiguration/functionname: `var functionName: String? { get set }`
    /// (The shim stores nothing: no model can be loaded with it anyway.)
    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
    public var functionName: String? {
        get { nil }
        set { _ = newValue }
    }
}

/// mlmodelasset: `class MLModelAsset : NSObject`
@available(macOS 13.0, iOS 16.0, tvOS 16.0, watchOS 9.0, *)
open class MLModelAsset: NSObject {
    /// mlmodelasset/init(url:)-43988: `convenience init(url compiledModelURL: URL) throws`
    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
    public init(url compiledModelURL: URL) throws {
        throw unavailable("MLModelAsset(url:)")
    }

    /// mlmodelasset/functionnames: `var functionNames: [String] { get async throws }`
    @available(macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0, *)
    open var functionNames: [String] {
        get async throws { throw unavailable("MLModelAsset.functionNames") }
    }
}

// MARK: Feature kinds and classifiers

extension MLFeatureValue {
    /// mlfeaturevalue/stringvalue: `var stringValue: String { get }`
    public var stringValue: String { "" }
    /// mlfeaturevalue/dictionaryvalue: `var dictionaryValue: [AnyHashable : NSNumber] { get }`
    public var dictionaryValue: [AnyHashable: NSNumber] { [:] }
}

extension MLModelDescription {
    /// mlmodeldescription/predictedfeaturename: `var predictedFeatureName: String? { get }`
    public var predictedFeatureName: String? { nil }
    /// mlmodeldescription/predictedprobabilitiesname: `var predictedProbabilitiesName: String? { get }`
    public var predictedProbabilitiesName: String? { nil }
    /// mlmodeldescription/classlabels: `var classLabels: [Any]? { get }`
    @available(macOS 11.0, iOS 14.0, tvOS 14.0, watchOS 7.0, *)
    public var classLabels: [Any]? { nil }
}

// MARK: Batch

/// mlbatchprovider: `protocol MLBatchProvider`
public protocol MLBatchProvider {
    /// mlbatchprovider/count: `var count: Int { get }`
    var count: Int { get }
    /// mlbatchprovider/features(at:): `func features(at index: Int) -> any MLFeatureProvider`
    func features(at index: Int) -> any MLFeatureProvider
}

/// mlarraybatchprovider: `class MLArrayBatchProvider : NSObject`
open class MLArrayBatchProvider: NSObject, MLBatchProvider {
    /// mlarraybatchprovider/array: `var array: [any MLFeatureProvider] { get }`
    public let array: [any MLFeatureProvider]
    /// mlarraybatchprovider/init(array:): `init(array: [any MLFeatureProvider])`
    public init(array: [any MLFeatureProvider]) {
        self.array = array
        super.init()
    }
    open var count: Int { array.count }
    /// Out of range: an empty provider instead of a trap (Core ML's behaviour
    /// there is undocumented; the adapter never asks).
    open func features(at index: Int) -> any MLFeatureProvider {
        array.indices.contains(index) ? array[index] : NoFeatures()
    }
}

/// What an out-of-range `features(at:)` answers in the shim.
final class NoFeatures: NSObject, MLFeatureProvider {
    var featureNames: Set<String> { [] }
    func featureValue(for featureName: String) -> MLFeatureValue? { nil }
}
#endif

// CoreMLShimBuffers — the declarations coreml_predict_into's Core ML path
// uses (output backings, predictions with options). Same rules as
// CoreMLShim.swift: every declaration mirrors the Swift signature of the
// Apple documentation page named in its comment
// (developer.apple.com/documentation/coreml/...), nothing traps, whatever
// can throw throws the shim's "unavailable" NSError, and under
// canImport(CoreML) this file is empty.
//
// MLMultiArray(dataPointer:shape:dataType:strides:deallocator:) and
// withUnsafeBytes(_:) are already in CoreMLShim.swift. MLMultiArray's
// `dataPointer` (deprecated since macOS 12.3) is not declared: the adapter
// compares withUnsafeBytes' base address with its backing instead.
#if !canImport(CoreML)
import Foundation

extension MLPredictionOptions {
    /// mlpredictionoptions/outputbackings: `var outputBackings: [String : Any] { get set }`
    @available(macOS 11.0, iOS 14.0, tvOS 14.0, watchOS 7.0, *)
    public var outputBackings: [String: Any] {
        get { [:] }
        // The shim runs no prediction: a backing set here is never used.
        set {}
    }
}

extension MLModel {
    /// mlmodel/prediction(from:options:):
    /// `func prediction(from input: any MLFeatureProvider, options: MLPredictionOptions) throws -> any MLFeatureProvider`
    public func prediction(from input: any MLFeatureProvider, options: MLPredictionOptions) throws -> any MLFeatureProvider {
        throw unavailable("MLModel.prediction(from:options:)")
    }
}
#endif

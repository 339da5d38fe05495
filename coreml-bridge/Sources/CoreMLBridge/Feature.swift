import Foundation

/// A dictionary key of a feature value (Core ML: String or Int64 keys).
public enum FeatureKey: Hashable, Sendable {
    case string(String)
    case int64(Int64)
}

/// A feature value of ABI v2's feature calls: a multi-array, a scalar, a
/// string, or (outputs only) a dictionary of probabilities. Bridge-owned.
public enum FeatureValue: @unchecked Sendable {
    case tensor(HostTensor)
    case int64(Int64)
    case double(Double)
    case string(String)
    /// Entries in key order.
    case dictionary([(key: FeatureKey, value: Double)])
    /// Inputs only: pixels in bridge-owned storage (coreml_predict_images).
    case image(HostImage)

    /// The schema's `feature_type` this value feeds.
    var featureType: String {
        switch self {
        case .tensor: return "multiArray"
        case .int64: return "int64"
        case .double: return "double"
        case .string: return "string"
        case .dictionary: return "dictionary"
        case .image: return "image"
        }
    }
}

/// A named feature value.
public struct NamedFeature: @unchecked Sendable {
    public let name: String
    public let value: FeatureValue
    public init(name: String, value: FeatureValue) {
        self.name = name
        self.value = value
    }
}

/// A classifier's outputs and labels (Core ML: `predictedFeatureName`,
/// `predictedProbabilitiesName`, `classLabels`).
public struct ClassifierSchema: Equatable, Sendable {
    public var labelOutput: String
    public var probabilitiesOutput: String?
    /// String labels, or int64 labels; both empty when unknown.
    public var stringLabels: [String]
    public var int64Labels: [Int64]

    public init(labelOutput: String, probabilitiesOutput: String?, stringLabels: [String] = [], int64Labels: [Int64] = []) {
        self.labelOutput = labelOutput
        self.probabilitiesOutput = probabilitiesOutput
        self.stringLabels = stringLabels
        self.int64Labels = int64Labels
    }

    var jsonObject: [String: Any] {
        ["label_output": labelOutput,
         "probabilities_output": probabilitiesOutput.map { $0 as Any } ?? NSNull(),
         "labels": stringLabels.isEmpty ? int64Labels.map { $0 as Any } : stringLabels.map { $0 as Any }]
    }
}

extension ModelSchema {
    /// Checks feature inputs before anything is copied or queued: names,
    /// presence, each value's kind against the feature's type, and (for
    /// multi-arrays) element type and shape.
    func validate(features: [(name: String, featureType: String, signature: InputSignature?)]) throws {
        let byName = Dictionary(inputs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var tensors: [InputSignature] = []
        for f in features {
            guard let want = byName[f.name] else {
                throw BridgeError(.schemaMismatch, "input '\(f.name)' is not an input of the model (inputs: \(inputs.map { $0.name }))")
            }
            guard want.featureType == f.featureType else {
                throw BridgeError(.schemaMismatch, "input '\(f.name)' is a \(want.featureType) feature; got a \(f.featureType) value")
            }
            if let s = f.signature { tensors.append(s) }
        }
        // Multi-array checks as for coreml_predict; then presence of all.
        let byNameTensors = Set(tensors.map { $0.name })
        var copy = self
        copy.inputs = inputs.filter { byNameTensors.contains($0.name) }
        try copy.validate(tensors)
        let given = Set(features.map { $0.name })
        let missing = inputs.filter { !$0.optional && !given.contains($0.name) }.map { $0.name }
        if !missing.isEmpty {
            throw BridgeError(.schemaMismatch, "missing required input(s) \(missing)")
        }
    }
}

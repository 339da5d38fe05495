import Foundation

/// The shape constraint of a multi-array feature (MLMultiArrayShapeConstraint).
public enum ShapeConstraint: Equatable, Sendable {
    /// Not an array feature, or nothing known.
    case none
    /// MLMultiArrayShapeConstraintType.unspecified: the default shape is the shape.
    case unspecified
    case enumerated([[Int]])
    /// One (lower, upper) per dimension; upper nil = unbounded.
    case range([DimRange])

    public var typeName: String {
        switch self {
        case .none: return "none"
        case .unspecified: return "unspecified"
        case .enumerated: return "enumerated"
        case .range: return "range"
        }
    }
}

public struct DimRange: Equatable, Sendable {
    public var lower: Int
    public var upper: Int?
    public init(lower: Int, upper: Int?) { self.lower = lower; self.upper = upper }
}

public struct FeatureSchema: Equatable, Sendable {
    public var name: String
    /// "multiArray", "double", "int64", "string", "image", "dictionary",
    /// "sequence", "state", "invalid" or "unknown".
    public var featureType: String
    public var optional: Bool
    public var dtype: DType?
    public var shape: [Int]
    public var constraint: ShapeConstraint
    /// An image feature's MLImageConstraint (nil for other features).
    public var image: ImageSchema?

    public init(name: String, featureType: String = "multiArray", optional: Bool = false,
                dtype: DType?, shape: [Int], constraint: ShapeConstraint) {
        self.name = name
        self.featureType = featureType
        self.optional = optional
        self.dtype = dtype
        self.shape = shape
        self.constraint = constraint
    }

    var jsonObject: [String: Any] {
        var c: [String: Any] = ["type": constraint.typeName]
        switch constraint {
        case .enumerated(let shapes): c["enumerated_shapes"] = shapes
        case .range(let ranges):
            c["ranges"] = ranges.map { r -> [String: Any] in
                ["lower": r.lower, "upper": r.upper.map { $0 as Any } ?? NSNull()]
            }
        case .none, .unspecified: break
        }
        return [
            "name": name,
            "feature_type": featureType,
            "optional": optional,
            "dtype": dtype.map { $0.name as Any } ?? NSNull(),
            "dtype_code": dtype.map { Int($0.rawValue) as Any } ?? NSNull(),
            "shape": shape,
            "shape_constraint": c,
            "image": image.map { $0.jsonObject as Any } ?? NSNull(),
        ]
    }

    /// Whether Core ML takes a multi-array of `given` for a feature of `want`.
    static func convertible(_ given: DType, to want: DType) -> Bool {
        let numeric: Set<DType> = [.f32, .f16, .f64, .i32]
        return given == want || (numeric.contains(given) && numeric.contains(want))
    }

    /// Whether an input of this shape satisfies the constraint.
    func accepts(shape s: [Int]) -> Bool {
        switch constraint {
        case .none: return true
        case .unspecified: return shape.isEmpty || s == shape
        case .enumerated(let shapes): return shapes.contains(s)
        case .range(let ranges):
            guard ranges.count == s.count else { return false }
            for (d, r) in zip(s, ranges) {
                if d < r.lower { return false }
                if let u = r.upper, d > u { return false }
            }
            return true
        }
    }

    var constraintDescription: String {
        switch constraint {
        case .none: return "any shape"
        case .unspecified: return "shape \(shape)"
        case .enumerated(let shapes): return "one of the shapes \(shapes)"
        case .range(let ranges):
            return "ranges " + ranges.map { "[\($0.lower), \($0.upper.map(String.init) ?? "inf")]" }
                .joined(separator: " x ")
        }
    }
}

/// What schema validation needs of an input: enough to refuse it before
/// its bytes are copied.
public struct InputSignature: Sendable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    public init(name: String, dtype: DType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }
}

public struct ModelMetadata: Equatable, Sendable {
    public var author = ""
    public var description = ""
    public var version = ""
    public var license = ""
    public var userDefined: [String: String] = [:]
    public init() {}

    var jsonObject: [String: Any] {
        ["author": author, "description": description, "version": version,
         "license": license, "user_defined": userDefined]
    }
}

public struct ModelSchema: Equatable, Sendable {
    public var inputs: [FeatureSchema]
    public var outputs: [FeatureSchema]
    /// A stateful model's states (Core ML: `stateDescriptionsByName`,
    /// macOS 15): name, element type and buffer shape; empty otherwise.
    public var states: [FeatureSchema]
    public var metadata: ModelMetadata
    /// A multifunction model's functions (Core ML: `MLModelAsset.functionNames`,
    /// macOS 15), sorted; empty when there is one function or it cannot be known.
    public var functions: [String] = []
    /// The function this handle was loaded with (nil: the default).
    public var function: String?
    /// A classifier's label and probabilities outputs and its labels.
    public var classifier: ClassifierSchema?

    public init(inputs: [FeatureSchema], outputs: [FeatureSchema], states: [FeatureSchema] = [],
                metadata: ModelMetadata = ModelMetadata()) {
        self.inputs = inputs.sorted { $0.name < $1.name }
        self.outputs = outputs.sorted { $0.name < $1.name }
        self.states = states.sorted { $0.name < $1.name }
        self.metadata = metadata
    }

    public var jsonObject: [String: Any] {
        ["inputs": inputs.map { $0.jsonObject },
         "outputs": outputs.map { $0.jsonObject },
         "states": states.map { $0.jsonObject },
         "functions": functions,
         "function": function.map { $0 as Any } ?? NSNull(),
         "classifier": classifier.map { $0.jsonObject as Any } ?? NSNull(),
         "metadata": metadata.jsonObject]
    }

    public func json() throws -> String { try encodeJSON(jsonObject) }

    /// Checks the inputs of a prediction against the model before anything
    /// is queued: names, presence, feature type and shape constraints.
    public func validate(_ tensors: [HostTensor]) throws {
        try validate(tensors.map { InputSignature(name: $0.name, dtype: $0.dtype, shape: $0.shape) })
    }

    /// The same checks on descriptors not yet copied (the C entry points
    /// validate before they copy a byte), plus element types: Core ML
    /// converts between f32, f16, f64 and i32 multi-arrays itself, so those
    /// are interchangeable; i8 must meet i8.
    public func validate(_ tensors: [InputSignature]) throws {
        let byName = Dictionary(inputs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for t in tensors {
            guard let f = byName[t.name] else {
                throw BridgeError(.schemaMismatch, "input '\(t.name)' is not an input of the model (inputs: \(inputs.map { $0.name }))")
            }
            guard f.featureType == "multiArray" else {
                throw BridgeError(.unsupported, "input '\(t.name)' is a \(f.featureType) feature; the bridge only feeds multi-arrays")
            }
            if let want = f.dtype, !FeatureSchema.convertible(t.dtype, to: want) {
                throw BridgeError(.schemaMismatch, "input '\(t.name)' is \(t.dtype.name); the model takes \(want.name) (f32, f16, f64 and i32 convert into each other, i8 only from i8)")
            }
            guard f.accepts(shape: t.shape) else {
                throw BridgeError(.schemaMismatch, "input '\(t.name)' has shape \(t.shape); the model accepts \(f.constraintDescription)")
            }
        }
        let given = Set(tensors.map { $0.name })
        let missing = inputs.filter { !$0.optional && !given.contains($0.name) }.map { $0.name }
        if !missing.isEmpty {
            throw BridgeError(.schemaMismatch, "missing required input(s) \(missing)")
        }
    }
}

/// JSON text of a Foundation object graph, keys sorted (stable output).
func encodeJSON(_ object: Any) throws -> String {
    guard JSONSerialization.isValidJSONObject(object) else {
        throw BridgeError(.internalError, "cannot encode JSON: invalid object graph")
    }
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    guard let s = String(data: data, encoding: .utf8) else {
        throw BridgeError(.internalError, "JSON is not UTF-8")
    }
    return s
}

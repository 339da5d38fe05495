"""The tables shim_check.py checks CoreMLShim with: Swift declaration -> Objective-C declaration
(MAP, PENDING), Swift names Apple does not have (WRONG_NAMES), and Apple's availability of each
Objective-C declaration (AVAIL).

Row kinds (MAP and PENDING values):
  ("class", Class)                          class, protocol or NS_ENUM type exists
  ("method", Class, selector, optional)     instance method / property getter; result optional?
                                            (None: not compared, e.g. a completion-handler method)
  ("classmethod", Class, selector, optional)
  ("enum", Type, ObjCCaseName, value)       NS_ENUM case and its raw value
  ("const", Name)                           string constant (extern NSString *)
  ("cfunc", Function)                       C function (CoreVideo); its parameter count is compared
  ("cvalue", Name, value)                   C constant and its value (CoreVideo `pub const`)
  ("overlay", [rows...])                    Swift-only API (NS_REFINED_FOR_SWIFT, Swift value
                                            types): the Objective-C rows it is built on
Selectors are spelled as objc2 spells them: a method that reports an NSError ends in `error:_`.
"""

M, CM, E, K, C, O = "method", "classmethod", "enum", "const", "class", "overlay"
F, V = "cfunc", "cvalue"

# ---------------------------------------------------------------------------------------------
# Every declaration of the shim. A row here whose declaration the shim lacks fails the check.
MAP: dict[str, tuple] = {
    # Configuration
    "MLComputeUnits": (C, "MLComputeUnits"),
    "MLComputeUnits.cpuOnly=0": (E, "MLComputeUnits", "CPUOnly", 0),
    "MLComputeUnits.cpuAndGPU=1": (E, "MLComputeUnits", "CPUAndGPU", 1),
    "MLComputeUnits.all=2": (E, "MLComputeUnits", "All", 2),
    "MLComputeUnits.cpuAndNeuralEngine=3": (E, "MLComputeUnits", "CPUAndNeuralEngine", 3),
    "MLModelConfiguration": (C, "MLModelConfiguration"),
    "MLModelConfiguration.computeUnits": (M, "MLModelConfiguration", "computeUnits", False),
    # Model
    "MLModel": (C, "MLModel"),
    "MLModel.init(contentsOf:configuration:)": (CM, "MLModel", "modelWithContentsOfURL:configuration:error:_", False),
    "MLModel.modelDescription": (M, "MLModel", "modelDescription", False),
    "MLModel.prediction(from:)": (M, "MLModel", "predictionFromFeatures:error:_", False),
    "MLModel.compileModel(at:)": (CM, "MLModel", "compileModelAtURL:completionHandler:", None),
    "MLModelDescription": (C, "MLModelDescription"),
    "MLModelDescription.inputDescriptionsByName": (M, "MLModelDescription", "inputDescriptionsByName", False),
    "MLModelDescription.outputDescriptionsByName": (M, "MLModelDescription", "outputDescriptionsByName", False),
    "MLModelDescription.metadata": (M, "MLModelDescription", "metadata", False),
    # Metadata keys: a Swift struct over the ObjC string constants.
    "MLModelMetadataKey": (O, [("type", "MLModelMetadataKey")]),
    "MLModelMetadataKey.init(rawValue:)": (O, []),
    "MLModelMetadataKey.rawValue": (O, []),
    "MLModelMetadataKey.author": (K, "MLModelAuthorKey"),
    "MLModelMetadataKey.description": (K, "MLModelDescriptionKey"),
    "MLModelMetadataKey.versionString": (K, "MLModelVersionStringKey"),
    "MLModelMetadataKey.license": (K, "MLModelLicenseKey"),
    "MLModelMetadataKey.creatorDefinedKey": (K, "MLModelCreatorDefinedKey"),
    # Feature types and descriptions
    "MLFeatureType": (C, "MLFeatureType"),
    "MLFeatureType.invalid=0": (E, "MLFeatureType", "Invalid", 0),
    "MLFeatureType.int64=1": (E, "MLFeatureType", "Int64", 1),
    "MLFeatureType.double=2": (E, "MLFeatureType", "Double", 2),
    "MLFeatureType.string=3": (E, "MLFeatureType", "String", 3),
    "MLFeatureType.image=4": (E, "MLFeatureType", "Image", 4),
    "MLFeatureType.multiArray=5": (E, "MLFeatureType", "MultiArray", 5),
    "MLFeatureType.dictionary=6": (E, "MLFeatureType", "Dictionary", 6),
    "MLFeatureType.sequence=7": (E, "MLFeatureType", "Sequence", 7),
    "MLFeatureType.state=8": (E, "MLFeatureType", "State", 8),
    "MLFeatureDescription": (C, "MLFeatureDescription"),
    "MLFeatureDescription.name": (M, "MLFeatureDescription", "name", False),
    "MLFeatureDescription.type": (M, "MLFeatureDescription", "type", False),
    "MLFeatureDescription.isOptional": (M, "MLFeatureDescription", "isOptional", False),
    "MLFeatureDescription.multiArrayConstraint?": (M, "MLFeatureDescription", "multiArrayConstraint", True),
    # Multi-arrays
    "MLMultiArrayDataType": (C, "MLMultiArrayDataType"),
    "MLMultiArrayDataType.double=65600": (E, "MLMultiArrayDataType", "Double", 65600),
    "MLMultiArrayDataType.float32=65568": (E, "MLMultiArrayDataType", "Float32", 65568),
    "MLMultiArrayDataType.float16=65552": (E, "MLMultiArrayDataType", "Float16", 65552),
    "MLMultiArrayDataType.int32=131104": (E, "MLMultiArrayDataType", "Int32", 131104),
    "MLMultiArrayDataType.int8=131080": (E, "MLMultiArrayDataType", "Int8", 131080),
    "MLMultiArrayDataType.float64": (E, "MLMultiArrayDataType", "Float64", 65600),
    "MLMultiArrayDataType.float": (E, "MLMultiArrayDataType", "Float", 65568),
    "MLMultiArray": (C, "MLMultiArray"),
    "MLMultiArray.init(shape:dataType:)": (M, "MLMultiArray", "initWithShape:dataType:error:_", False),
    "MLMultiArray.init(dataPointer:shape:dataType:strides:deallocator:)": (
        M, "MLMultiArray", "initWithDataPointer:shape:dataType:strides:deallocator:error:_", False),
    "MLMultiArray.shape": (M, "MLMultiArray", "shape", False),
    "MLMultiArray.strides": (M, "MLMultiArray", "strides", False),
    "MLMultiArray.dataType": (M, "MLMultiArray", "dataType", False),
    "MLMultiArray.count": (M, "MLMultiArray", "count", False),
    # Swift overlay over -getBytesWithHandler: (NS_REFINED_FOR_SWIFT).
    "MLMultiArray.withUnsafeBytes(_:)": (O, [(M, "MLMultiArray", "getBytesWithHandler:", None)]),
    "MLMultiArrayConstraint": (C, "MLMultiArrayConstraint"),
    "MLMultiArrayConstraint.shape": (M, "MLMultiArrayConstraint", "shape", False),
    "MLMultiArrayConstraint.dataType": (M, "MLMultiArrayConstraint", "dataType", False),
    "MLMultiArrayConstraint.shapeConstraint": (M, "MLMultiArrayConstraint", "shapeConstraint", False),
    "MLMultiArrayShapeConstraintType": (C, "MLMultiArrayShapeConstraintType"),
    "MLMultiArrayShapeConstraintType.unspecified=1": (E, "MLMultiArrayShapeConstraintType", "Unspecified", 1),
    "MLMultiArrayShapeConstraintType.enumerated=2": (E, "MLMultiArrayShapeConstraintType", "Enumerated", 2),
    "MLMultiArrayShapeConstraintType.range=3": (E, "MLMultiArrayShapeConstraintType", "Range", 3),
    "MLMultiArrayShapeConstraint": (C, "MLMultiArrayShapeConstraint"),
    "MLMultiArrayShapeConstraint.type": (M, "MLMultiArrayShapeConstraint", "type", False),
    "MLMultiArrayShapeConstraint.sizeRangeForDimension": (M, "MLMultiArrayShapeConstraint", "sizeRangeForDimension", False),
    "MLMultiArrayShapeConstraint.enumeratedShapes": (M, "MLMultiArrayShapeConstraint", "enumeratedShapes", False),
    # Features
    "MLFeatureProvider": (C, "MLFeatureProvider"),
    "MLFeatureProvider.featureNames": (M, "MLFeatureProvider", "featureNames", False),
    "MLFeatureProvider.featureValue(for:)?": (M, "MLFeatureProvider", "featureValueForName:", True),
    "MLFeatureValue": (C, "MLFeatureValue"),
    "MLFeatureValue.init(multiArray:)": (CM, "MLFeatureValue", "featureValueWithMultiArray:", False),
    "MLFeatureValue.type": (M, "MLFeatureValue", "type", False),
    "MLFeatureValue.multiArrayValue?": (M, "MLFeatureValue", "multiArrayValue", True),
    "MLFeatureValue.int64Value": (M, "MLFeatureValue", "int64Value", False),
    "MLFeatureValue.doubleValue": (M, "MLFeatureValue", "doubleValue", False),
    "MLDictionaryFeatureProvider": (C, "MLDictionaryFeatureProvider"),
    "MLDictionaryFeatureProvider.init(dictionary:)": (M, "MLDictionaryFeatureProvider", "initWithDictionary:error:_", False),
    # Its MLFeatureProvider conformance carries these two.
    "MLDictionaryFeatureProvider.featureNames": (O, [("conforms", "MLDictionaryFeatureProvider", "MLFeatureProvider"),
                                                   (M, "MLFeatureProvider", "featureNames", False)]),
    "MLDictionaryFeatureProvider.featureValue(for:)?": (O, [("conforms", "MLDictionaryFeatureProvider", "MLFeatureProvider"),
                                                         (M, "MLFeatureProvider", "featureValueForName:", True)]),
    # Compute devices
    "MLCPUComputeDevice": (C, "MLCPUComputeDevice"),
    "MLGPUComputeDevice": (C, "MLGPUComputeDevice"),
    "MLNeuralEngineComputeDevice": (C, "MLNeuralEngineComputeDevice"),
    "MLNeuralEngineComputeDevice.totalCoreCount": (M, "MLNeuralEngineComputeDevice", "totalCoreCount", False),
    # Swift enum over the MLComputeDeviceProtocol classes, and MLAllComputeDevices().
    "MLComputeDevice": (O, [(C, "MLComputeDeviceProtocol")]),
    "MLComputeDevice.cpu": (O, [(C, "MLCPUComputeDevice")]),
    "MLComputeDevice.gpu": (O, [(C, "MLGPUComputeDevice")]),
    "MLComputeDevice.neuralEngine": (O, [(C, "MLNeuralEngineComputeDevice")]),
    "MLComputeDevice.allComputeDevices": (O, [("function", "MLAllComputeDevices")]),
    # Model structure: Swift value types over the MLModelStructure* classes.
    "MLModelStructure": (O, [(C, "MLModelStructure")]),
    "MLModelStructure.neuralNetwork": (O, [(M, "MLModelStructure", "neuralNetwork", True)]),
    "MLModelStructure.program": (O, [(M, "MLModelStructure", "program", True)]),
    "MLModelStructure.pipeline": (O, [(M, "MLModelStructure", "pipeline", True)]),
    "MLModelStructure.unsupported": (O, []),
    "MLModelStructure.NeuralNetwork": (O, [(C, "MLModelStructureNeuralNetwork")]),
    "MLModelStructure.NeuralNetwork.layers": (O, [(M, "MLModelStructureNeuralNetwork", "layers", False)]),
    "MLModelStructure.NeuralNetwork.Layer": (O, [(C, "MLModelStructureNeuralNetworkLayer")]),
    "MLModelStructure.NeuralNetwork.Layer.name": (O, [(M, "MLModelStructureNeuralNetworkLayer", "name", False)]),
    "MLModelStructure.NeuralNetwork.Layer.type": (O, [(M, "MLModelStructureNeuralNetworkLayer", "type", False)]),
    "MLModelStructure.NeuralNetwork.Layer.inputNames": (O, [(M, "MLModelStructureNeuralNetworkLayer", "inputNames", False)]),
    "MLModelStructure.NeuralNetwork.Layer.outputNames": (O, [(M, "MLModelStructureNeuralNetworkLayer", "outputNames", False)]),
    "MLModelStructure.Program": (O, [(C, "MLModelStructureProgram")]),
    "MLModelStructure.Program.functions": (O, [(M, "MLModelStructureProgram", "functions", False)]),
    "MLModelStructure.Program.Function": (O, [(C, "MLModelStructureProgramFunction")]),
    "MLModelStructure.Program.Function.block": (O, [(M, "MLModelStructureProgramFunction", "block", False)]),
    "MLModelStructure.Program.Function.inputs": (O, [(M, "MLModelStructureProgramFunction", "inputs", False)]),
    "MLModelStructure.Program.Block": (O, [(C, "MLModelStructureProgramBlock")]),
    "MLModelStructure.Program.Block.inputs": (O, [(M, "MLModelStructureProgramBlock", "inputs", False)]),
    "MLModelStructure.Program.Block.operations": (O, [(M, "MLModelStructureProgramBlock", "operations", False)]),
    "MLModelStructure.Program.Block.outputNames": (O, [(M, "MLModelStructureProgramBlock", "outputNames", False)]),
    "MLModelStructure.Program.Operation": (O, [(C, "MLModelStructureProgramOperation")]),
    "MLModelStructure.Program.Operation.operatorName": (O, [(M, "MLModelStructureProgramOperation", "operatorName", False)]),
    "MLModelStructure.Program.Operation.outputs": (O, [(M, "MLModelStructureProgramOperation", "outputs", False)]),
    "MLModelStructure.Program.Operation.blocks": (O, [(M, "MLModelStructureProgramOperation", "blocks", False)]),
    "MLModelStructure.Program.NamedValueType": (O, [(C, "MLModelStructureProgramNamedValueType")]),
    "MLModelStructure.Program.NamedValueType.name": (O, [(M, "MLModelStructureProgramNamedValueType", "name", False)]),
    "MLModelStructure.Pipeline": (O, [(C, "MLModelStructurePipeline")]),
    "MLModelStructure.Pipeline.subModels": (O, [(M, "MLModelStructurePipeline", "subModels", False)]),
    "MLModelStructure.Pipeline.subModelNames": (O, [(M, "MLModelStructurePipeline", "subModelNames", False)]),
    # Compute plan (the Swift class wraps the ObjC one; its async load wraps the completion handler).
    "MLComputePlan": (C, "MLComputePlan"),
    "MLComputePlan.load(contentsOf:configuration:)": (CM, "MLComputePlan", "loadContentsOfURL:configuration:completionHandler:", None),
    "MLComputePlan.modelStructure": (M, "MLComputePlan", "modelStructure", False),
    "MLComputePlan.deviceUsage(for:operation)?": (M, "MLComputePlan", "computeDeviceUsageForMLProgramOperation:", True),
    "MLComputePlan.deviceUsage(for:layer)?": (M, "MLComputePlan", "computeDeviceUsageForNeuralNetworkLayer:", True),
    "MLComputePlan.estimatedCost(of:)?": (M, "MLComputePlan", "estimatedCostOfMLProgramOperation:", True),
    "MLComputePlan.DeviceUsage": (O, [(C, "MLComputePlanDeviceUsage")]),
    "MLComputePlan.DeviceUsage.preferred": (O, [(M, "MLComputePlanDeviceUsage", "preferredComputeDevice", False)]),
    "MLComputePlan.DeviceUsage.supported": (O, [(M, "MLComputePlanDeviceUsage", "supportedComputeDevices", False)]),
    "MLComputePlan.Cost": (O, [(C, "MLComputePlanCost")]),
    "MLComputePlan.Cost.weight": (O, [(M, "MLComputePlanCost", "weight", False)]),
    # Model assets: a multifunction package's function names (macOS 15).
    "MLModelAsset": (C, "MLModelAsset"),
    "MLModelAsset.init(url:)": (CM, "MLModelAsset", "modelAssetWithURL:error:_", False),
    "MLModelAsset.functionNames": (M, "MLModelAsset", "functionNamesWithCompletionHandler:", None),
    # Output backings (coreml_predict_into; CoreMLShimBuffers.swift). The setter is
    # -setOutputBackings:; the getter's row stands for the property.
    "MLPredictionOptions.outputBackings": (M, "MLPredictionOptions", "outputBackings", False),
    # Images (CoreMLShimImages.swift). CoreVideo and CoreFoundation, against objc2-core-video and
    # objc2-core-foundation: CVPixelBuffer is `typealias CVPixelBuffer = CVImageBuffer = CVBuffer`.
    "CVBuffer": (C, "CVBuffer"),
    "CFAllocator": (C, "CFAllocator"),
    "CFDictionary": (C, "CFDictionary"),
    "CVPixelBufferLockFlags": (C, "CVPixelBufferLockFlags"),
    "CVPixelBufferLockFlags.rawValue": (O, []),
    "CVPixelBufferLockFlags.init(rawValue:)": (O, []),
    "kCVReturnSuccess=0": (V, "kCVReturnSuccess", 0),
    "kCVPixelFormatType_32BGRA=1111970369": (V, "kCVPixelFormatType_32BGRA", 0x42475241),
    "kCVPixelFormatType_32ARGB=32": (V, "kCVPixelFormatType_32ARGB", 0x20),
    "kCVPixelFormatType_OneComponent8=1278226488": (V, "kCVPixelFormatType_OneComponent8", 0x4C303038),
    "kCVPixelFormatType_OneComponent16Half=1278226536": (V, "kCVPixelFormatType_OneComponent16Half", 0x4C303068),
    "CVPixelBufferCreate(_:_:_:_:_:_:)": (F, "CVPixelBufferCreate"),
    "CVPixelBufferLockBaseAddress(_:_:)": (F, "CVPixelBufferLockBaseAddress"),
    "CVPixelBufferUnlockBaseAddress(_:_:)": (F, "CVPixelBufferUnlockBaseAddress"),
    "CVPixelBufferGetBaseAddress(_:)?": (F, "CVPixelBufferGetBaseAddress"),
    "CVPixelBufferGetBytesPerRow(_:)": (F, "CVPixelBufferGetBytesPerRow"),
    # Core ML's image features.
    "MLFeatureValue.init(pixelBuffer:)": (CM, "MLFeatureValue", "featureValueWithPixelBuffer:", False),
    "MLFeatureDescription.imageConstraint?": (M, "MLFeatureDescription", "imageConstraint", True),
    "MLImageConstraint": (C, "MLImageConstraint"),
    "MLImageConstraint.pixelsWide": (M, "MLImageConstraint", "pixelsWide", False),
    "MLImageConstraint.pixelsHigh": (M, "MLImageConstraint", "pixelsHigh", False),
    "MLImageConstraint.pixelFormatType": (M, "MLImageConstraint", "pixelFormatType", False),
    "MLImageConstraint.sizeConstraint": (M, "MLImageConstraint", "sizeConstraint", False),
    "MLImageSizeConstraintType": (C, "MLImageSizeConstraintType"),
    "MLImageSizeConstraintType.unspecified=0": (E, "MLImageSizeConstraintType", "Unspecified", 0),
    "MLImageSizeConstraintType.enumerated=2": (E, "MLImageSizeConstraintType", "Enumerated", 2),
    "MLImageSizeConstraintType.range=3": (E, "MLImageSizeConstraintType", "Range", 3),
    "MLImageSizeConstraint": (C, "MLImageSizeConstraint"),
    "MLImageSizeConstraint.type": (M, "MLImageSizeConstraint", "type", False),
    "MLImageSizeConstraint.pixelsWideRange": (M, "MLImageSizeConstraint", "pixelsWideRange", False),
    "MLImageSizeConstraint.pixelsHighRange": (M, "MLImageSizeConstraint", "pixelsHighRange", False),
    "MLImageSizeConstraint.enumeratedImageSizes": (M, "MLImageSizeConstraint", "enumeratedImageSizes", False),
    "MLImageSize": (C, "MLImageSize"),
    "MLImageSize.pixelsWide": (M, "MLImageSize", "pixelsWide", False),
    "MLImageSize.pixelsHigh": (M, "MLImageSize", "pixelsHigh", False),
}

# ---------------------------------------------------------------------------------------------
# Declarations issue #12 (state, batch, multifunction, images, strings) will add to the shim,
# checked against objc2 now. While the shim lacks one its row is reported as pending, not
# failed; once the shim has it, it is checked like a MAP row. Keys are the Swift names Apple's
# SDK imports the selectors as (NS_SWIFT_NAME, or Swift's import rules).
PENDING: dict[str, tuple] = {
    # State (macOS 15): MLModel (MLState) category, MLState, MLStateConstraint.
    "MLState": (C, "MLState"),
    # -getMultiArrayForStateNamed:handler: is NS_REFINED_FOR_SWIFT: Swift has withMultiArray(for:_:).
    "MLState.withMultiArray(for:_:)": (O, [(M, "MLState", "getMultiArrayForStateNamed:handler:", None)]),
    # -newState is NS_REFINED_FOR_SWIFT: Swift's makeState() is the overlay over it.
    "MLModel.makeState()": (O, [(M, "MLModel", "newState", False)]),
    "MLModel.prediction(from:using:)": (M, "MLModel", "predictionFromFeatures:usingState:error:_", False),
    "MLModel.prediction(from:using:options:)": (M, "MLModel", "predictionFromFeatures:usingState:options:error:_", False),
    "MLStateConstraint": (C, "MLStateConstraint"),
    # bufferShape is NS_REFINED_FOR_SWIFT ([Int] in Swift).
    "MLStateConstraint.bufferShape": (O, [(M, "MLStateConstraint", "bufferShape", False)]),
    "MLStateConstraint.dataType": (M, "MLStateConstraint", "dataType", False),
    "MLFeatureDescription.stateConstraint?": (M, "MLFeatureDescription", "stateConstraint", True),
    "MLModelDescription.stateDescriptionsByName": (M, "MLModelDescription", "stateDescriptionsByName", False),
    # Options and batches.
    "MLPredictionOptions": (C, "MLPredictionOptions"),
    "MLModel.prediction(from:options:)": (M, "MLModel", "predictionFromFeatures:options:error:_", False),
    "MLModel.predictions(fromBatch:)": (M, "MLModel", "predictionsFromBatch:error:_", False),
    "MLModel.predictions(from:options:)": (M, "MLModel", "predictionsFromBatch:options:error:_", False),
    "MLBatchProvider": (C, "MLBatchProvider"),
    "MLBatchProvider.count": (M, "MLBatchProvider", "count", False),
    "MLBatchProvider.features(at:)": (M, "MLBatchProvider", "featuresAtIndex:", False),
    "MLArrayBatchProvider": (C, "MLArrayBatchProvider"),
    "MLArrayBatchProvider.init(array:)": (M, "MLArrayBatchProvider", "initWithFeatureProviderArray:", False),
    "MLArrayBatchProvider.init(dictionary:)": (M, "MLArrayBatchProvider", "initWithDictionary:error:_", False),
    "MLArrayBatchProvider.array": (M, "MLArrayBatchProvider", "array", False),
    "MLArrayBatchProvider.count": (O, [("conforms", "MLArrayBatchProvider", "MLBatchProvider"),
                                       (M, "MLBatchProvider", "count", False)]),
    "MLArrayBatchProvider.features(at:)": (O, [("conforms", "MLArrayBatchProvider", "MLBatchProvider"),
                                               (M, "MLBatchProvider", "featuresAtIndex:", False)]),
    # Multifunction packages (macOS 15).
    "MLModelConfiguration.functionName?": (M, "MLModelConfiguration", "functionName", True),
    # Feature values: strings, scalars, dictionaries, images.
    "MLFeatureValue.init(string:)": (CM, "MLFeatureValue", "featureValueWithString:", False),
    "MLFeatureValue.init(int64:)": (CM, "MLFeatureValue", "featureValueWithInt64:", False),
    "MLFeatureValue.init(double:)": (CM, "MLFeatureValue", "featureValueWithDouble:", False),
    "MLFeatureValue.init(dictionary:)": (CM, "MLFeatureValue", "featureValueWithDictionary:error:_", False),
    "MLFeatureValue.stringValue": (M, "MLFeatureValue", "stringValue", False),
    "MLFeatureValue.dictionaryValue": (M, "MLFeatureValue", "dictionaryValue", False),
    "MLFeatureValue.imageBufferValue?": (M, "MLFeatureValue", "imageBufferValue", True),
    # Classifiers.
    "MLModelDescription.classLabels?": (M, "MLModelDescription", "classLabels", True),
    "MLModelDescription.predictedFeatureName?": (M, "MLModelDescription", "predictedFeatureName", True),
    "MLModelDescription.predictedProbabilitiesName?": (M, "MLModelDescription", "predictedProbabilitiesName", True),
}

# Swift names that look right but that Apple's SDK does not import: a shim declaration with one
# of these keys fails with the reason, instead of the generic "no row".
WRONG_NAMES: dict[str, str] = {
    "MLModel.predictions(fromBatch:options:)":
        "Swift imports -predictionsFromBatch:options:error: as predictions(from:options:) "
        "(only the option-less predictionsFromBatch:error: is predictions(fromBatch:))",
    "MLModel.newState()":
        "-newState is NS_REFINED_FOR_SWIFT: Swift callers see makeState() (the overlay)",
}

# ---------------------------------------------------------------------------------------------
# Availability, which objc2-core-ml does not carry. Keyed by the Objective-C declaration:
# "Class" (class, protocol, NS_ENUM, constant, function), "Class selector" (a member that has
# its own API_AVAILABLE; others inherit their class's or category's), "Enum.Case".
# Value: (availability as Swift's @available spells it, "watchOS unavailable" for
# API_UNAVAILABLE(watchos); source). Source "header": seen in Apple's SDK header text, which
# carries every platform's API_AVAILABLE (iPhoneOS 18.x SDK headers for the macOS 13-15 API;
# the iOS 13 SDK's CoreML headers, run through --headers, for the older API: 27 rows, none
# differed); "doc": from the declaration's page at developer.apple.com/documentation/coreml,
# not yet seen in a header. `shim_check.py --headers DIR` compares every row with a real SDK's
# CoreML.framework/Headers (on a Mac: $(xcrun --show-sdk-path)/System/Library/Frameworks/...).
V10_13 = "macOS 10.13, iOS 11.0, tvOS 11.0, watchOS 4.0"
V10_14 = "macOS 10.14, iOS 12.0, tvOS 12.0, watchOS 5.0"
V11 = "macOS 11.0, iOS 14.0, tvOS 14.0, watchOS 7.0"
V13 = "macOS 13.0, iOS 16.0, tvOS 16.0, watchOS 9.0"
V14 = "macOS 14.0, iOS 17.0, tvOS 17.0, watchOS 10.0"
V14_4 = "macOS 14.4, iOS 17.4, tvOS 17.4, watchOS 10.4"
V15 = "macOS 15.0, iOS 18.0, tvOS 18.0, watchOS 11.0"
V26 = "macOS 26.0, iOS 26.0, tvOS 26.0, watchOS 26.0"
VCV = "macOS 10.4, iOS 4.0, tvOS 9.0, watchOS 4.0"
VCF = "macOS 10.0, iOS 2.0, tvOS 9.0, watchOS 2.0"
H, D = "header", "doc"

AVAIL: dict[str, tuple[str, str]] = {
    "MLComputeUnits": (V10_14, H),
    "MLComputeUnits.CPUAndNeuralEngine": (V13, H),
    "MLModelConfiguration": (V10_14, H),
    "MLModelConfiguration functionName": (V15, H),
    "MLModel": (V10_13, H),
    "MLModel modelWithContentsOfURL:configuration:error:_": (V10_14, H),
    "MLModel compileModelAtURL:completionHandler:": ("macOS 13.0, iOS 16.0, tvOS 16.0, watchOS unavailable", H),
    "MLModel predictionsFromBatch:error:_": (V10_14, H),
    "MLModel predictionsFromBatch:options:error:_": (V10_14, H),
    "MLModel newState": (V15, H),
    "MLModel predictionFromFeatures:usingState:error:_": (V15, H),
    "MLModel predictionFromFeatures:usingState:options:error:_": (V15, H),
    "MLModelDescription": (V10_13, H),
    "MLModelDescription classLabels": (V11, D),
    "MLModelDescription stateDescriptionsByName": (V15, D),
    "MLModelMetadataKey": (V10_13, D),
    "MLModelAuthorKey": (V10_13, H),
    "MLModelDescriptionKey": (V10_13, H),
    "MLModelVersionStringKey": (V10_13, H),
    "MLModelLicenseKey": (V10_13, H),
    "MLModelCreatorDefinedKey": (V10_13, H),
    "MLFeatureType": (V10_13, H),
    "MLFeatureType.State": (V15, D),
    "MLFeatureDescription": (V10_13, H),
    "MLFeatureDescription stateConstraint": (V15, D),
    "MLMultiArrayDataType": (V10_13, H),
    "MLMultiArrayDataType.Float64": (V11, H),
    "MLMultiArrayDataType.Float": (V11, H),
    "MLMultiArrayDataType.Float16": ("macOS 12.0, iOS 16.0, tvOS 16.0, watchOS 9.0", H),
    "MLMultiArrayDataType.Int8": (V26, D),
    "MLMultiArray": (V10_13, H),
    "MLMultiArray getBytesWithHandler:": ("macOS 12.3, iOS 15.4, tvOS 15.4, watchOS 8.5", H),
    "MLMultiArrayConstraint": (V10_13, H),
    "MLMultiArrayConstraint shapeConstraint": (V10_14, H),
    "MLMultiArrayShapeConstraintType": (V10_14, H),
    "MLMultiArrayShapeConstraint": (V10_14, H),
    "MLFeatureProvider": (V10_13, H),
    "MLFeatureValue": (V10_13, H),
    "MLDictionaryFeatureProvider": (V10_13, H),
    "MLBatchProvider": (V10_14, H),
    "MLArrayBatchProvider": (V10_14, H),
    "MLPredictionOptions": (V10_13, H),
    "MLPredictionOptions outputBackings": (V11, D),
    "MLImageConstraint": (V10_13, H),
    "MLImageConstraint sizeConstraint": (V10_14, D),
    "MLImageSizeConstraint": (V10_14, D),
    "MLImageSizeConstraintType": (V10_14, D),
    "MLImageSize": (V10_14, D),
    # CoreVideo / CoreFoundation (doc: Apple's pages, not yet seen in a header; only the floors
    # matter to the check: the shim declares no @available of its own for them).
    "CVBuffer": (VCV, D),
    "CVPixelBufferLockFlags": (VCV, D),
    "CVPixelBufferCreate": (VCV, D),
    "CVPixelBufferLockBaseAddress": (VCV, D),
    "CVPixelBufferUnlockBaseAddress": (VCV, D),
    "CVPixelBufferGetBaseAddress": (VCV, D),
    "CVPixelBufferGetBytesPerRow": (VCV, D),
    "kCVReturnSuccess": (VCV, D),
    "kCVPixelFormatType_32BGRA": (VCV, D),
    "kCVPixelFormatType_32ARGB": (VCV, D),
    "kCVPixelFormatType_OneComponent8": (VCV, D),
    "kCVPixelFormatType_OneComponent16Half": (VCV, D),
    "CFAllocator": (VCF, D),
    "CFDictionary": (VCF, D),
    "MLState": (V15, H),
    "MLState getMultiArrayForStateNamed:handler:": (V15, H),
    "MLStateConstraint": (V15, H),
    "MLCPUComputeDevice": (V14, H),
    "MLGPUComputeDevice": (V14, H),
    "MLNeuralEngineComputeDevice": (V14, H),
    "MLComputeDeviceProtocol": (V14, D),
    "MLAllComputeDevices": (V14, H),
    "MLModelStructure": (V14_4, H),
    "MLModelStructureNeuralNetwork": (V14_4, D),
    "MLModelStructureNeuralNetworkLayer": (V14_4, D),
    "MLModelStructureProgram": (V14_4, D),
    "MLModelStructureProgramFunction": (V14_4, D),
    "MLModelStructureProgramBlock": (V14_4, D),
    "MLModelStructureProgramOperation": (V14_4, D),
    "MLModelStructureProgramNamedValueType": (V14_4, D),
    "MLModelStructurePipeline": (V14_4, D),
    "MLComputePlan": (V14_4, H),
    "MLModelAsset": (V13, D),
    "MLModelAsset modelAssetWithURL:error:_": (V15, D),
    "MLModelAsset functionNamesWithCompletionHandler:": (V15, D),
    "MLComputePlanDeviceUsage": (V14_4, D),
    "MLComputePlanCost": (V14_4, D),
}

#!/usr/bin/env python3
"""Checks CoreMLShim against Apple's SDK as the objc2-core-ml crate generates it.

    python3 scripts/swift/shim_check.py [--objc2 DIR] [--shim FILE]

CoreMLShim.swift mirrors, by hand, the Core ML declarations our adapter calls, so the adapter
type-checks on Linux. objc2-core-ml is generated from Apple's SDK headers. This script:

1. lists every declaration of the shim (types, enum cases with raw values, properties, methods,
   initialisers, constants) by its Swift key, e.g. `MLModel.prediction(from:)`;
2. requires each key to be in MAP below, which names the Objective-C declaration behind it
   (class, selector, instance or class method, whether the result is optional, the enum value);
   a shim declaration with no MAP row fails, and so does a MAP row the shim no longer has;
3. checks each MAP row against objc2-core-ml's generated bindings: the class or protocol exists,
   the selector exists on it (instance vs class method), a property's/method's result is
   `Option<...>` exactly when the shim's is optional (`?`), an enum case has the same raw value,
   a string constant exists.

Swift-only overlays (the Swift `MLComputePlan`/`MLModelStructure`/`MLComputeDevice` value types,
`withUnsafeBytes`) have no selector of their own: their rows name the Objective-C declarations
the overlay is built on, and those are checked.

What this cannot check: availability. objc2-core-ml carries no availability attributes, so the
shim's `@available` lines stay checked by hand against the documentation pages they cite.

The bindings come from crates.io (scripts/swift/shim-check/Cargo.toml pins objc2-core-ml, and
`cargo metadata` finds its sources); no Apple SDK is needed. Exit status 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "coreml-bridge/Sources/CoreMLShim/CoreMLShim.swift"
PIN = ROOT / "scripts/swift/shim-check/Cargo.toml"


# ---------------------------------------------------------------------------------------------
# The mapping: Swift shim key -> Objective-C declaration.
#   ("class", Class)                         class or protocol exists
#   ("method", Class, selector, optional)    instance method / property getter; result optional?
#   ("classmethod", Class, selector, optional)
#   ("enum", Type, ObjCCaseName, value)      NS_ENUM case and its raw value
#   ("const", Name)                          string constant (extern NSString *)
#   ("overlay", [rows...])                   Swift-only API: the ObjC rows it is built on
M, CM, E, K, C, O = "method", "classmethod", "enum", "const", "class", "overlay"
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
    # Swift overlay over -getBytesWithHandler: (macOS 12.3+).
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
}


# ---------------------------------------------------------------------------------------------
# The shim's declarations

DECL_TYPE = re.compile(r"^\s*(?:@\w+(?:\([^)]*\))?\s+)*(?:public|open)\s+(?:final\s+)?(class|enum|struct|protocol)\s+(?!func\b|var\b)(\w+)")
PROTO_MEMBER = re.compile(r"^\s*(var|func)\s+(\w+)")
MEMBER = re.compile(r"^\s*(?:public|open)\s+(?:override\s+)?(?:class\s+|static\s+)?(var|let|func|init)\b\s*(\w*)")
CASE = re.compile(r"^\s*case\s+(\w+)(?:\s*=\s*(-?\d+)|\(([^)]*)\))?")


def labels(params: str) -> str:
    """`(from input: X, at url: Y)` -> `from:at:`."""
    out = []
    depth, cur = 0, ""
    for ch in params:
        depth += ch in "([<"
        depth -= ch in ")]>"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return "".join(p.strip().split(":")[0].split()[0] + ":" for p in out)


def shim_keys(text: str) -> dict[str, int]:
    """Swift key -> line number, for every declaration of the shim."""
    keys: dict[str, int] = {}
    stack: list[tuple[str, int, str]] = []  # (type name, brace depth at its body, kind)
    depth = 0
    body = text.split("#if !canImport(CoreML)", 1)[1]
    first_line = text[: text.index("#if !canImport(CoreML)")].count("\n") + 1
    # Logical lines: a declaration whose parameter list runs on is read whole.
    raw = [line.split("//", 1)[0] for line in body.splitlines()]
    logical: list[tuple[int, str]] = []
    j = 0
    while j < len(raw):
        no, code = first_line + j, raw[j]
        while code.count("(") > code.count(")") and j + 1 < len(raw):
            j += 1
            code += " " + raw[j].strip()
        logical.append((no, code))
        j += 1
    for no, code in logical:
        owner = ".".join(s[0] for s in stack)
        kind = stack[-1][2] if stack else ""
        m = DECL_TYPE.match(code)
        if m:
            name = f"{owner}.{m.group(2)}" if owner else m.group(2)
            keys[name] = no
            stack.append((m.group(2), depth + 1, m.group(1)))
        elif stack and kind == "enum" and CASE.match(code):
            c = CASE.match(code)
            keys[f"{owner}.{c.group(1)}" + (f"={c.group(2)}" if c.group(2) else "")] = no
        elif stack and kind == "protocol" and PROTO_MEMBER.match(code):
            p = PROTO_MEMBER.match(code)
            keys[member_key(owner, p.group(1), p.group(2), code)] = no
        elif stack and MEMBER.match(code) and "private" not in code.split("func")[0]:
            mm = MEMBER.match(code)
            if not (mm.group(1) == "init" and "override" in code):
                keys[member_key(owner, mm.group(1), mm.group(2), code)] = no
        depth += code.count("{") - code.count("}")
        while stack and depth < stack[-1][1]:
            stack.pop()
    return keys


def member_key(owner: str, kind: str, name: str, code: str) -> str:
    if kind in ("var", "let"):
        typ = code.split(":", 1)[1].split("{")[0].split("=")[0].strip()
        return f"{owner}.{name}" + ("?" if typ.endswith("?") else "")
    params = code[code.index("(") + 1:]
    depth, end = 1, 0
    for i, ch in enumerate(params):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    plist = params[:end]
    fname = "init" if kind == "init" else name
    key = f"{owner}.{fname}({labels(plist)})"
    rest = params[end + 1:].split("{")[0]
    if kind == "func" and owner == "MLComputePlan" and fname == "deviceUsage":
        # Two overloads that differ only in the parameter's type: name it.
        key = f"{owner}.deviceUsage(for:{plist.split()[1].rstrip(':')})"
    if "->" in rest and rest.split("->", 1)[1].strip().endswith("?"):
        key += "?"
    return key


# ---------------------------------------------------------------------------------------------
# objc2-core-ml's generated bindings

@dataclass
class Method:
    selector: str
    is_class: bool
    optional: bool


def objc2_index(src: Path) -> tuple:
    """Classes and protocols, selectors per class, enum values, string constants, C functions,
    type aliases and protocol conformances of the generated bindings."""
    classes: set[str] = set()
    methods: dict[str, list[Method]] = {}
    enums: dict[tuple[str, str], int] = {}
    statics: set[str] = set()
    functions: set[str] = set()
    types: set[str] = set()
    conforms: set[tuple[str, str]] = set()
    for f in sorted((src / "generated").glob("*.rs")):
        text = f.read_text()
        for m in re.finditer(r"pub struct (\w+)(?:;|\()", text):
            classes.add(m.group(1))
        for m in re.finditer(r"pub unsafe trait (\w+)", text):
            classes.add(m.group(1))
        for m in re.finditer(r"pub static (\w+):", text):
            statics.add(m.group(1))
        for m in re.finditer(r"pub (?:unsafe )?(?:extern \"C-unwind\" )?fn (\w+)\(", text):
            functions.add(m.group(1))
        for m in re.finditer(r"pub type (\w+) = ", text):
            types.add(m.group(1))
        for m in re.finditer(r"unsafe impl (\w+) for (\w+) \{\}", text):
            conforms.add((m.group(2), m.group(1)))
        owner = None
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^(?:impl|unsafe impl) (\w+) \{", line) or re.match(r"^\s*pub unsafe trait (\w+)", line)
            if m:
                owner = m.group(1)
            c = re.match(r"^\s*pub const (\w+): Self = Self\(([-0-9a-fx |]+)\);", line)
            if c and owner:
                value = 0
                for part in c.group(2).split("|"):
                    value |= int(part.strip(), 0)
                enums[(owner, c.group(1))] = value
            s = re.match(r"^\s*#\[unsafe\(method\(([^)]*)\)\)\]", line)
            if s and owner:
                sig = ""
                for nxt in lines[i + 1:]:
                    if "fn " in nxt or sig:
                        sig += nxt.strip() + " "
                        if nxt.rstrip().endswith(";"):
                            break
                head = sig.split("->")[0]
                is_class = "&self" not in head and "Allocated<Self>" not in head
                ret = sig.split("->", 1)[1] if "->" in sig else ""
                ret = re.sub(r"^Result<(.*), Retained<NSError>>;?\s*$", r"\1", ret.strip().rstrip(";").strip())
                methods.setdefault(owner, []).append(Method(s.group(1), is_class, ret.startswith("Option<")))
    return classes, methods, enums, statics, functions, types, conforms


def check_row(row: tuple, idx) -> str | None:
    classes, methods, enums, statics, functions, types, conforms = idx
    kind = row[0]
    if kind == C:
        return None if row[1] in classes else f"no class or protocol `{row[1]}`"
    if kind in (M, CM):
        _, cls, sel, optional = row
        if cls not in classes:
            return f"no class `{cls}`"
        found = [m for m in methods.get(cls, []) if m.selector == sel]
        if not found:
            return f"no selector `{sel}` on `{cls}`"
        want_class = kind == CM
        ok = [m for m in found if m.is_class == want_class]
        if not ok:
            return f"`{sel}` on `{cls}` is {'an instance' if want_class else 'a class'} method, not {'a class' if want_class else 'an instance'} method"
        if optional is not None and not any(m.optional == optional for m in ok):
            return f"`{cls} {sel}` returns {'non-' if optional else ''}optional in the SDK, the shim says {'optional' if optional else 'non-optional'}"
        return None
    if kind == E:
        _, typ, case, value = row
        got = enums.get((typ, case))
        if got is None:
            return f"no case `{typ}::{case}`"
        return None if got == value else f"`{typ}::{case}` is {got} in the SDK, the shim says {value}"
    if kind == K:
        return None if row[1] in statics else f"no constant `{row[1]}`"
    if kind == "type":
        return None if row[1] in types or row[1] in classes else f"no type `{row[1]}`"
    if kind == "conforms":
        return None if (row[1], row[2]) in conforms else f"`{row[1]}` does not conform to `{row[2]}`"
    if kind == "function":
        return None if row[1] in functions else f"no function `{row[1]}`"
    if kind == O:
        errs = [e for r in row[1] if (e := check_row(r, idx))]
        return "; ".join(errs) or None
    return f"unknown row kind {kind}"


def self_test(idx, shim: str) -> int:
    """Plants one mistake of each kind the check exists for; every one must be caught."""
    wrong_rows = {
        "optionality": (M, "MLFeatureDescription", "multiArrayConstraint", False),
        "instance vs class method": (CM, "MLModel", "predictionFromFeatures:error:_", False),
        "enum raw value": (E, "MLComputeUnits", "All", 3),
        "missing selector": (M, "MLModel", "predictionFromFeature:error:_", False),
        "missing class": (C, "MLModelX"),
        "missing constant": (K, "MLModelAuthorsKey"),
    }
    failures = [what for what, row in wrong_rows.items() if check_row(row, idx) is None]
    planted = {
        "case state = 8": "case state = 9",
        "open var doubleValue: Double { 0 }": "open var doubleValue: Double { 0 }\n    open func madeUp(x: Int) -> Int { 0 }",
        "open var multiArrayValue: MLMultiArray? { nil }": "open var multiArrayValue: MLMultiArray { fatalError() }",
    }
    for old, new in planted.items():
        keys = shim_keys(shim.replace(old, new, 1))
        if set(keys) == set(MAP) or old not in shim:
            failures.append(f"shim edit `{new.strip()}` went unnoticed")
    if set(shim_keys(shim)) != set(MAP):
        failures.append("the unedited shim does not match MAP")
    for f in failures:
        print("  SELF-TEST FAIL " + f)
    print(f"shim_check self-test: {len(wrong_rows) + len(planted)} planted mistakes, "
          f"{'all caught' if not failures else str(len(failures)) + ' missed'}")
    return 1 if failures else 0


def objc2_source() -> Path:
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--manifest-path", str(PIN)],
        check=True, capture_output=True, text=True,
    ).stdout
    for p in json.loads(out)["packages"]:
        if p["name"] == "objc2-core-ml":
            return Path(p["manifest_path"]).parent / "src"
    raise SystemExit("shim_check: objc2-core-ml not found in cargo metadata")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objc2", type=Path, help="objc2-core-ml's src/ (default: from cargo metadata)")
    ap.add_argument("--shim", type=Path, default=SHIM)
    ap.add_argument("--self-test", action="store_true", help="check that the checker catches planted mistakes")
    args = ap.parse_args()
    src = args.objc2 or objc2_source()
    idx = objc2_index(src)
    if args.self_test:
        return self_test(idx, args.shim.read_text())
    keys = shim_keys(args.shim.read_text())
    problems = []
    for key, line in sorted(keys.items(), key=lambda kv: kv[1]):
        if key not in MAP:
            problems.append(f"{args.shim.name}:{line}: `{key}` has no row in shim_check.py's MAP (name its Objective-C declaration)")
    for key in MAP:
        if key not in keys:
            problems.append(f"MAP row `{key}` names no declaration of the shim (remove it, or fix the key)")
    checked = 0
    for key, row in MAP.items():
        if key in keys:
            checked += 1
            err = check_row(row, idx)
            if err:
                problems.append(f"{args.shim.name}:{keys[key]}: `{key}`: {err}")
    print(f"shim_check: {len(keys)} shim declarations, {checked} checked against objc2-core-ml "
          f"({len(idx[0])} classes/protocols, {sum(len(v) for v in idx[1].values())} selectors in {src.parent.name})")
    for p in problems:
        print("  FAIL " + p)
    print(f"shim_check: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'ok'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

use super::*;
use crate::error::ErrorKind;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

const HEADER: &str = include_str!("../../../coreml-bridge/include/coreml_bridge.h");

/// Removes `/* ... */` comments.
fn strip_comments(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        match rest[start + 2..].find("*/") {
            Some(end) => rest = &rest[start + 2 + end + 2..],
            None => {
                rest = "";
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `(return type, name, [param types])` for every function prototype in the header.
fn header_functions() -> Vec<(String, String, Vec<String>)> {
    let text = strip_comments(HEADER);
    let norm = |s: &str| -> String {
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        s.replace(" *", "*").replace("* ", "*")
    };
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(pos) = rest.find("coreml_") {
        // A prototype: `<type> coreml_name(<params>);` at statement level.
        let before = &rest[..pos];
        let line_start = before.rfind([';', '}', '{', '\n']).map(|i| i + 1).unwrap_or(0);
        let after = &rest[pos..];
        let name_end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let name = &after[..name_end];
        let tail = after[name_end..].trim_start();
        let ret = norm(&rest[line_start..pos]);
        if tail.starts_with('(') && (ret == "void" || ret == "int32_t") {
            let close = tail.find(')').expect("closing parenthesis");
            let params = tail[1..close].trim();
            let params: Vec<String> = if params == "void" || params.is_empty() {
                Vec::new()
            } else {
                params
                    .split(',')
                    .map(|p| {
                        // Drop the parameter name: the last identifier.
                        let p = norm(p);
                        let cut = p
                            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .map(|i| i + 1)
                            .unwrap_or(0);
                        norm(&p[..cut])
                    })
                    .collect()
            };
            out.push((ret, name.to_string(), params));
            rest = &tail[close..];
        } else {
            rest = &after[name_end..];
        }
    }
    out
}

/// The Rust spelling we expect for each C type of the header.
fn rust_type(c: &str) -> &'static str {
    match c {
        "int32_t" => "i32",
        "int64_t" => "i64",
        "void" => "",
        "const char*" => "*const c_char",
        "char*" => "*mut c_char",
        "char**" => "*mut *mut c_char",
        "void*" => "*mut c_void",
        "void**" => "*mut *mut c_void",
        "const CoremlTensor*" => "*const CoremlTensor",
        "const CoremlBatchMember*" => "*const CoremlBatchMember",
        "const CoremlOutputBuffer*" => "*const CoremlOutputBuffer",
        "const CoremlFeature*" => "*const CoremlFeature",
        "const CoremlImage*" => "*const CoremlImage",
        "CoremlFeatureOutputs*" => "*mut CoremlFeatureOutputs",
        "CoremlFeatureOutputs**" => "*mut *mut CoremlFeatureOutputs",
        "CoremlOutputs*" => "*mut CoremlOutputs",
        "CoremlOutputs**" => "*mut *mut CoremlOutputs",
        other => panic!("C type `{other}` has no Rust mapping in this test: extend rust_type()"),
    }
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_header_function_is_declared_with_the_same_signature() {
    let header = header_functions();
    let names: Vec<&str> = header.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 20, "functions parsed from the header: {names:?}");
    let declared: BTreeMap<&str, &ffi::Signature> = ffi::SIGNATURES.iter().map(|s| (s.name, s)).collect();
    assert_eq!(
        declared.keys().copied().collect::<BTreeSet<_>>(),
        names.iter().copied().collect::<BTreeSet<_>>(),
        "functions declared in Rust vs in coreml_bridge.h"
    );
    for (ret, name, params) in &header {
        let sig = declared[name.as_str()];
        assert_eq!(squash(sig.ret), rust_type(ret), "return type of {name}");
        let want: Vec<&str> = params.iter().map(|p| rust_type(p)).collect();
        let got: Vec<String> = sig.params.iter().map(|p| squash(p)).collect();
        assert_eq!(got, want, "parameters of {name} (header: {params:?})");
    }
}

/// `NAME = value` or `#define NAME value` from the header.
fn header_constants() -> BTreeMap<String, i64> {
    let text = strip_comments(HEADER);
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim().trim_end_matches(',');
        let (name, value) = if let Some(rest) = line.strip_prefix("#define ") {
            let mut it = rest.split_whitespace();
            match (it.next(), it.next()) {
                (Some(n), Some(v)) => (n, v),
                _ => continue,
            }
        } else if let Some((n, v)) = line.split_once('=') {
            (n.trim(), v.trim())
        } else {
            continue;
        };
        if name.starts_with("COREML_") {
            if let Ok(v) = value.parse::<i64>() {
                map.insert(name.to_string(), v);
            }
        }
    }
    map
}

#[test]
fn every_header_constant_has_the_same_value() {
    let header = header_constants();
    let ours: BTreeMap<&str, i32> = [
        ("COREML_BRIDGE_ABI_VERSION", ffi::COREML_BRIDGE_ABI_VERSION),
        ("COREML_MAX_RANK", ffi::COREML_MAX_RANK),
        ("COREML_MAX_BATCH", ffi::COREML_MAX_BATCH),
        ("COREML_OK", ffi::COREML_OK),
        ("COREML_ERR_INVALID_ARGUMENT", ffi::COREML_ERR_INVALID_ARGUMENT),
        ("COREML_ERR_COMPILE", ffi::COREML_ERR_COMPILE),
        ("COREML_ERR_LOAD", ffi::COREML_ERR_LOAD),
        ("COREML_ERR_SCHEMA_MISMATCH", ffi::COREML_ERR_SCHEMA_MISMATCH),
        ("COREML_ERR_PREDICT", ffi::COREML_ERR_PREDICT),
        ("COREML_ERR_TIMEOUT", ffi::COREML_ERR_TIMEOUT),
        ("COREML_ERR_POISONED", ffi::COREML_ERR_POISONED),
        ("COREML_ERR_UNAVAILABLE", ffi::COREML_ERR_UNAVAILABLE),
        ("COREML_ERR_OUT_OF_MEMORY", ffi::COREML_ERR_OUT_OF_MEMORY),
        ("COREML_ERR_INTERNAL", ffi::COREML_ERR_INTERNAL),
        ("COREML_ERR_INVALID_HANDLE", ffi::COREML_ERR_INVALID_HANDLE),
        ("COREML_ERR_UNSUPPORTED", ffi::COREML_ERR_UNSUPPORTED),
        ("COREML_ERR_STATE_IN_USE", ffi::COREML_ERR_STATE_IN_USE),
        ("COREML_ERR_STATE_MISMATCH", ffi::COREML_ERR_STATE_MISMATCH),
        ("COREML_FEATURE_TENSOR", ffi::COREML_FEATURE_TENSOR),
        ("COREML_FEATURE_INT64", ffi::COREML_FEATURE_INT64),
        ("COREML_FEATURE_DOUBLE", ffi::COREML_FEATURE_DOUBLE),
        ("COREML_FEATURE_STRING", ffi::COREML_FEATURE_STRING),
        ("COREML_FEATURE_DICTIONARY", ffi::COREML_FEATURE_DICTIONARY),
        ("COREML_PIXEL_RGB8", ffi::COREML_PIXEL_RGB8),
        ("COREML_PIXEL_BGR8", ffi::COREML_PIXEL_BGR8),
        ("COREML_PIXEL_BGRA8", ffi::COREML_PIXEL_BGRA8),
        ("COREML_PIXEL_ARGB8", ffi::COREML_PIXEL_ARGB8),
        ("COREML_PIXEL_GRAY8", ffi::COREML_PIXEL_GRAY8),
        ("COREML_PIXEL_GRAY_F16", ffi::COREML_PIXEL_GRAY_F16),
        ("COREML_DTYPE_F32", ffi::COREML_DTYPE_F32),
        ("COREML_DTYPE_F16", ffi::COREML_DTYPE_F16),
        ("COREML_DTYPE_F64", ffi::COREML_DTYPE_F64),
        ("COREML_DTYPE_I32", ffi::COREML_DTYPE_I32),
        ("COREML_DTYPE_I8", ffi::COREML_DTYPE_I8),
        ("COREML_DTYPE_I64", ffi::COREML_DTYPE_I64),
        ("COREML_COMPUTE_ALL", ffi::COREML_COMPUTE_ALL),
        ("COREML_COMPUTE_CPU_ONLY", ffi::COREML_COMPUTE_CPU_ONLY),
        ("COREML_COMPUTE_CPU_AND_GPU", ffi::COREML_COMPUTE_CPU_AND_GPU),
        ("COREML_COMPUTE_CPU_AND_NE", ffi::COREML_COMPUTE_CPU_AND_NE),
    ]
    .into_iter()
    .collect();
    let header_names: BTreeSet<&str> = header.keys().map(String::as_str).collect();
    let our_names: BTreeSet<&str> = ours.keys().copied().collect();
    assert_eq!(our_names, header_names, "constants mirrored vs defined in the header");
    for (name, v) in &ours {
        assert_eq!(i64::from(*v), header[*name], "{name}");
    }
    // The Status enum covers exactly the header's status codes.
    for (name, v) in &header {
        if name.starts_with("COREML_OK") || name.starts_with("COREML_ERR_") {
            let s = Status::from_code(*v as i32);
            assert_eq!(s.c_name(), name, "Status for code {v}");
            assert_eq!(s.code(), *v as i32);
        }
    }
    assert_eq!(
        (0..=14).collect::<BTreeSet<i32>>().len(),
        header
            .keys()
            .filter(|n| n.starts_with("COREML_OK") || n.starts_with("COREML_ERR_"))
            .count()
    );
    // Compute units agree with the seam's own codes.
    for (u, code) in [
        (ComputeUnits::All, ffi::COREML_COMPUTE_ALL),
        (ComputeUnits::CpuOnly, ffi::COREML_COMPUTE_CPU_ONLY),
        (ComputeUnits::CpuAndGpu, ffi::COREML_COMPUTE_CPU_AND_GPU),
        (ComputeUnits::CpuAndNe, ffi::COREML_COMPUTE_CPU_AND_NE),
    ] {
        assert_eq!(u.ffi_code(), code, "{u}");
    }
}

#[test]
fn struct_layouts_match_the_c_compiler() {
    use std::mem::{offset_of, size_of};
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("layout.c");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("coreml-bridge/include");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include <stddef.h>
#include "coreml_bridge.h"
#define F(T, f) printf(#T "." #f " %zu\n", offsetof(T, f))
int main(void) {
  printf("CoremlTensor %zu\n", sizeof(CoremlTensor));
  F(CoremlTensor, name); F(CoremlTensor, dtype); F(CoremlTensor, rank); F(CoremlTensor, shape);
  F(CoremlTensor, strides); F(CoremlTensor, data); F(CoremlTensor, byte_len);
  printf("CoremlOutputTensor %zu\n", sizeof(CoremlOutputTensor));
  F(CoremlOutputTensor, name); F(CoremlOutputTensor, dtype); F(CoremlOutputTensor, rank);
  F(CoremlOutputTensor, shape); F(CoremlOutputTensor, data); F(CoremlOutputTensor, byte_len);
  printf("CoremlOutputs %zu\n", sizeof(CoremlOutputs));
  F(CoremlOutputs, count); F(CoremlOutputs, tensors); F(CoremlOutputs, reserved);
  printf("CoremlBatchMember %zu\n", sizeof(CoremlBatchMember));
  F(CoremlBatchMember, inputs); F(CoremlBatchMember, n_inputs);
  printf("CoremlOutputBuffer %zu\n", sizeof(CoremlOutputBuffer));
  F(CoremlOutputBuffer, name); F(CoremlOutputBuffer, dtype); F(CoremlOutputBuffer, rank); F(CoremlOutputBuffer, shape);
  F(CoremlOutputBuffer, strides); F(CoremlOutputBuffer, data); F(CoremlOutputBuffer, byte_len);
  printf("CoremlFeature %zu\n", sizeof(CoremlFeature));
  F(CoremlFeature, name); F(CoremlFeature, kind); F(CoremlFeature, tensor); F(CoremlFeature, int64_value);
  F(CoremlFeature, double_value); F(CoremlFeature, string_value);
  printf("CoremlOutputFeature %zu\n", sizeof(CoremlOutputFeature));
  F(CoremlOutputFeature, name); F(CoremlOutputFeature, kind); F(CoremlOutputFeature, tensor);
  F(CoremlOutputFeature, int64_value); F(CoremlOutputFeature, double_value); F(CoremlOutputFeature, string_value);
  F(CoremlOutputFeature, dict_count); F(CoremlOutputFeature, dict_key_kind); F(CoremlOutputFeature, dict_string_keys);
  F(CoremlOutputFeature, dict_int64_keys); F(CoremlOutputFeature, dict_values);
  printf("CoremlFeatureOutputs %zu\n", sizeof(CoremlFeatureOutputs));
  F(CoremlFeatureOutputs, count); F(CoremlFeatureOutputs, features); F(CoremlFeatureOutputs, reserved);
  printf("CoremlStatus %zu\n", sizeof(CoremlStatus));
  return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.path().join("layout");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = Command::new(&cc)
        .arg("-std=c11")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("running the C compiler `{cc}` (set CC to override): {e}"));
    assert!(status.success(), "compiling {} with {cc} failed", src.display());
    let out = Command::new(&exe).output().unwrap();
    assert!(out.status.success());
    let c: BTreeMap<String, usize> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    use ffi::{
        CoremlBatchMember as B, CoremlFeature as Fe, CoremlFeatureOutputs as Fos, CoremlOutputBuffer as Ob,
        CoremlOutputFeature as Of, CoremlOutputTensor as O, CoremlOutputs as Os, CoremlTensor as T,
    };
    let rust: BTreeMap<String, usize> = [
        ("CoremlTensor", size_of::<T>()),
        ("CoremlTensor.name", offset_of!(T, name)),
        ("CoremlTensor.dtype", offset_of!(T, dtype)),
        ("CoremlTensor.rank", offset_of!(T, rank)),
        ("CoremlTensor.shape", offset_of!(T, shape)),
        ("CoremlTensor.strides", offset_of!(T, strides)),
        ("CoremlTensor.data", offset_of!(T, data)),
        ("CoremlTensor.byte_len", offset_of!(T, byte_len)),
        ("CoremlOutputTensor", size_of::<O>()),
        ("CoremlOutputTensor.name", offset_of!(O, name)),
        ("CoremlOutputTensor.dtype", offset_of!(O, dtype)),
        ("CoremlOutputTensor.rank", offset_of!(O, rank)),
        ("CoremlOutputTensor.shape", offset_of!(O, shape)),
        ("CoremlOutputTensor.data", offset_of!(O, data)),
        ("CoremlOutputTensor.byte_len", offset_of!(O, byte_len)),
        ("CoremlOutputs", size_of::<Os>()),
        ("CoremlOutputs.count", offset_of!(Os, count)),
        ("CoremlOutputs.tensors", offset_of!(Os, tensors)),
        ("CoremlOutputs.reserved", offset_of!(Os, reserved)),
        ("CoremlFeature", size_of::<Fe>()),
        ("CoremlFeature.name", offset_of!(Fe, name)),
        ("CoremlFeature.kind", offset_of!(Fe, kind)),
        ("CoremlFeature.tensor", offset_of!(Fe, tensor)),
        ("CoremlFeature.int64_value", offset_of!(Fe, int64_value)),
        ("CoremlFeature.double_value", offset_of!(Fe, double_value)),
        ("CoremlFeature.string_value", offset_of!(Fe, string_value)),
        ("CoremlOutputFeature", size_of::<Of>()),
        ("CoremlOutputFeature.name", offset_of!(Of, name)),
        ("CoremlOutputFeature.kind", offset_of!(Of, kind)),
        ("CoremlOutputFeature.tensor", offset_of!(Of, tensor)),
        ("CoremlOutputFeature.int64_value", offset_of!(Of, int64_value)),
        ("CoremlOutputFeature.double_value", offset_of!(Of, double_value)),
        ("CoremlOutputFeature.string_value", offset_of!(Of, string_value)),
        ("CoremlOutputFeature.dict_count", offset_of!(Of, dict_count)),
        ("CoremlOutputFeature.dict_key_kind", offset_of!(Of, dict_key_kind)),
        ("CoremlOutputFeature.dict_string_keys", offset_of!(Of, dict_string_keys)),
        ("CoremlOutputFeature.dict_int64_keys", offset_of!(Of, dict_int64_keys)),
        ("CoremlOutputFeature.dict_values", offset_of!(Of, dict_values)),
        ("CoremlFeatureOutputs", size_of::<Fos>()),
        ("CoremlFeatureOutputs.count", offset_of!(Fos, count)),
        ("CoremlFeatureOutputs.features", offset_of!(Fos, features)),
        ("CoremlFeatureOutputs.reserved", offset_of!(Fos, reserved)),
        ("CoremlBatchMember", size_of::<B>()),
        ("CoremlBatchMember.inputs", offset_of!(B, inputs)),
        ("CoremlBatchMember.n_inputs", offset_of!(B, n_inputs)),
        ("CoremlOutputBuffer", size_of::<Ob>()),
        ("CoremlOutputBuffer.name", offset_of!(Ob, name)),
        ("CoremlOutputBuffer.dtype", offset_of!(Ob, dtype)),
        ("CoremlOutputBuffer.rank", offset_of!(Ob, rank)),
        ("CoremlOutputBuffer.shape", offset_of!(Ob, shape)),
        ("CoremlOutputBuffer.strides", offset_of!(Ob, strides)),
        ("CoremlOutputBuffer.data", offset_of!(Ob, data)),
        ("CoremlOutputBuffer.byte_len", offset_of!(Ob, byte_len)),
        // The enums cross as int32_t; the C enum type itself must fit.
        ("CoremlStatus", size_of::<i32>()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(rust, c, "Rust layouts (left) vs the C compiler's (right)");
}

#[test]
fn every_status_maps_to_its_error_kind() {
    let t = Duration::from_millis(250);
    let kind = |s: Status, op: Operation| status_to_error(s, op, "m.mlmodelc", "why", t).kind();
    assert_eq!(
        kind(Status::InvalidArgument, Operation::Compile),
        ErrorKind::InvalidArtifact
    );
    assert_eq!(
        kind(Status::InvalidArgument, Operation::Load),
        ErrorKind::InvalidArtifact
    );
    assert_eq!(kind(Status::InvalidArgument, Operation::Predict), ErrorKind::Internal);
    assert_eq!(kind(Status::Compile, Operation::Compile), ErrorKind::Compile);
    assert_eq!(kind(Status::Load, Operation::Load), ErrorKind::Load);
    assert_eq!(kind(Status::Load, Operation::ComputePlan), ErrorKind::Load);
    assert_eq!(
        kind(Status::SchemaMismatch, Operation::Predict),
        ErrorKind::SchemaMismatch
    );
    assert_eq!(kind(Status::Predict, Operation::Predict), ErrorKind::Internal);
    assert_eq!(kind(Status::Timeout, Operation::Predict), ErrorKind::Timeout);
    assert_eq!(kind(Status::Poisoned, Operation::Predict), ErrorKind::Load);
    assert_eq!(kind(Status::Unavailable, Operation::Load), ErrorKind::Unavailable);
    assert_eq!(kind(Status::OutOfMemory, Operation::Predict), ErrorKind::MemoryPressure);
    assert_eq!(kind(Status::Internal, Operation::Predict), ErrorKind::Internal);
    assert_eq!(kind(Status::InvalidHandle, Operation::Predict), ErrorKind::Internal);
    assert_eq!(kind(Status::Unsupported, Operation::Predict), ErrorKind::Unsupported);
    assert_eq!(kind(Status::StateInUse, Operation::Predict), ErrorKind::Unavailable);
    assert_eq!(
        kind(Status::StateMismatch, Operation::Predict),
        ErrorKind::SchemaMismatch
    );
    assert_eq!(kind(Status::Unknown(99), Operation::Predict), ErrorKind::Internal);
    assert_eq!(kind(Status::Ok, Operation::Predict), ErrorKind::Internal);

    let e = status_to_error(Status::Timeout, Operation::Predict, "m.mlmodelc", "late", t);
    assert_eq!(e.to_string(), "prediction of m.mlmodelc timed out after 250ms");
    let e = status_to_error(Status::Unknown(99), Operation::Load, "m", "?", t).to_string();
    assert!(e.contains("status 99") && e.contains("expected one of 0..=14"), "{e}");
    let b = BridgeError::new(Status::Poisoned, Operation::Predict, "m", "poisoned", t);
    assert!(b.is_poisoned());
    assert!(b.to_string().contains("COREML_ERR_POISONED"), "{b}");
    assert!(b.to_string().contains("load it again"), "{b}");
    for code in (0..=14).collect::<BTreeSet<i32>>() {
        assert_eq!(Status::from_code(code).code(), code);
        assert_ne!(Status::from_code(code), Status::Unknown(code));
    }
    assert_eq!(Status::from_code(15), Status::Unknown(15));
}

#[test]
fn a_bridge_of_another_abi_version_is_refused_naming_both_versions() {
    assert_eq!(ffi::COREML_BRIDGE_ABI_VERSION, 2);
    assert!(check_abi_version(2).is_ok());
    for got in [0, 1, 3] {
        let e = check_abi_version(got).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal);
        let text = e.to_string();
        assert!(
            text.contains("this crate speaks version 2") && text.contains(&format!("speaks version {got}")),
            "{text}"
        );
        assert!(text.contains("rebuild the Swift library"), "{text}");
    }
}

#[test]
fn timeouts_round_up_to_whole_milliseconds() {
    assert_eq!(timeout_ms(Duration::ZERO), 1);
    assert_eq!(timeout_ms(Duration::from_nanos(1)), 1);
    assert_eq!(timeout_ms(Duration::from_micros(1500)), 2);
    assert_eq!(timeout_ms(Duration::from_millis(250)), 250);
    assert_eq!(timeout_ms(Duration::MAX), i64::MAX);
}

#[test]
fn dtype_codes_round_trip() {
    for d in DType::ALL {
        match dtype_code(d) {
            Some(code) => assert_eq!(dtype_from_code(code), Some(d)),
            None => assert_eq!(d, DType::U8),
        }
    }
    assert_eq!(dtype_from_code(0), None);
    assert_eq!(dtype_from_code(7), None);
}

#[test]
fn inputs_the_bridge_would_refuse_are_refused_here_with_expected_and_got() {
    let one = |t: Tensor| TensorMap::from([("x".to_string(), t)]);
    let err = |m: TensorMap| marshal_inputs(&m, "m").err().unwrap();

    let e = err(one(Tensor::from_vec(vec![2], vec![1u8, 2]).unwrap()));
    assert_eq!(e.kind(), ErrorKind::SchemaMismatch);
    assert!(e.to_string().contains("got u8"), "{e}");
    let e = err(one(Tensor::from_vec(vec![1], vec![1i64]).unwrap()));
    assert!(e.to_string().contains("got i64"), "{e}");
    let e = err(one(Tensor::from_vec(vec![], vec![1.0f32]).unwrap()));
    assert!(e.to_string().contains("expected 1..=16 dimensions, got 0"), "{e}");
    let e = err(one(Tensor::from_vec(vec![1; 17], vec![1.0f32]).unwrap()));
    assert!(e.to_string().contains("got 17"), "{e}");
    let e = err(one(Tensor::zeros(DType::F32, vec![2, 0]).unwrap()));
    assert!(e.to_string().contains("got [2, 0]"), "{e}");
    let e = err(TensorMap::new());
    assert!(e.to_string().contains("expected 1..=4096, got 0"), "{e}");
    let e = err(TensorMap::from([(
        "a\0b".to_string(),
        Tensor::from_vec(vec![1], vec![1.0f32]).unwrap(),
    )]));
    assert!(e.to_string().contains("NUL"), "{e}");
}

#[test]
fn descriptors_point_at_the_callers_bytes_row_major() {
    let a = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let b = Tensor::from_vec(vec![4], vec![1i8, 2, 3, 4]).unwrap();
    let m = TensorMap::from([("a".to_string(), a), ("b".to_string(), b)]);
    let mi = marshal_inputs(&m, "m").unwrap();
    assert_eq!(mi.descriptors.len(), 2);
    for (d, (name, t)) in mi.descriptors.iter().zip(&m) {
        // SAFETY: the descriptors point into `mi` and `m`, both alive.
        unsafe {
            assert_eq!(CStr::from_ptr(d.name).to_str().unwrap(), name);
            let shape = std::slice::from_raw_parts(d.shape, d.rank as usize);
            assert_eq!(shape, t.shape().iter().map(|&x| x as i64).collect::<Vec<_>>());
        }
        assert_eq!(d.dtype, dtype_code(t.dtype()).unwrap());
        assert!(d.strides.is_null());
        assert_eq!(d.data, t.as_bytes().as_ptr().cast());
        assert_eq!(d.byte_len, t.as_bytes().len() as u64);
    }
}

fn outputs_of(tensors: &[ffi::CoremlOutputTensor]) -> ffi::CoremlOutputs {
    ffi::CoremlOutputs {
        count: tensors.len() as i32,
        tensors: tensors.as_ptr(),
        reserved: ptr::null_mut(),
    }
}

#[test]
fn outputs_are_copied_and_every_broken_promise_is_an_internal_error() {
    let name = CString::new("y").unwrap();
    let shape = [2i64, 2];
    let data = [1.0f32, 2.0, 3.0, 4.0];
    let good = ffi::CoremlOutputTensor {
        name: name.as_ptr(),
        dtype: ffi::COREML_DTYPE_F32,
        rank: 2,
        shape: shape.as_ptr(),
        data: data.as_ptr().cast(),
        byte_len: 16,
    };
    let read = |t: &[ffi::CoremlOutputTensor]| {
        let o = outputs_of(t);
        // SAFETY: every pointer points into live locals of this test.
        unsafe { read_outputs(&o, "m") }
    };
    let m = read(&[good]).unwrap();
    assert_eq!(m["y"].shape(), &[2, 2]);
    assert_eq!(m["y"].to_vec::<f32>().unwrap(), data);

    let broken = [
        (
            ffi::CoremlOutputTensor { byte_len: 12, ..good },
            "expected byte_len 16, got 12",
        ),
        (ffi::CoremlOutputTensor { dtype: 9, ..good }, "got 9"),
        (
            ffi::CoremlOutputTensor { rank: 0, ..good },
            "expected rank 1..=16, got 0",
        ),
        (
            ffi::CoremlOutputTensor {
                name: ptr::null(),
                ..good
            },
            "NULL name",
        ),
        (
            ffi::CoremlOutputTensor {
                shape: ptr::null(),
                ..good
            },
            "NULL shape",
        ),
        (
            ffi::CoremlOutputTensor {
                data: ptr::null(),
                ..good
            },
            "NULL data",
        ),
    ];
    for (t, want) in broken {
        let e = read(&[t]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(e.to_string().contains(want), "{e} (wanted `{want}`)");
    }
    let e = read(&[good, good]).unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    // SAFETY: NULL is allowed by read_outputs' contract.
    let e = unsafe { read_outputs(ptr::null(), "m") }.unwrap_err();
    assert!(e.to_string().contains("got NULL"), "{e}");
}

#[test]
fn schema_json_becomes_an_io_schema() {
    let json = r#"{
      "inputs": [
        {"name": "ids", "feature_type": "multiArray", "optional": false, "dtype": "i32", "dtype_code": 4,
         "shape": [1, 8], "shape_constraint": {"type": "range",
           "ranges": [{"lower": 1, "upper": 4}, {"lower": 1, "upper": null}]}},
        {"name": "image", "feature_type": "multiArray", "optional": false, "dtype": "f16", "dtype_code": 2,
         "shape": [1, 3, 32, 32], "shape_constraint": {"type": "enumerated",
           "enumerated_shapes": [[1, 3, 32, 32], [1, 3, 64, 64]]}},
        {"name": "label", "feature_type": "string", "optional": true, "dtype": null, "dtype_code": null,
         "shape": [], "shape_constraint": {"type": "none"}}
      ],
      "outputs": [
        {"name": "score", "feature_type": "double", "optional": false, "dtype": "f64", "dtype_code": 3,
         "shape": [1], "shape_constraint": {"type": "unspecified"}}
      ],
      "metadata": {"author": "a", "description": "d", "version": "1", "license": "MIT",
                   "user_defined": {"k": "v"}}
    }"#;
    let s: BridgeSchema = serde_json::from_str(json).unwrap();
    assert_eq!(s.metadata.user_defined["k"], "v");
    let io = s.to_io_schema();
    assert_eq!(io.inputs.len(), 2, "the string input has no tensor spec");
    let ids = io.input("ids").unwrap();
    assert_eq!(ids.dtype, DType::I32);
    assert_eq!(ids.constraint, ShapeConstraint::Range(vec![(1, Some(4)), (1, None)]));
    assert!(ids.batch_capable);
    assert!(ids.accepts_shape(&[3, 100]));
    let image = io.input("image").unwrap();
    assert_eq!(image.dtype, DType::F16);
    assert!(!image.batch_capable, "every enumerated shape has batch 1");
    assert_eq!(io.outputs[0].dtype, DType::F64);
    assert_eq!(io.outputs[0].constraint, ShapeConstraint::Fixed);
    assert_eq!(
        s.describe_inputs(),
        "[ids: i32 [1..=4, 1..], image: f16 one of [[1, 3, 32, 32], [1, 3, 64, 64]], label: string any shape \
         (optional)]"
    );
}

#[test]
fn compute_plan_json_gives_the_neural_engine_share_and_units() {
    let json = r#"{"model_type": "program", "operations": [
        {"function": "main", "index": 0, "operator": "conv", "outputs": ["a"],
         "preferred_device": "neural_engine", "supported_devices": ["cpu", "neural_engine"], "estimated_cost": 0.7},
        {"function": "main", "index": 1, "operator": "softmax", "outputs": ["b"],
         "preferred_device": "cpu", "supported_devices": ["cpu"], "estimated_cost": null},
        {"function": "main", "index": 2, "operator": "relu", "outputs": ["c"],
         "preferred_device": "neural_engine", "supported_devices": ["neural_engine"], "estimated_cost": 0.1}
      ], "device_counts": {"cpu": 1, "gpu": 0, "neural_engine": 2, "unknown": 0}}"#;
    let p: ComputePlan = serde_json::from_str(json).unwrap();
    assert_eq!(p.operations.len(), 3);
    assert_eq!(p.neural_engine_pct(), Some(67));
    assert_eq!(p.units_in_use(), Some(ComputeUnits::CpuAndNe));
    let mut q = p.clone();
    q.device_counts = DeviceCounts {
        cpu: 3,
        ..DeviceCounts::default()
    };
    assert_eq!(
        (q.neural_engine_pct(), q.units_in_use()),
        (Some(0), Some(ComputeUnits::CpuOnly))
    );
    q.device_counts.gpu = 1;
    q.device_counts.neural_engine = 1;
    assert_eq!(q.units_in_use(), Some(ComputeUnits::All));
    q.device_counts = DeviceCounts::default();
    assert_eq!((q.neural_engine_pct(), q.units_in_use()), (None, None));
}

#[test]
fn runtime_info_json_parses() {
    let json = r#"{"bridge_abi_version": 1, "platform": "Linux", "os_version": "Linux 6.1", "os_build": null,
      "chip": "AMD EPYC", "coreml_available": false, "coreml_version": null, "neural_engine_present": null,
      "neural_engine_cores": null, "compute_plan_available": false, "test_runtime": true,
      "reason": "Core ML is not available on this platform (Linux)"}"#;
    let info: RuntimeInfo = serde_json::from_str(json).unwrap();
    assert!(!info.coreml_available && info.test_runtime);
    assert_eq!(
        info.reason.as_deref(),
        Some("Core ML is not available on this platform (Linux)")
    );
}

#[cfg(not(coreml_bridge))]
#[test]
fn without_the_bridge_every_wrapper_answers_unavailable() {
    assert!(!is_linked());
    assert_eq!(abi_version(), 0);
    let check_unavailable = |e: BridgeError| {
        assert_eq!(e.status(), Status::Unavailable);
        assert_eq!(e.error().kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("no Core ML bridge"), "{e}");
    };
    check_unavailable(runtime_info().unwrap_err());
    check_unavailable(compile_model(Path::new("a.mlpackage"), Path::new("/tmp"), Duration::from_secs(1)).unwrap_err());
    check_unavailable(
        BridgeModel::load(Path::new("a.mlmodelc"), ComputeUnits::All, Duration::from_secs(1)).unwrap_err(),
    );
    check_unavailable(compute_plan(Path::new("a.mlmodelc"), ComputeUnits::All, Duration::from_secs(1)).unwrap_err());
    assert_eq!(check_abi().unwrap_err().kind(), ErrorKind::Unavailable);
}

//! Helpers shared by the interpreter's unit tests: the committed conformance
//! fixtures (`tests/fixtures/conformance/<family>/<case>`), run as they are or
//! built from a copy whose program a test has edited.

use std::path::PathBuf;

use coreml_proto::proto::mil_spec;
use coreml_proto::proto::{model, Model};
use prost::Message;

use crate::mil::{FloatPolicy, Plan};
use crate::mlpackage::MlPackage;
use crate::tensor::{Tensor, TensorMap};

/// The package of conformance case `case` (`family/name`).
pub(crate) fn package_path(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/conformance")
        .join(case)
        .join("model.mlpackage")
}

/// A conformance case's input `x` and its reference output `y` (numpy), as f32.
pub(crate) fn case_x_and_y(case: &str) -> (Tensor, Vec<f32>) {
    let path = package_path(case);
    let dir = path.parent().expect("a case's package has a directory");
    let x = Tensor::read_npy(dir.join("inputs/x.npy")).unwrap();
    let y = Tensor::read_npy(dir.join("expected/y.npy")).unwrap().to_f32_vec();
    (x, y)
}

/// Runs conformance case `case` (`family/name`) on `items`, built under the
/// upcast policy.
pub(crate) fn run_case(case: &str, items: Vec<(&str, Tensor)>) -> crate::Result<TensorMap> {
    let plan = Plan::build(&MlPackage::open(package_path(case)).unwrap(), FloatPolicy::Upcast).unwrap();
    plan.run(&items.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Builds (native policy) a copy of case `case` whose main block `edit`
/// changed; returns the build's error, which the edit must provoke.
pub(crate) fn build_edited(case: &str, edit: impl FnOnce(&mut mil_spec::Block)) -> crate::Error {
    build_edited_result(case, edit)
        .err()
        .unwrap_or_else(|| panic!("{case}: the edited program must be refused at build"))
}

/// Builds (native policy) a copy of case `case` whose main block `edit`
/// changed: the plan, or the build's error.
pub(crate) fn build_edited_result(case: &str, edit: impl FnOnce(&mut mil_spec::Block)) -> crate::Result<Plan> {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("m.mlpackage");
    crate::cache::fsx::copy_tree(&package_path(case), &dst).unwrap();
    let spec_path = dst.join("Data/com.apple.CoreML/model.mlmodel");
    let mut spec = Model::decode(std::fs::read(&spec_path).unwrap().as_slice()).unwrap();
    let Some(model::Type::MlProgram(p)) = &mut spec.r#type else {
        panic!("{case}: not an ML Program")
    };
    let main = p.functions.get_mut("main").unwrap();
    edit(main.block_specializations.values_mut().next().unwrap());
    std::fs::write(&spec_path, spec.encode_to_vec()).unwrap();
    Plan::build(&MlPackage::open(&dst).unwrap(), FloatPolicy::Native)
}

use super::*;
use crate::tensor::Tensor;

#[test]
fn slope_and_cv() {
    let xs = [0.0, 1.0, 2.0, 3.0];
    let ys = [10.0, 12.0, 14.0, 16.0];
    assert!((least_squares_slope(&xs, &ys).unwrap() - 2.0).abs() < 1e-12);
    assert_eq!(least_squares_slope(&[1.0, 1.0], &[0.0, 5.0]), None);
    assert!((coefficient_of_variation(&[10.0, 10.0, 10.0]).unwrap()).abs() < 1e-12);
    let cv = coefficient_of_variation(&[5.0, 15.0]).unwrap();
    assert!((cv - 0.5).abs() < 1e-12, "{cv}");
    let mut d: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
    assert_eq!(percentile(&mut d, 0.99), Some(Duration::from_millis(99)));
    assert_eq!(percentile(&mut d, 0.5), Some(Duration::from_millis(50)));
}

#[test]
fn local_parity() {
    let t = |v: Vec<f32>| TensorMap::from([("y".to_string(), Tensor::from_vec(vec![v.len()], v).unwrap())]);
    let ok = linf_rmse(&t(vec![1.0, 2.0]), &t(vec![1.0, 2.001]), ParityThresholds::fp16());
    assert!(ok.passed, "{ok:?}");
    assert!((ok.max_abs - 0.001).abs() < 1e-6);
    let bad = linf_rmse(&t(vec![1.0, 2.5]), &t(vec![1.0, 2.0]), ParityThresholds::fp16());
    assert!(!bad.passed && bad.detail.contains("L∞"), "{bad:?}");
    let missing = linf_rmse(&TensorMap::new(), &t(vec![1.0]), ParityThresholds::fp16());
    assert!(!missing.passed && missing.detail.contains("missing"), "{missing:?}");
    let nan = linf_rmse(&t(vec![f32::NAN]), &t(vec![1.0]), ParityThresholds::fp16());
    assert!(!nan.passed, "{nan:?}");
}

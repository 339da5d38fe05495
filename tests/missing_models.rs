//! Without downloaded models, tests and tools fail with an actionable message
//! (own test binary: it points APPLE_SILICON_MODELS at an empty directory).

#[test]
fn missing_downloads_say_how_to_get_them() {
    let empty = tempfile::tempdir().unwrap();
    // SAFETY: this binary has a single test, so no other thread reads the environment.
    unsafe { std::env::set_var(apple_silicon::golden::MODELS_DIR_ENV, empty.path()) };
    let e = apple_silicon::golden::downloaded("mobilenet_v2_fp32").unwrap_err();
    assert_eq!(e.kind(), apple_silicon::ErrorKind::Unavailable);
    let msg = e.to_string();
    assert!(msg.contains("run `make download-models`"), "{msg}");
    assert!(msg.contains("mobilenet_v2_fp32"), "{msg}");
}

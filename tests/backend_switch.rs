//! The plan's build switches, observed from outside: `inference_backend`
//! follows the `coreml` feature, and `COREML_FORCE_ENABLE` reaches the
//! breaker through the environment. One binary of its own, one test, so
//! setting the variable races with no other test.

use std::time::Duration;

use apple_silicon::breaker::{BreakerState, CallOutcome, CircuitBreaker, FORCE_ENABLE_ENV};
use apple_silicon::{BreakerConfig, ErrorKind, InferenceEngine};

fn failing_calls(b: &CircuitBreaker, n: usize) {
    for _ in 0..n {
        let route = b.admit();
        b.record(
            route,
            CallOutcome::failed(ErrorKind::Internal, Duration::from_millis(1)),
        );
    }
}

#[test]
fn backend_follows_the_feature_and_force_enable_follows_the_environment() {
    let engine = apple_silicon::inference_backend::Engine::new();
    let want = if cfg!(feature = "coreml") { "coreml" } else { "candle" };
    assert_eq!(engine.name(), want);

    let config = || BreakerConfig::default().with_window(10).with_min_calls(10);
    // Unset: ten failures trip the breaker.
    std::env::remove_var(FORCE_ENABLE_ENV);
    let b = CircuitBreaker::new("env-unset", config());
    failing_calls(&b, 10);
    let s = b.stats();
    assert_eq!((s.state, s.forced), (BreakerState::Open, false), "{s:?}");

    // Set: a new breaker reads it and only logs its trips.
    std::env::set_var(FORCE_ENABLE_ENV, "yes");
    let forced = CircuitBreaker::new("env-set", config());
    failing_calls(&forced, 30);
    let s = forced.stats();
    assert_eq!((s.state, s.forced), (BreakerState::Closed, true), "{s:?}");
    assert!(s.suppressed_trips >= 1, "{s:?}");

    // A manual reset re-reads it: the tripped breaker comes back forced.
    b.reset();
    assert!(b.stats().forced);
    // A config that ignores the environment is not forced by it.
    let ignoring = CircuitBreaker::new("env-ignored", config().with_env_override(false));
    failing_calls(&ignoring, 10);
    assert_eq!(ignoring.stats().state, BreakerState::Open);

    // Unset again: reset clears the override.
    std::env::set_var(FORCE_ENABLE_ENV, "0");
    b.reset();
    assert!(!b.stats().forced);
    std::env::remove_var(FORCE_ENABLE_ENV);
}

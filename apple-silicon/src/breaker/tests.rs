use super::*;

fn cfg() -> BreakerConfig {
    BreakerConfig::default().with_env_override(false)
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn nothing_trips_before_min_calls() {
    let b = CircuitBreaker::new("b", cfg());
    for _ in 0..9 {
        assert_eq!(b.admit(), Route::Primary);
        b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.admit(), Route::Fallback);
    let s = b.stats();
    assert_eq!(s.trips, 1);
    assert!(
        matches!(s.last_trip, Some(TripReason::SuccessRate { calls: 10, .. })),
        "{s:?}"
    );
}

#[test]
fn one_failure_in_the_first_ten_is_over_five_percent() {
    let b = CircuitBreaker::new("b", cfg());
    b.record(Route::Primary, CallOutcome::failed(ErrorKind::Timeout, MS));
    for _ in 0..8 {
        b.record(Route::Primary, CallOutcome::ok(MS));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    b.record(Route::Primary, CallOutcome::ok(MS));
    assert_eq!(b.state(), BreakerState::Open, "9/10 = 90% < 95%");
}

#[test]
fn sliding_window_forgets_old_failures() {
    let b = CircuitBreaker::new("b", cfg().with_window(20).with_min_calls(20));
    // 1 failure in 20 = 95%: not under the minimum.
    b.record(Route::Primary, CallOutcome::failed(ErrorKind::Timeout, MS));
    for _ in 0..19 {
        b.record(Route::Primary, CallOutcome::ok(MS));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.stats().window_success_rate, Some(0.95));
    b.record(Route::Primary, CallOutcome::ok(MS));
    assert_eq!(b.stats().window_success_rate, Some(1.0), "the failure slid out");
}

#[test]
fn p99_over_sla_three_times_trips() {
    let b = CircuitBreaker::new("b", cfg().with_sla(Duration::from_millis(20)));
    // Evaluations at calls 100, 110 and 120.
    for i in 1..=119 {
        b.record(Route::Primary, CallOutcome::ok(Duration::from_millis(30)));
        assert_eq!(b.state(), BreakerState::Closed, "call {i}");
    }
    assert_eq!(b.stats().sla_violations, 2);
    b.record(Route::Primary, CallOutcome::ok(Duration::from_millis(30)));
    assert_eq!(b.state(), BreakerState::Open);
    assert!(matches!(
        b.stats().last_trip,
        Some(TripReason::SlaP99 { violations: 3, .. })
    ));
}

#[test]
fn a_cold_start_or_a_rare_slow_call_does_not_trip() {
    let b = CircuitBreaker::new("b", cfg().with_sla(Duration::from_millis(20)));
    for i in 0..1000 {
        let d = if i % 250 == 0 { 500 } else { 5 }; // 0.4% slow
        b.record(Route::Primary, CallOutcome::ok(Duration::from_millis(d)));
    }
    assert_eq!(b.state(), BreakerState::Closed, "{:?}", b.stats());
}

#[test]
fn memory_over_the_limit_trips() {
    let mem = Arc::new(std::sync::atomic::AtomicU64::new(100));
    let m = mem.clone();
    let b = CircuitBreaker::new(
        "b",
        cfg()
            .with_memory_limit(1000)
            .with_memory_probe(Arc::new(move || Some(m.load(Ordering::SeqCst)))),
    );
    b.record(Route::Primary, CallOutcome::ok(MS));
    assert_eq!(b.state(), BreakerState::Closed);
    mem.store(1001, Ordering::SeqCst);
    b.record(Route::Primary, CallOutcome::ok(MS));
    assert_eq!(b.state(), BreakerState::Open, "memory trips even before min_calls");
    assert_eq!(
        b.stats().last_trip,
        Some(TripReason::Memory {
            high_water_bytes: 1001,
            limit_bytes: 1000
        })
    );
}

#[test]
fn forced_on_only_counts_trips() {
    let b = CircuitBreaker::new("b", cfg().with_force_enable(true));
    for _ in 0..30 {
        assert_eq!(b.admit(), Route::Primary);
        b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
    }
    let s = b.stats();
    assert_eq!(
        (s.state, s.trips, s.suppressed_trips),
        (BreakerState::Closed, 0, 3),
        "{s:?}"
    );
}

#[test]
fn env_values() {
    assert!(force_enable_requested(Some("1")));
    assert!(force_enable_requested(Some(" TRUE ")));
    assert!(!force_enable_requested(Some("0")));
    assert!(!force_enable_requested(Some("")));
    assert!(!force_enable_requested(None));
}

#[test]
fn half_open_backoff_doubles_and_probes_close() {
    let policy = ReenablePolicy::HalfOpen {
        initial_backoff: Duration::from_millis(40),
        max_backoff: Duration::from_millis(100),
        probes_to_close: 2,
    };
    let b = CircuitBreaker::new("b", cfg().with_policy(policy).with_min_calls(1));
    b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
    assert_eq!(b.admit(), Route::Fallback, "backoff not over yet");
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(b.admit(), Route::Probe);
    assert_eq!(b.admit(), Route::Fallback, "one probe at a time");
    b.record(Route::Probe, CallOutcome::failed(ErrorKind::Timeout, MS));
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.stats().backoff, Duration::from_millis(80));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(b.admit(), Route::Fallback, "the doubled backoff is not over");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(b.admit(), Route::Probe);
    b.record(Route::Probe, CallOutcome::failed(ErrorKind::Timeout, MS));
    assert_eq!(b.stats().backoff, Duration::from_millis(100), "capped");
    std::thread::sleep(Duration::from_millis(120));
    assert_eq!(b.admit(), Route::Probe);
    b.record(Route::Probe, CallOutcome::ok(MS));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.admit(), Route::Probe);
    b.record(Route::Probe, CallOutcome::ok(MS));
    assert_eq!(b.state(), BreakerState::Closed);
    let s = b.stats();
    assert_eq!((s.trips, s.probes, s.probe_failures, s.closes), (1, 4, 2, 1), "{s:?}");
    assert_eq!(s.backoff, Duration::from_millis(40), "backoff resets on close");
}

#[test]
fn manual_policy_never_probes_until_reset() {
    let b = CircuitBreaker::new("b", cfg().with_min_calls(1));
    b.record(Route::Primary, CallOutcome::failed(ErrorKind::Internal, MS));
    std::thread::sleep(Duration::from_millis(30));
    for _ in 0..100 {
        assert_eq!(b.admit(), Route::Fallback);
    }
    b.reset();
    assert_eq!(b.admit(), Route::Primary);
    let s = b.stats();
    assert_eq!((s.state, s.manual_resets, s.window_calls), (BreakerState::Closed, 1, 0));
}

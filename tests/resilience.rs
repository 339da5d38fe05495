//! The resilience layer end to end, through the public API only: the
//! circuit breaker and `ResilientEngine` over fault-injected engines, the
//! deadline guard, the async form and telemetry snapshots. No model files:
//! every engine is an echo engine, with or without faults.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apple_silicon::breaker::{BreakerState, Served, TripReason};
use apple_silicon::deadline::{infer_async, GuardedEngine};
use apple_silicon::telemetry::{Failure, RegistrySnapshot};
use apple_silicon::testing::{fake_artifact, process_threads, EchoEngine, FaultHandle, FaultyEngine, Pattern};
use apple_silicon::{
    BreakerConfig, DeadlineRunner, ErrorKind, InferenceEngine, PrepareOptions, PreparedModel, ReenablePolicy,
    ResilientEngine,
};
use common::{expected, input, schema, wait_for, MARGIN};

const T: Duration = Duration::from_secs(2);

/// A resilient engine over a faulty "coreml" primary and an echo "candle"
/// fallback, with handles to count what each did.
struct Rig {
    engine: ResilientEngine,
    model: Box<dyn PreparedModel>,
    primary: FaultHandle,
    fallback_calls: Arc<AtomicU64>,
}

fn rig(primary: FaultyEngine, configure: impl FnOnce(ResilientEngine) -> ResilientEngine) -> Rig {
    let handle = primary.handle();
    let fallback = EchoEngine::new("candle", schema());
    let fallback_calls = fallback.call_counter();
    let engine = configure(
        ResilientEngine::new(Box::new(primary), Box::new(fallback))
            .with_breaker(BreakerConfig::default().with_env_override(false)),
    );
    let model = engine
        .prepare(
            &fake_artifact("mlp"),
            PrepareOptions::default().with_sla(Duration::from_secs(1)),
        )
        .unwrap();
    Rig {
        engine,
        model,
        primary: handle,
        fallback_calls,
    }
}

fn primary() -> FaultyEngine {
    FaultyEngine::echo("coreml", schema())
}

fn served(r: &Rig) -> Option<Served> {
    apple_silicon::inference::downcast_model::<apple_silicon::breaker::ResilientModel>(&*r.model, "resilient")
        .unwrap()
        .last_served()
}

#[test]
fn ten_percent_failing_primary_trips_within_the_window_and_the_fallback_answers_every_call() {
    // Failures drawn at a 10% rate from a seeded stream, calls from 4 threads.
    let r = rig(
        primary()
            .with_errors(ErrorKind::Internal, Pattern::Rate(0.10))
            .with_seed(7),
        |e| e,
    );
    let answered = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (r, answered) = (&r, &answered);
            s.spawn(move || {
                for i in 0..150u32 {
                    let out = r.engine.infer(&*r.model, &input(t * 1000 + i), T);
                    assert_eq!(out.unwrap(), expected(t * 1000 + i), "every call gets the right answer");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(answered.load(Ordering::Relaxed), 600);

    let stats = r.engine.breaker(&*r.model).unwrap().stats();
    assert_eq!(stats.state, BreakerState::Open, "{stats:?}");
    assert_eq!(stats.trips, 1);
    assert!(
        matches!(stats.last_trip, Some(TripReason::SuccessRate { .. })),
        "{stats:?}"
    );
    let window = BreakerConfig::default().window as u64;
    let primary_calls = r.primary.calls();
    assert!(
        primary_calls <= window + 4,
        "tripped within its window: {primary_calls} primary calls (window {window}, 4 threads in flight)"
    );
    // Every call the primary did not answer was answered by the fallback.
    let primary_ok = primary_calls - r.primary.errors_injected();
    let fallback_calls = r.fallback_calls.load(Ordering::SeqCst);
    assert_eq!(primary_ok + fallback_calls, 600);
    assert!(
        fallback_calls >= 600 - window - 4,
        "after the trip the fallback answers: {fallback_calls}"
    );
    let (p, f) = r.engine.snapshots(&*r.model).unwrap();
    assert_eq!(p.failures.fallback, fallback_calls);
    assert_eq!(p.failures.get(Failure::Other), r.primary.errors_injected());
    assert_eq!(f.counters.predict.successes, fallback_calls);
    assert_eq!(served(&r), Some(Served::FallbackBreakerOpen));
    let caps = r.engine.capabilities(&*r.model);
    assert_eq!(caps.engine, "candle");
    assert!(
        caps.notes
            .iter()
            .any(|n| n.contains("served by candle (fallback) because the breaker is open")),
        "{:?}",
        caps.notes
    );
}

#[test]
fn every_tenth_call_failing_trips_at_the_tenth_call_and_no_later_call_fails() {
    let r = rig(primary().with_errors(ErrorKind::Compile, Pattern::Every(10)), |e| e);
    for i in 0..100 {
        assert_eq!(
            r.engine.infer(&*r.model, &input(i), T).unwrap(),
            expected(i),
            "call {i}"
        );
        let state = r.engine.breaker(&*r.model).unwrap().state();
        assert_eq!(state == BreakerState::Open, i >= 9, "call {i}: {state:?}");
    }
    assert_eq!(r.primary.calls(), 10, "nothing reaches the primary after the trip");
    assert_eq!(
        r.fallback_calls.load(Ordering::SeqCst),
        91,
        "1 retried failure + 90 after the trip"
    );
}

#[test]
fn a_hanging_primary_times_out_within_its_deadline_every_time() {
    // The primary path alone: a guarded hanging engine.
    let faulty = primary().with_hangs(Pattern::Always);
    let hangs = faulty.handle();
    let guarded =
        GuardedEngine::new(Box::new(faulty)).with_runner(DeadlineRunner::new("hang-test").with_max_abandoned(24));
    let model = guarded
        .prepare(&fake_artifact("mlp"), PrepareOptions::default())
        .unwrap();
    let threads_before = process_threads();
    let timeout = Duration::from_millis(60);
    for i in 0..20 {
        let t0 = Instant::now();
        let e = guarded.infer(&*model, &input(i), timeout).unwrap_err();
        let took = t0.elapsed();
        assert_eq!(e.kind(), ErrorKind::Timeout, "call {i}: {e}");
        assert!(took <= timeout + MARGIN, "call {i} returned after {took:?}");
    }
    let s = guarded.runner().stats();
    assert_eq!((s.timed_out, s.abandoned), (20, 20), "{s:?}");
    assert!(s.workers <= 20, "one stuck worker per hung call at most: {s:?}");
    if let (Some(before), Some(now)) = (threads_before, process_threads()) {
        // Other tests run at the same time; our share is at most 20 threads.
        assert!(now <= before + 20 + 24, "threads {before} -> {now}");
    }
    // Once the hangs end, the workers come back and nothing is left stuck.
    hangs.release_hangs();
    assert!(wait_for(Duration::from_secs(10), || guarded.runner().stats().abandoned == 0));
    assert_eq!(guarded.runner().stats().finished_late, 20);
}

#[test]
fn the_resilient_engine_answers_a_hanging_primary_from_the_fallback_in_time() {
    let r = rig(primary().with_hangs(Pattern::Always), |e| e);
    let timeout = Duration::from_millis(200);
    for i in 0..20 {
        let t0 = Instant::now();
        let out = r.engine.infer(&*r.model, &input(i), timeout);
        let took = t0.elapsed();
        assert_eq!(out.unwrap(), expected(i), "call {i}");
        assert!(took <= timeout + MARGIN, "call {i} took {took:?}");
    }
    // The first 10 calls timed out on the primary (within its half of the
    // timeout) and tripped the breaker; the last 10 never touched it.
    let (p, _) = r.engine.snapshots(&*r.model).unwrap();
    assert_eq!(p.failures.timeout, 10);
    assert_eq!(p.failures.fallback, 20);
    assert_eq!(r.primary.hangs_started(), 10);
    let runner = r.engine.deadline_runner().unwrap().stats();
    assert_eq!(runner.abandoned, 10, "{runner:?}");
    assert!(runner.workers <= 10, "{runner:?}");
    assert_eq!(r.fallback_calls.load(Ordering::SeqCst), 20);
    r.primary.release_hangs();
    assert!(wait_for(Duration::from_secs(10), || {
        r.engine.deadline_runner().unwrap().stats().abandoned == 0
    }));
}

#[test]
fn manual_policy_stays_open_until_reenabled() {
    // The primary fails its first 10 calls, then is healthy.
    let r = rig(primary().with_errors(ErrorKind::Timeout, Pattern::FirstN(10)), |e| e);
    for i in 0..10 {
        r.engine.infer(&*r.model, &input(i), T).unwrap();
    }
    let breaker = r.engine.breaker(&*r.model).unwrap();
    assert_eq!(breaker.state(), BreakerState::Open);
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..50 {
        r.engine.infer(&*r.model, &input(i), T).unwrap();
    }
    assert_eq!(r.primary.calls(), 10, "manual policy: no probing, ever");
    assert_eq!(served(&r), Some(Served::FallbackBreakerOpen));

    r.engine.reenable_primary(&*r.model).unwrap();
    assert_eq!(breaker.state(), BreakerState::Closed);
    for i in 0..20 {
        assert_eq!(r.engine.infer(&*r.model, &input(i), T).unwrap(), expected(i));
    }
    assert_eq!(r.primary.calls(), 30);
    assert_eq!(served(&r), Some(Served::Primary));
    let s = breaker.stats();
    assert_eq!((s.trips, s.manual_resets, s.probes), (1, 1, 0), "{s:?}");
    let caps = r.engine.capabilities(&*r.model);
    assert_eq!(caps.engine, "coreml");
    assert!(
        caps.notes.iter().any(|n| n.contains("served by coreml (primary)")),
        "{:?}",
        caps.notes
    );
}

#[test]
fn half_open_policy_probes_after_backoff_and_closes_on_good_probes() {
    // Fails its first 11 calls: the 10 that trip, and the first probe.
    // Backoffs are long enough that a stalled test thread cannot skip one.
    let policy = ReenablePolicy::HalfOpen {
        initial_backoff: Duration::from_millis(300),
        max_backoff: Duration::from_secs(5),
        probes_to_close: 2,
    };
    let r = rig(primary().with_errors(ErrorKind::Internal, Pattern::FirstN(11)), |e| {
        e.with_policy(policy)
    });
    let breaker = r.engine.breaker(&*r.model).unwrap();
    for i in 0..10 {
        r.engine.infer(&*r.model, &input(i), T).unwrap();
    }
    let tripped = Instant::now();
    assert_eq!(breaker.state(), BreakerState::Open);
    r.engine.infer(&*r.model, &input(0), T).unwrap();
    if tripped.elapsed() < Duration::from_millis(250) {
        assert_eq!(r.primary.calls(), 10, "no probe before the backoff");
    }

    std::thread::sleep(Duration::from_millis(350).saturating_sub(tripped.elapsed()));
    r.engine.infer(&*r.model, &input(0), T).unwrap(); // probe 1 fails: answered by the fallback
    let reopened = Instant::now();
    assert_eq!(r.primary.calls(), 11);
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(breaker.stats().backoff, Duration::from_millis(600), "backoff doubled");

    std::thread::sleep(Duration::from_millis(100));
    r.engine.infer(&*r.model, &input(0), T).unwrap();
    if reopened.elapsed() < Duration::from_millis(550) {
        assert_eq!(r.primary.calls(), 11, "the doubled backoff has not passed");
    }

    std::thread::sleep(Duration::from_millis(650).saturating_sub(reopened.elapsed()));
    for i in 0..2 {
        assert_eq!(r.engine.infer(&*r.model, &input(i), T).unwrap(), expected(i));
        // probes 2 and 3 succeed
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    for i in 0..10 {
        r.engine.infer(&*r.model, &input(i), T).unwrap();
    }
    assert_eq!(r.primary.calls(), 23);
    assert_eq!(served(&r), Some(Served::Primary));
    let s = breaker.stats();
    assert_eq!((s.trips, s.probes, s.probe_failures, s.closes), (1, 3, 1, 1), "{s:?}");
}

#[test]
fn p99_over_the_sla_three_times_trips_the_breaker() {
    // 4 ms per call against a 2 ms SLA: p99 evaluations at calls 100, 110
    // and 120 are all over it.
    let r = rig(primary().with_latency(Duration::from_millis(4)), |e| {
        e.with_sla(Duration::from_millis(2))
    });
    for i in 0..130 {
        assert_eq!(r.engine.infer(&*r.model, &input(i), T).unwrap(), expected(i));
    }
    let s = r.engine.breaker(&*r.model).unwrap().stats();
    assert_eq!(s.state, BreakerState::Open, "{s:?}");
    assert!(
        matches!(s.last_trip, Some(TripReason::SlaP99 { violations: 3, .. })),
        "{s:?}"
    );
    assert_eq!(r.primary.calls(), 120);
    assert_eq!(r.fallback_calls.load(Ordering::SeqCst), 10);
}

#[test]
fn memory_over_the_limit_trips_the_breaker() {
    // Deterministic probe: the bytes the primary keeps (1 MiB per call).
    let faulty = primary().with_memory_growth_per_call(1 << 20);
    let probe = faulty.handle().memory_probe();
    let r = rig(faulty, |e| e.with_memory_limit(8 << 20).with_memory_probe(probe));
    for i in 0..20 {
        r.engine.infer(&*r.model, &input(i), T).unwrap();
    }
    let s = r.engine.breaker(&*r.model).unwrap().stats();
    assert_eq!(
        s.last_trip,
        Some(TripReason::Memory {
            high_water_bytes: 9 << 20,
            limit_bytes: 8 << 20
        })
    );
    assert_eq!(r.primary.calls(), 9, "the 9th MiB passed the 8 MiB limit");
    let (p, _) = r.engine.snapshots(&*r.model).unwrap();
    assert_eq!(p.memory.recorded_high_water_bytes, Some(9 << 20));
    r.primary.free_memory();
}

#[test]
fn memory_rule_with_the_real_process_rss() {
    // 16 MiB kept per call against a limit 96 MiB above today's RSS.
    let start = apple_silicon::telemetry::process_memory_bytes().expect("RSS is readable on Linux");
    let r = rig(primary().with_memory_growth_per_call(16 << 20), |e| {
        e.with_memory_limit(start + (96 << 20))
    });
    for i in 0..30 {
        r.engine.infer(&*r.model, &input(i), T).unwrap();
    }
    let s = r.engine.breaker(&*r.model).unwrap().stats();
    assert!(matches!(s.last_trip, Some(TripReason::Memory { .. })), "{s:?}");
    // 7 calls pass the limit; concurrent tests freeing memory may delay it a little.
    assert!(r.primary.calls() <= 9, "tripped by the 9th call: {}", r.primary.calls());
    r.primary.free_memory();
}

#[test]
fn a_healthy_primary_never_trips() {
    let r = rig(primary(), |e| {
        e.with_sla(Duration::from_millis(500)).with_memory_limit(u64::MAX / 2)
    });
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let r = &r;
            s.spawn(move || {
                for i in 0..150 {
                    assert_eq!(r.engine.infer(&*r.model, &input(t + i), T).unwrap(), expected(t + i));
                }
            });
        }
    });
    let s = r.engine.breaker(&*r.model).unwrap().stats();
    assert_eq!(
        (s.state, s.trips, s.sla_violations),
        (BreakerState::Closed, 0, 0),
        "{s:?}"
    );
    assert_eq!(r.primary.calls(), 600);
    assert_eq!(r.fallback_calls.load(Ordering::SeqCst), 0);
    let (p, _) = r.engine.snapshots(&*r.model).unwrap();
    assert_eq!(p.counters.predict.successes, 600);
    assert_eq!(p.failures.total() + p.failures.fallback, 0);
}

#[test]
fn an_unavailable_primary_is_served_by_the_fallback_and_says_why() {
    let r = rig(primary().unavailable("Core ML does not exist on Linux"), |e| e);
    for i in 0..5 {
        assert_eq!(r.engine.infer(&*r.model, &input(i), T).unwrap(), expected(i));
    }
    assert_eq!(r.primary.calls(), 0);
    assert_eq!(r.fallback_calls.load(Ordering::SeqCst), 5);
    assert_eq!(served(&r), Some(Served::FallbackPrimaryUnavailable));
    let caps = r.engine.capabilities(&*r.model);
    assert_eq!(caps.engine, "candle");
    assert!(
        caps.notes
            .iter()
            .any(|n| n.contains("coreml could not prepare the model: coreml is unavailable: Core ML does not exist")),
        "{:?}",
        caps.notes
    );
    let e = r.engine.reenable_primary(&*r.model).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    let (p, _) = r.engine.snapshots(&*r.model).unwrap();
    assert_eq!((p.counters.prepare.attempts, p.counters.prepare.successes), (1, 0));
    assert_eq!(p.failures.unavailable, 1);
}

#[test]
fn a_caller_mistake_is_returned_and_blamed_on_neither_engine() {
    let r = rig(primary(), |e| e);
    let bad = apple_silicon::TensorMap::from([(
        "x".to_string(),
        apple_silicon::Tensor::from_vec(vec![1, 3], vec![0f32; 3]).unwrap(),
    )]);
    for _ in 0..20 {
        let e = r.engine.infer(&*r.model, &bad, T).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SchemaMismatch);
    }
    assert_eq!(r.engine.breaker(&*r.model).unwrap().state(), BreakerState::Closed);
    assert_eq!((r.primary.calls(), r.fallback_calls.load(Ordering::SeqCst)), (0, 0));
}

#[test]
fn a_fallback_that_cannot_prepare_fails_prepare() {
    let engine = ResilientEngine::new(
        Box::new(primary()),
        Box::new(FaultyEngine::echo("candle", schema()).with_prepare_error(ErrorKind::Compile)),
    );
    let e = engine
        .prepare(&fake_artifact("mlp"), PrepareOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Compile);
}

#[test]
fn forced_on_primary_keeps_serving_and_failed_calls_still_get_answers() {
    let r = rig(primary().with_errors(ErrorKind::Internal, Pattern::Every(2)), |e| {
        e.with_breaker(
            BreakerConfig::default()
                .with_env_override(false)
                .with_force_enable(true),
        )
    });
    for i in 0..40 {
        assert_eq!(r.engine.infer(&*r.model, &input(i), T).unwrap(), expected(i));
    }
    let s = r.engine.breaker(&*r.model).unwrap().stats();
    assert_eq!((s.state, s.trips), (BreakerState::Closed, 0));
    assert!(s.suppressed_trips >= 3, "{s:?}");
    assert_eq!(r.primary.calls(), 40, "forced on: every call tries the primary");
    assert_eq!(r.fallback_calls.load(Ordering::SeqCst), 20);
}

fn hanging_engine() -> (Arc<dyn InferenceEngine>, Arc<dyn PreparedModel>, FaultHandle) {
    let faulty = primary().with_hangs(Pattern::Always);
    let handle = faulty.handle();
    let model = faulty
        .prepare(&fake_artifact("mlp"), PrepareOptions::default())
        .unwrap();
    (Arc::new(faulty), Arc::from(model), handle)
}

#[test]
fn async_inference_times_out_without_blocking_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (engine, model, hangs) = hanging_engine();
    let ticks = Arc::new(AtomicU64::new(0));
    let timeout = Duration::from_millis(300);
    let (result, took) = rt.block_on(async {
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
        let t0 = Instant::now();
        let r = infer_async(engine, model, input(1), timeout).await;
        let took = t0.elapsed();
        ticker.abort();
        (r, took)
    });
    assert_eq!(result.unwrap_err().kind(), ErrorKind::Timeout);
    assert!(took <= timeout + MARGIN, "{took:?}");
    let n = ticks.load(Ordering::SeqCst);
    assert!(n >= 5, "the runtime's only thread kept running other tasks: {n} ticks");
    hangs.release_hangs();
    // Dropping the runtime does not wait for the hung engine.
    let t0 = Instant::now();
    drop(rt);
    assert!(t0.elapsed() < MARGIN);
}

#[test]
fn async_inference_returns_results() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let engine = EchoEngine::new("candle", schema());
    let model: Arc<dyn PreparedModel> = Arc::from(
        engine
            .prepare(&fake_artifact("mlp"), PrepareOptions::default())
            .unwrap(),
    );
    let engine: Arc<dyn InferenceEngine> = Arc::new(engine);
    let out = rt.block_on(infer_async(engine, model, input(3), T)).unwrap();
    assert_eq!(out, expected(3));
}

#[test]
fn async_inference_outside_a_runtime_is_an_error_not_a_panic() {
    let (engine, model, _hangs) = hanging_engine();
    let mut fut = std::pin::pin!(infer_async(engine, model, input(1), T));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => assert_eq!(r.unwrap_err().kind(), ErrorKind::Unavailable),
        std::task::Poll::Pending => panic!("expected an immediate error outside a runtime"),
    }
}

#[test]
fn telemetry_json_of_a_resilient_engine_round_trips() {
    let r = rig(primary().with_errors(ErrorKind::Timeout, Pattern::Every(4)), |e| e);
    for i in 0..8 {
        r.engine.infer(&*r.model, &input(i), T).unwrap();
    }
    let json = r.engine.telemetry().to_json();
    let back: RegistrySnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back.entries.len(), 2);
    let p = back.entries.iter().find(|e| e.engine == "coreml").unwrap();
    assert_eq!(p.counters.predict.attempts, 8);
    assert_eq!(p.failures.timeout, 2);
    assert_eq!(p.failures.fallback, 2);
    assert!(p.model.starts_with("mlp.mlpackage@"), "{}", p.model);
    let f = back.entries.iter().find(|e| e.engine == "candle").unwrap();
    assert_eq!(f.counters.predict.successes, 2);
    assert_eq!(serde_json::to_string_pretty(&back).unwrap(), json);
}

/// `infer_into` through the resilient engine reaches the serving engine's own
/// `infer_into` (which writes into the caller's buffer in place), on the
/// primary with and without its guard worker and on the fallback, and the
/// breaker and telemetry see those calls as they see `infer`'s.
#[test]
fn infer_into_writes_into_the_callers_buffers_on_whichever_engine_serves() {
    let buffer = || {
        apple_silicon::TensorMap::from([(
            "y".to_string(),
            apple_silicon::Tensor::zeros(apple_silicon::DType::F32, vec![1, 4]).unwrap(),
        )])
    };
    type Configure = fn(ResilientEngine) -> ResilientEngine;
    let cases: [(&str, Configure, FaultyEngine, Served); 3] = [
        ("guarded primary", |e| e, primary(), Served::Primary),
        (
            "unguarded primary",
            |e| e.without_primary_guard(),
            primary(),
            Served::Primary,
        ),
        (
            "fallback after a primary error",
            |e| e,
            primary().with_errors(ErrorKind::Internal, Pattern::Every(1)),
            Served::FallbackAfterPrimaryError,
        ),
    ];
    for (what, configure, engine, serves) in cases {
        let r = rig(engine, configure);
        let mut out = buffer();
        let before = out["y"].as_bytes().as_ptr();
        for i in 0..3 {
            r.engine.infer_into(&*r.model, &input(i), &mut out, T).unwrap();
            assert_eq!(out, expected(i), "{what}: call {i}");
            assert_eq!(
                out["y"].as_bytes().as_ptr(),
                before,
                "{what}: the caller's buffer was replaced, not written"
            );
            assert_eq!(served(&r), Some(serves), "{what}");
        }
        let fallback_calls = r.fallback_calls.load(Ordering::SeqCst);
        match serves {
            Served::Primary => assert_eq!((r.primary.calls(), fallback_calls), (3, 0), "{what}"),
            _ => assert_eq!((r.primary.calls(), fallback_calls), (3, 3), "{what}"),
        }
    }
}

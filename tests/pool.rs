//! Model instance pools ([`apple_silicon::pool`]) over a scripted engine:
//! instances bound concurrency, queued calls leave at their deadline without
//! starting, the queue is bounded and first-come-first-served, a poisoned
//! instance is rebuilt while the others serve, states stay on their
//! instance, and telemetry sees queue waits and depth.

mod common;

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apple_silicon::telemetry::Stage;
use apple_silicon::testing::fake_artifact;
use apple_silicon::{
    CapabilityReport, ComputeUnits, DType, Error, ErrorKind, InferenceEngine, IoSchema, ModelArtifact, ModelState,
    PooledEngine, PooledModel, PrepareOptions, PreparedModel, TelemetryRegistry, TensorMap,
};
use common::{expected, input, schema, wait_for, MARGIN};

/// Input value that makes a call poison its instance (and time out).
const POISON: u32 = 666;

/// An engine whose every call sleeps `delay` and echoes its input, and which
/// records what ran: calls in flight (and their maximum), the order calls
/// started in (by input value), prepares.
#[derive(Default)]
struct Recorder {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    started: Mutex<Vec<u32>>,
    prepares: AtomicU64,
}

struct SlowEngine {
    delay: Duration,
    rec: Arc<Recorder>,
}

struct SlowModel {
    id: u64,
    schema: IoSchema,
    poisoned: AtomicBool,
}

impl PreparedModel for SlowModel {
    fn cache_key(&self) -> &str {
        "slow"
    }
    fn io_schema(&self) -> &IoSchema {
        &self.schema
    }
    fn sla_estimate(&self) -> Duration {
        Duration::from_millis(10)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }
}

impl InferenceEngine for SlowEngine {
    fn name(&self) -> &str {
        "slow"
    }
    fn prepare(&self, _: &ModelArtifact, _: PrepareOptions) -> apple_silicon::Result<Box<dyn PreparedModel>> {
        let id = self.rec.prepares.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(SlowModel {
            id,
            schema: schema(),
            poisoned: AtomicBool::new(false),
        }))
    }
    fn infer(
        &self,
        model: &dyn PreparedModel,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> apple_silicon::Result<TensorMap> {
        let m = model.as_any().downcast_ref::<SlowModel>().expect("a SlowModel");
        assert!(!m.is_poisoned(), "a poisoned instance was handed out");
        let tag = inputs["x"].to_f32_vec()[0] as u32;
        self.rec.started.lock().unwrap().push(tag);
        let now = self.rec.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.rec.max_in_flight.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.delay.min(timeout));
        self.rec.in_flight.fetch_sub(1, Ordering::SeqCst);
        if tag == POISON {
            m.poisoned.store(true, Ordering::SeqCst);
            return Err(Error::Timeout {
                operation: "scripted".into(),
                after: timeout,
            });
        }
        Ok(TensorMap::from([("y".to_string(), inputs["x"].clone())]))
    }
    /// A state is the instance's id: runs check they are on that instance.
    fn make_state(&self, model: &dyn PreparedModel) -> apple_silicon::Result<ModelState> {
        let m = model.as_any().downcast_ref::<SlowModel>().expect("a SlowModel");
        Ok(ModelState::new("slow", "slow", Box::new(m.id)))
    }
    fn infer_with_state(
        &self,
        model: &dyn PreparedModel,
        state: &mut ModelState,
        inputs: &TensorMap,
        timeout: Duration,
    ) -> apple_silicon::Result<TensorMap> {
        let m = model.as_any().downcast_ref::<SlowModel>().expect("a SlowModel");
        let made_on = *state.inner_for::<u64>("slow", "slow")?;
        assert_eq!(made_on, m.id, "a state ran on an instance it was not made on");
        self.infer(model, inputs, timeout)
    }
    fn capabilities(&self, _: &dyn PreparedModel) -> CapabilityReport {
        CapabilityReport {
            engine: "slow".into(),
            device_class: "test".into(),
            supported_dtypes: vec![DType::F32],
            max_batch_size: 1,
            ane_op_coverage_pct: None,
            compute_units_requested: ComputeUnits::CpuOnly,
            compute_units_actual: None,
            compute_precision: "f32".into(),
            compile_p99_ms: None,
            infer_p99_ms: None,
            notes: vec![],
        }
    }
}

fn pool(size: usize, delay: Duration) -> (PooledEngine, Box<dyn PreparedModel>, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let engine = PooledEngine::new(Arc::new(SlowEngine {
        delay,
        rec: Arc::clone(&rec),
    }))
    .with_pool_size(size)
    .with_rebuild_backoff(Duration::from_millis(10));
    let model = engine
        .prepare(&fake_artifact("slow"), PrepareOptions::default())
        .unwrap();
    (engine, model, rec)
}

fn pooled(m: &dyn PreparedModel) -> &PooledModel {
    m.as_any().downcast_ref::<PooledModel>().unwrap()
}

#[test]
fn defaults_follow_the_plan() {
    let rec = Arc::new(Recorder::default());
    let e = PooledEngine::new(Arc::new(SlowEngine {
        delay: Duration::ZERO,
        rec,
    }));
    assert_eq!(e.config().size, 1, "1 instance off Core ML");
    assert_eq!(apple_silicon::PoolConfig::for_engine("coreml").size, 2, "2 on Core ML");
}

#[test]
fn instances_bound_concurrency_and_throughput_grows_with_the_pool() {
    let delay = Duration::from_millis(40);
    let mut rates = vec![];
    for size in [1usize, 2, 4] {
        let (engine, model, rec) = pool(size, delay);
        assert_eq!(
            rec.prepares.load(Ordering::SeqCst),
            size as u64,
            "one prepare per instance"
        );
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let (engine, model) = (&engine, &*model);
                s.spawn(move || {
                    for i in 0..4u32 {
                        let v = t * 100 + i;
                        let out = engine.infer(model, &input(v), Duration::from_secs(30)).unwrap();
                        assert_eq!(out, expected(v));
                    }
                });
            }
        });
        let rate = 32.0 / t0.elapsed().as_secs_f64();
        let max = rec.max_in_flight.load(Ordering::SeqCst);
        println!("pool of {size}: {rate:.1} calls/s with 8 callers and {delay:?} per call, at most {max} in flight");
        assert_eq!(
            max, size,
            "8 callers must keep every one of {size} instances busy, and no more"
        );
        rates.push(rate);
    }
    // Sleep-bound calls: each doubling of the pool should nearly double the
    // rate; the bound is loose for loaded machines.
    assert!(
        rates[1] > rates[0] * 1.4 && rates[2] > rates[1] * 1.4,
        "rates {rates:?}"
    );
}

#[test]
fn a_queued_call_times_out_at_its_deadline_and_never_starts() {
    let (engine, model, rec) = pool(1, Duration::from_millis(800));
    std::thread::scope(|s| {
        s.spawn(|| engine.infer(&*model, &input(1), Duration::from_secs(30)).unwrap());
        assert!(wait_for(Duration::from_secs(5), || rec
            .in_flight
            .load(Ordering::SeqCst)
            == 1));
        for (v, ms) in [(2u32, 1u64), (3, 50), (4, 200)] {
            let timeout = Duration::from_millis(ms);
            let t0 = Instant::now();
            let err = engine.infer(&*model, &input(v), timeout).unwrap_err();
            let took = t0.elapsed();
            assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
            assert!(err.to_string().contains("queue"), "{err}");
            assert!(
                took >= timeout && took < timeout + MARGIN,
                "a {timeout:?} wait took {took:?}"
            );
        }
        assert_eq!(pooled(&*model).queue_depth(), 0, "timed-out calls left the queue");
    });
    assert_eq!(
        *rec.started.lock().unwrap(),
        vec![1],
        "no queued call started after its deadline"
    );
}

#[test]
fn a_full_queue_refuses_at_once_and_waiting_calls_go_in_arrival_order() {
    let rec = Arc::new(Recorder::default());
    let engine = PooledEngine::new(Arc::new(SlowEngine {
        delay: Duration::from_millis(300),
        rec: Arc::clone(&rec),
    }))
    .with_queue_capacity(3);
    let model = engine
        .prepare(&fake_artifact("slow"), PrepareOptions::default())
        .unwrap();
    std::thread::scope(|s| {
        s.spawn(|| engine.infer(&*model, &input(0), Duration::from_secs(30)).unwrap());
        assert!(wait_for(Duration::from_secs(5), || rec
            .in_flight
            .load(Ordering::SeqCst)
            == 1));
        for v in 1..=3u32 {
            let (engine, model) = (&engine, &*model);
            s.spawn(move || engine.infer(model, &input(v), Duration::from_secs(30)).unwrap());
            assert!(wait_for(Duration::from_secs(5), || pooled(model).queue_depth() == v as usize));
        }
        let t0 = Instant::now();
        let err = engine.infer(&*model, &input(9), Duration::from_secs(30)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(err.to_string().contains("3 calls waiting"), "{err}");
        assert!(t0.elapsed() < MARGIN, "refused at once, not after {:?}", t0.elapsed());
    });
    assert_eq!(*rec.started.lock().unwrap(), vec![0, 1, 2, 3], "arrival order");
}

#[test]
fn a_poisoned_instance_is_rebuilt_while_the_others_serve() {
    let (engine, model, rec) = pool(2, Duration::from_millis(20));
    let err = engine
        .infer(&*model, &input(POISON), Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    // The other instance serves at once, and keeps serving.
    for v in 0..10 {
        assert_eq!(
            engine.infer(&*model, &input(v), Duration::from_secs(5)).unwrap(),
            expected(v)
        );
    }
    let p = pooled(&*model);
    assert!(
        wait_for(Duration::from_secs(5), || p.rebuilds() == 1),
        "rebuilt: {}",
        p.rebuilds()
    );
    assert_eq!(rec.prepares.load(Ordering::SeqCst), 3, "two instances plus one rebuild");
    assert!(wait_for(Duration::from_secs(5), || p.idle_instances() == 2));
}

#[test]
fn a_state_runs_on_the_instance_it_was_made_on_and_dies_with_it() {
    let (engine, model, _rec) = pool(2, Duration::from_millis(5));
    let mut states: Vec<ModelState> = (0..4).map(|_| engine.make_state(&*model).unwrap()).collect();
    std::thread::scope(|s| {
        for (i, st) in states.iter_mut().enumerate() {
            let (engine, model) = (&engine, &*model);
            s.spawn(move || {
                for k in 0..5u32 {
                    let v = i as u32 * 10 + k;
                    assert_eq!(
                        engine
                            .infer_with_state(model, st, &input(v), Duration::from_secs(10))
                            .unwrap(),
                        expected(v)
                    );
                }
            });
        }
    });
    // Poison the instance of state 0: its state is refused once it is rebuilt.
    let mut st = engine.make_state(&*model).unwrap();
    let _ = engine.infer_with_state(&*model, &mut st, &input(POISON), Duration::from_secs(5));
    let p = pooled(&*model);
    assert!(wait_for(Duration::from_secs(5), || p.rebuilds() == 1));
    let err = engine
        .infer_with_state(&*model, &mut st, &input(1), Duration::from_secs(5))
        .unwrap_err();
    assert!(err.to_string().contains("rebuilt"), "{err}");
    // Another pool's state is refused, although both pools serve one model.
    let (engine2, model2, _) = pool(1, Duration::ZERO);
    let mut other = engine2.make_state(&*model2).unwrap();
    let err = engine
        .infer_with_state(&*model, &mut other, &input(1), Duration::from_secs(5))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(err.to_string().contains("pool #"), "{err}");
}

#[test]
fn infer_into_and_batches_go_through_the_queue() {
    let (engine, model, rec) = pool(1, Duration::from_millis(5));
    let mut out = TensorMap::new();
    engine
        .infer_into(&*model, &input(7), &mut out, Duration::from_secs(5))
        .unwrap();
    assert_eq!(out, expected(7));
    let batch = engine
        .infer_batch(&*model, &[input(1), input(2)], Duration::from_secs(5))
        .unwrap();
    assert_eq!(batch, vec![expected(1), expected(2)]);
    assert_eq!(*rec.started.lock().unwrap(), vec![7, 1, 2]);
}

#[test]
fn telemetry_records_queue_waits_and_depth() {
    let registry = Arc::new(TelemetryRegistry::new());
    let rec = Arc::new(Recorder::default());
    let engine = PooledEngine::new(Arc::new(SlowEngine {
        delay: Duration::from_millis(30),
        rec,
    }))
    .with_telemetry(Arc::clone(&registry));
    let model = engine
        .prepare(&fake_artifact("slow"), PrepareOptions::default())
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (engine, model) = (&engine, &*model);
            s.spawn(move || engine.infer(model, &input(t), Duration::from_secs(30)).unwrap());
        }
    });
    let snap = registry.get("slow", "pool").expect("pool telemetry").snapshot();
    assert_eq!(snap.counters.predict.successes, 4);
    let wait = snap.latency[&Stage::QueueWait];
    assert_eq!(wait.count, 4);
    assert!(
        wait.max_us >= 30_000,
        "the last of 4 callers waits for at least one call: {wait:?}"
    );
    assert!(
        snap.queue_depth_high_water.unwrap() >= 2,
        "{:?}",
        snap.queue_depth_high_water
    );
    assert!(snap.to_json().contains("queue_wait"));
}

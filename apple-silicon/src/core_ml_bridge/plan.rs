//! A compiled model's compute plan: which device each operation would run on, and what it costs.

use super::*;

/// One operation of a compute plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanOperation {
    /// ML Program function (`""` for neural network layers).
    #[serde(default)]
    pub function: String,
    /// Position in the program.
    #[serde(default)]
    pub index: i64,
    /// Operator (or layer type).
    #[serde(default)]
    pub operator: String,
    /// Output names.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// `cpu`, `gpu` or `neural_engine`, where known.
    pub preferred_device: Option<String>,
    /// Devices that could run it.
    #[serde(default)]
    pub supported_devices: Vec<String>,
    /// Core ML's relative cost estimate.
    pub estimated_cost: Option<f64>,
}

/// Operations per preferred device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeviceCounts {
    /// Preferred on the CPU.
    #[serde(default)]
    pub cpu: u64,
    /// Preferred on the GPU.
    #[serde(default)]
    pub gpu: u64,
    /// Preferred on the Neural Engine.
    #[serde(default)]
    pub neural_engine: u64,
    /// No known preferred device.
    #[serde(default)]
    pub unknown: u64,
}

/// Where each operation of a compiled model would run (`coreml_compute_plan`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComputePlan {
    /// `program`, `neuralNetwork`, `pipeline` or `unsupported`.
    pub model_type: String,
    /// Every operation.
    #[serde(default)]
    pub operations: Vec<PlanOperation>,
    /// Operations per preferred device.
    #[serde(default)]
    pub device_counts: DeviceCounts,
}

impl ComputePlan {
    /// Number of operations counted in [`ComputePlan::device_counts`].
    pub fn total_ops(&self) -> u64 {
        let c = self.device_counts;
        c.cpu + c.gpu + c.neural_engine + c.unknown
    }

    /// Share of operations whose preferred device is the Neural Engine, in
    /// percent rounded to nearest; `None` for a plan without operations.
    pub fn neural_engine_pct(&self) -> Option<u32> {
        let total = self.total_ops();
        if total == 0 {
            return None;
        }
        let pct = (self.device_counts.neural_engine * 100 + total / 2) / total;
        Some(pct.min(100) as u32)
    }

    /// The narrowest compute units that cover every preferred device in the
    /// plan: where Core ML would run the ops, not a measurement. `None` when
    /// no operation has a known device.
    pub fn units_in_use(&self) -> Option<ComputeUnits> {
        let c = self.device_counts;
        match (c.gpu > 0, c.neural_engine > 0, c.cpu > 0) {
            (false, false, false) => None,
            (false, false, true) => Some(ComputeUnits::CpuOnly),
            (true, false, _) => Some(ComputeUnits::CpuAndGpu),
            (false, true, _) => Some(ComputeUnits::CpuAndNe),
            (true, true, _) => Some(ComputeUnits::All),
        }
    }
}

/// The compute plan of a compiled model for `units` (`coreml_compute_plan`;
/// `MLComputePlan`, macOS 14.4+; elsewhere `Unavailable`). Costs about a
/// model load (Core ML plans the model on the devices). Waits at most `timeout`.
pub fn compute_plan(
    compiled: &Path,
    units: ComputeUnits,
    timeout: Duration,
) -> std::result::Result<ComputePlan, BridgeError> {
    ensure_linked()?;
    let subject = compiled.display().to_string();
    let c_path = path_cstring(compiled, Operation::ComputePlan, "compiled model path")?;
    let mut json = BridgeString::null();
    let mut err = BridgeString::null();
    // SAFETY: a NUL-terminated string that outlives the call; empty out slots.
    let code = unsafe {
        ffi::coreml_compute_plan(
            c_path.as_ptr(),
            units.ffi_code(),
            timeout_ms(timeout),
            json.out(),
            err.out(),
        )
    };
    check(code, &mut err, Operation::ComputePlan, &subject, timeout)?;
    let text = json
        .take()
        .ok_or_else(|| missing_out(Operation::ComputePlan, "out_json"))?;
    parse_json(&text, Operation::ComputePlan, &subject)
}

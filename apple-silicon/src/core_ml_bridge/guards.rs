//! Memory the bridge hands out (strings, outputs), owned by drop guards that free it exactly once.

use super::*;

/// A string owned by the bridge, freed exactly once with `coreml_free_string`
/// when dropped (also on every early return).
pub(super) struct BridgeString(pub(super) *mut c_char);

impl BridgeString {
    pub(super) fn null() -> Self {
        BridgeString(ptr::null_mut())
    }

    /// The out pointer to hand to the bridge. The bridge never reads the old
    /// value, so the slot must be empty: a previous string is freed first.
    pub(super) fn out(&mut self) -> *mut *mut c_char {
        self.free();
        &mut self.0
    }

    /// Copies the text (lossily for invalid UTF-8) and frees the original.
    pub(super) fn take(&mut self) -> Option<String> {
        if self.0.is_null() {
            return None;
        }
        // SAFETY: the bridge returned a NUL-terminated string it owns until
        // coreml_free_string, which `free` calls right after the copy.
        let s = unsafe { CStr::from_ptr(self.0) }.to_string_lossy().into_owned();
        self.free();
        Some(s)
    }

    pub(super) fn free(&mut self) {
        if !self.0.is_null() {
            // SAFETY: a string handed out by the bridge, not freed before
            // (the pointer is cleared right after).
            unsafe { ffi::coreml_free_string(self.0) };
            self.0 = ptr::null_mut();
        }
    }
}

impl Drop for BridgeString {
    fn drop(&mut self) {
        self.free();
    }
}

/// Feature outputs owned by the bridge, freed exactly once on drop.
pub(super) struct BridgeFeatureOutputs(pub(super) *mut ffi::CoremlFeatureOutputs);

impl Drop for BridgeFeatureOutputs {
    fn drop(&mut self) {
        // SAFETY: NULL or outputs from coreml_predict_features, freed only here.
        unsafe { ffi::coreml_free_feature_outputs(self.0) };
    }
}

/// A NUL-terminated string of the bridge's outputs, or `bad`'s error.
///
/// # Safety
///
/// `p` must be NULL or a NUL-terminated string.
pub(super) unsafe fn bridge_str(p: *const c_char, what: &str, bad: &dyn Fn(String) -> Error) -> Result<String> {
    if p.is_null() {
        return Err(bad(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(str::to_string)
        .map_err(|_| bad(format!("{what} is not UTF-8")))
}

/// Copies feature outputs into owned values, checking every field against
/// the header's promises (`Internal` on a broken one).
///
/// # Safety
///
/// `outputs` must be NULL or as `coreml_predict_features` hands it out.
pub(super) unsafe fn read_feature_outputs(
    outputs: *const ffi::CoremlFeatureOutputs,
    subject: &str,
) -> Result<crate::feature::FeatureMap> {
    use crate::feature::{Dictionary, FeatureValue};
    let bad = |what: String| {
        Error::internal(format!(
            "the bridge returned inconsistent outputs for {subject}: {what}"
        ))
    };
    if outputs.is_null() {
        return Err(bad("expected an outputs pointer, got NULL".into()));
    }
    // SAFETY: non-NULL and valid per the caller's contract.
    let outs = unsafe { &*outputs };
    let count = usize::try_from(outs.count).map_err(|_| bad(format!("count {} is negative", outs.count)))?;
    if count > 0 && outs.features.is_null() {
        return Err(bad(format!("expected {count} features, got a NULL array")));
    }
    let mut map = crate::feature::FeatureMap::new();
    for i in 0..count {
        // SAFETY: `features` holds `count` entries.
        let f = unsafe { &*outs.features.add(i) };
        // SAFETY: the bridge's strings.
        let name = unsafe { bridge_str(f.name, &format!("output #{i}'s name"), &bad) }?;
        let value = match f.kind {
            // SAFETY: the bridge's output tensor.
            ffi::COREML_FEATURE_TENSOR => FeatureValue::Tensor(unsafe { read_output_tensor(&f.tensor, &name, &bad) }?),
            ffi::COREML_FEATURE_INT64 => FeatureValue::Int64(f.int64_value),
            ffi::COREML_FEATURE_DOUBLE => FeatureValue::Double(f.double_value),
            // SAFETY: the bridge's string.
            ffi::COREML_FEATURE_STRING => {
                FeatureValue::String(unsafe { bridge_str(f.string_value, &format!("output `{name}`"), &bad) }?)
            }
            ffi::COREML_FEATURE_DICTIONARY => {
                let n = usize::try_from(f.dict_count)
                    .map_err(|_| bad(format!("output `{name}`: negative dict_count {}", f.dict_count)))?;
                if n > 0 && f.dict_values.is_null() {
                    return Err(bad(format!("output `{name}`: NULL dict_values for {n} entries")));
                }
                let values = if n == 0 {
                    &[][..]
                } else {
                    // SAFETY: `dict_values` holds `dict_count` doubles.
                    unsafe { std::slice::from_raw_parts(f.dict_values, n) }
                };
                match f.dict_key_kind {
                    ffi::COREML_FEATURE_STRING => {
                        if n > 0 && f.dict_string_keys.is_null() {
                            return Err(bad(format!("output `{name}`: NULL dict_string_keys")));
                        }
                        let mut entries = Vec::with_capacity(n);
                        for (k, v) in values.iter().enumerate() {
                            // SAFETY: `dict_string_keys` holds `dict_count` strings.
                            let key = unsafe { bridge_str(*f.dict_string_keys.add(k), "a dictionary key", &bad) }?;
                            entries.push((key, *v));
                        }
                        FeatureValue::Dictionary(Dictionary::Strings(entries))
                    }
                    ffi::COREML_FEATURE_INT64 => {
                        if n > 0 && f.dict_int64_keys.is_null() {
                            return Err(bad(format!("output `{name}`: NULL dict_int64_keys")));
                        }
                        let keys = if n == 0 {
                            &[][..]
                        } else {
                            // SAFETY: `dict_int64_keys` holds `dict_count` keys.
                            unsafe { std::slice::from_raw_parts(f.dict_int64_keys, n) }
                        };
                        FeatureValue::Dictionary(Dictionary::Int64(
                            keys.iter().copied().zip(values.iter().copied()).collect(),
                        ))
                    }
                    other => return Err(bad(format!("output `{name}`: dictionary key kind {other}"))),
                }
            }
            other => {
                return Err(bad(format!(
                    "output `{name}`: expected a feature kind 1..=5, got {other}"
                )))
            }
        };
        if map.insert(name.clone(), value).is_some() {
            return Err(bad(format!("output `{name}` appears twice")));
        }
    }
    Ok(map)
}

/// Predict outputs owned by the bridge, freed exactly once on drop.
#[repr(transparent)]
pub(super) struct BridgeOutputs(pub(super) *mut ffi::CoremlOutputs);

impl Drop for BridgeOutputs {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: outputs handed out by coreml_predict, freed only here.
            unsafe { ffi::coreml_free_outputs(self.0) };
            self.0 = ptr::null_mut();
        }
    }
}

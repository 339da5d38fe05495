//! Feature values: what a Core ML model takes and returns beyond tensors.
//!
//! Core ML features are multi-arrays (our [`Tensor`]), images, strings,
//! int64 and double scalars, dictionaries (string or int64 keys →
//! probability) and sequences. [`FeatureValue`] carries any of them;
//! [`FeatureKind`] is what an [`IoSchema`] says a feature is, with an
//! image's size and color layout ([`ImageSpec`]) and a classifier's label
//! set ([`ClassifierSpec`]).
//!
//! An ML Program itself only sees tensors: an image input is a `[1, C, H, W]`
//! tensor of raw pixel values (0–255, channels in the model's color layout)
//! to which the program applies its own `ImageType` scale and bias (coremltools
//! writes them as `mul` / `add` ops at the top of `main`), and a classifier
//! ends in `classify`, whose label and probabilities Core ML turns into a
//! string or int64 label and a dictionary. [`features_to_tensors`] and
//! [`tensors_to_features`] are those two conversions, so every engine that
//! runs the program's tensors runs feature models too
//! ([`crate::InferenceEngine::infer_features`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inference::{IoSchema, TensorSpec};
use crate::tensor::{DType, Tensor, TensorMap};

/// How the bytes of an [`Image`] hold its pixels (Core ML's pixel buffer
/// formats for image features).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// 3 bytes per pixel: red, green, blue (`kCVPixelFormatType_24RGB`).
    Rgb,
    /// 3 bytes per pixel: blue, green, red (`kCVPixelFormatType_24BGR`).
    Bgr,
    /// 4 bytes per pixel: blue, green, red, alpha (`kCVPixelFormatType_32BGRA`).
    Bgra,
    /// 4 bytes per pixel: alpha, red, green, blue (`kCVPixelFormatType_32ARGB`).
    Argb,
    /// 1 byte per pixel (`kCVPixelFormatType_OneComponent8`).
    Gray8,
    /// 2 bytes per pixel, a little-endian IEEE half
    /// (`kCVPixelFormatType_OneComponent16Half`).
    GrayF16,
}

impl PixelFormat {
    /// Bytes one pixel takes.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb | PixelFormat::Bgr => 3,
            PixelFormat::Bgra | PixelFormat::Argb => 4,
            PixelFormat::Gray8 => 1,
            PixelFormat::GrayF16 => 2,
        }
    }

    /// Lowercase name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Rgb => "rgb",
            PixelFormat::Bgr => "bgr",
            PixelFormat::Bgra => "bgra",
            PixelFormat::Argb => "argb",
            PixelFormat::Gray8 => "gray8",
            PixelFormat::GrayF16 => "gray_f16",
        }
    }

    /// Byte offsets of red, green and blue in a pixel; `None` for grayscale.
    fn rgb_offsets(self) -> Option<[usize; 3]> {
        match self {
            PixelFormat::Rgb => Some([0, 1, 2]),
            PixelFormat::Bgr | PixelFormat::Bgra => Some([2, 1, 0]),
            PixelFormat::Argb => Some([1, 2, 3]),
            PixelFormat::Gray8 | PixelFormat::GrayF16 => None,
        }
    }
}

/// An image: `height` rows of `width` pixels, each row starting
/// `bytes_per_row` bytes after the previous one (rows may be padded, as a
/// `CVPixelBuffer`'s are). Checked at construction, so every [`Image`]'s
/// bytes hold all its pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    width: usize,
    height: usize,
    format: PixelFormat,
    bytes_per_row: usize,
    data: Vec<u8>,
}

impl Image {
    /// An image over `data`. Fails, naming what was expected and what came,
    /// if a dimension is zero, if `bytes_per_row` is shorter than a row of
    /// pixels, or if `data` is shorter than the rows need (the last row may
    /// omit its padding). Costs nothing beyond the checks.
    pub fn new(width: usize, height: usize, format: PixelFormat, bytes_per_row: usize, data: Vec<u8>) -> Result<Image> {
        if width == 0 || height == 0 {
            return Err(Error::schema_mismatch(
                "image size",
                "a width and height of at least 1",
                format!("{width}x{height}"),
            ));
        }
        let row = width.checked_mul(format.bytes_per_pixel()).ok_or_else(|| {
            Error::schema_mismatch("image width", "a row that fits in memory", format!("{width} pixels"))
        })?;
        if bytes_per_row < row {
            return Err(Error::schema_mismatch(
                "image row stride",
                format!(
                    "at least {row} bytes per row ({width} {} pixels of {} bytes)",
                    format.name(),
                    format.bytes_per_pixel()
                ),
                format!("{bytes_per_row} bytes per row"),
            ));
        }
        let need = (height - 1)
            .checked_mul(bytes_per_row)
            .and_then(|b| b.checked_add(row))
            .ok_or_else(|| {
                Error::schema_mismatch(
                    "image size",
                    "an image that fits in memory",
                    format!("{width}x{height}"),
                )
            })?;
        if data.len() < need {
            return Err(Error::schema_mismatch(
                "image buffer",
                format!("at least {need} bytes ({height} rows of {bytes_per_row} bytes, the last one {row})"),
                format!("{} bytes", data.len()),
            ));
        }
        Ok(Image {
            width,
            height,
            format,
            bytes_per_row,
            data,
        })
    }

    /// An image whose rows are not padded (`bytes_per_row` = width × bytes per pixel).
    pub fn packed(width: usize, height: usize, format: PixelFormat, data: Vec<u8>) -> Result<Image> {
        let stride = width.saturating_mul(format.bytes_per_pixel());
        Image::new(width, height, format, stride, data)
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }
    /// Pixel format.
    pub fn format(&self) -> PixelFormat {
        self.format
    }
    /// Bytes from the start of one row to the next.
    pub fn bytes_per_row(&self) -> usize {
        self.bytes_per_row
    }
    /// The pixel bytes, rows `bytes_per_row` apart.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The pixel at (`x`, `y`) as one value per channel of `layout`, in
    /// `layout`'s channel order (callers check compatibility first).
    fn channels(&self, x: usize, y: usize, layout: ColorLayout) -> [f32; 3] {
        let at = y * self.bytes_per_row + x * self.format.bytes_per_pixel();
        let px = &self.data[at..at + self.format.bytes_per_pixel()];
        match (self.format.rgb_offsets(), layout) {
            (Some([r, g, b]), ColorLayout::Rgb) => [px[r] as f32, px[g] as f32, px[b] as f32],
            (Some([r, g, b]), ColorLayout::Bgr) => [px[b] as f32, px[g] as f32, px[r] as f32],
            (None, _) if self.format == PixelFormat::GrayF16 => {
                [half::f16::from_le_bytes([px[0], px[1]]).to_f32(), 0.0, 0.0]
            }
            _ => [px[0] as f32, 0.0, 0.0],
        }
    }
}

/// The keys and values of a dictionary feature, in order (a classifier's:
/// its labels' order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dictionary {
    /// String keys.
    Strings(Vec<(String, f64)>),
    /// Int64 keys.
    Int64(Vec<(i64, f64)>),
}

impl Dictionary {
    /// Number of entries.
    pub fn len(&self) -> usize {
        match self {
            Dictionary::Strings(v) => v.len(),
            Dictionary::Int64(v) => v.len(),
        }
    }
    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The value of string key `k`, if present (linear search).
    pub fn get_str(&self, k: &str) -> Option<f64> {
        match self {
            Dictionary::Strings(v) => v.iter().find(|(key, _)| key == k).map(|e| e.1),
            Dictionary::Int64(_) => None,
        }
    }
    /// The value of int64 key `k`, if present (linear search).
    pub fn get_int(&self, k: i64) -> Option<f64> {
        match self {
            Dictionary::Int64(v) => v.iter().find(|(key, _)| *key == k).map(|e| e.1),
            Dictionary::Strings(_) => None,
        }
    }
}

/// A sequence feature (Core ML has sequences of strings and of int64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sequence {
    /// Strings.
    Strings(Vec<String>),
    /// Int64 values.
    Int64(Vec<i64>),
}

/// One input or output of a model, of any Core ML feature type.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    /// A multi-array.
    Tensor(Tensor),
    /// An image.
    Image(Image),
    /// A string (e.g. a classifier's label).
    String(String),
    /// An int64 scalar (e.g. a classifier's label).
    Int64(i64),
    /// A double scalar.
    Double(f64),
    /// A dictionary (e.g. a classifier's probabilities).
    Dictionary(Dictionary),
    /// A sequence.
    Sequence(Sequence),
}

impl FeatureValue {
    /// The kind's name, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            FeatureValue::Tensor(_) => "a multi-array",
            FeatureValue::Image(_) => "an image",
            FeatureValue::String(_) => "a string",
            FeatureValue::Int64(_) => "an int64",
            FeatureValue::Double(_) => "a double",
            FeatureValue::Dictionary(_) => "a dictionary",
            FeatureValue::Sequence(_) => "a sequence",
        }
    }
}

impl From<Tensor> for FeatureValue {
    fn from(t: Tensor) -> Self {
        FeatureValue::Tensor(t)
    }
}

impl From<Image> for FeatureValue {
    fn from(i: Image) -> Self {
        FeatureValue::Image(i)
    }
}

/// Named feature values, sorted by name.
pub type FeatureMap = BTreeMap<String, FeatureValue>;

/// The channel layout an image input's tensor has (Core ML's
/// `ImageFeatureType.ColorSpace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorLayout {
    /// Channels red, green, blue.
    Rgb,
    /// Channels blue, green, red.
    Bgr,
    /// One channel, 8-bit source pixels.
    Grayscale,
    /// One channel, half-float source pixels (iOS16+ `GRAYSCALE_FLOAT16`).
    GrayscaleF16,
}

impl ColorLayout {
    /// Number of channels of the tensor.
    pub fn channels(self) -> usize {
        match self {
            ColorLayout::Rgb | ColorLayout::Bgr => 3,
            ColorLayout::Grayscale | ColorLayout::GrayscaleF16 => 1,
        }
    }
    fn is_gray(self) -> bool {
        self.channels() == 1
    }
}

/// Image sizes a model accepts besides its default.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ImageSizes {
    /// Only the default size.
    #[default]
    Fixed,
    /// Any of these `(width, height)` sizes.
    Enumerated { sizes: Vec<(usize, usize)> },
    /// Width and height each within `[lower, upper]` (`None`: unbounded).
    Range {
        width: (usize, Option<usize>),
        height: (usize, Option<usize>),
    },
}

/// What an image feature is: its default size, color layout and other
/// allowed sizes. Its [`TensorSpec`] is the `[1, C, H, W]` tensor the
/// program receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Default width in pixels.
    pub width: usize,
    /// Default height in pixels.
    pub height: usize,
    /// Channel layout of the program's tensor.
    pub color: ColorLayout,
    /// Other sizes the model accepts.
    #[serde(default)]
    pub sizes: ImageSizes,
}

impl ImageSpec {
    /// Whether an image of `width` × `height` is one the model takes.
    pub fn accepts_size(&self, width: usize, height: usize) -> bool {
        if (width, height) == (self.width, self.height) {
            return true;
        }
        let within = |v: usize, (lo, hi): (usize, Option<usize>)| v >= lo && hi.is_none_or(|h| v <= h);
        match &self.sizes {
            ImageSizes::Fixed => false,
            ImageSizes::Enumerated { sizes } => sizes.contains(&(width, height)),
            ImageSizes::Range { width: w, height: h } => within(width, *w) && within(height, *h),
        }
    }

    /// The allowed sizes in words, for messages.
    pub fn describe_sizes(&self) -> String {
        let fmt = |(lo, hi): (usize, Option<usize>)| match hi {
            Some(h) => format!("{lo}..={h}"),
            None => format!("{lo}.."),
        };
        match &self.sizes {
            ImageSizes::Fixed => format!("{}x{}", self.width, self.height),
            ImageSizes::Enumerated { sizes } => {
                let default = (self.width, self.height);
                let all: Vec<String> = std::iter::once(default)
                    .chain(sizes.iter().copied().filter(|&s| s != default))
                    .map(|(w, h)| format!("{w}x{h}"))
                    .collect();
                format!("one of {}", all.join(", "))
            }
            ImageSizes::Range { width, height } => format!("width {} and height {}", fmt(*width), fmt(*height)),
        }
    }
}

/// Which key type a dictionary or element type a sequence has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Strings.
    String,
    /// Int64 values.
    Int64,
}

/// What kind of feature an input or output is. Its [`TensorSpec`]'s dtype
/// and shape are the tensor the program sees (see each variant).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FeatureKind {
    /// A multi-array: the tensor itself.
    #[default]
    Tensor,
    /// An image; the program sees `[1, C, H, W]` raw pixel values.
    Image(ImageSpec),
    /// An int64 scalar; the program's tensor is an i64 scalar.
    Int64,
    /// A double scalar; the program's tensor is an f64 scalar.
    Double,
    /// A string. The only ML Program string output is a classifier's label:
    /// its program tensor is the i64 index of the class in the label set.
    String,
    /// A dictionary. The only ML Program dictionary output is a classifier's
    /// probabilities: its program tensor holds them in the labels' order.
    Dictionary { key: KeyKind },
    /// A sequence (no ML Program has one; listed for Core ML's other models).
    Sequence { element: KeyKind },
}

/// A classifier's labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassLabels {
    /// String labels.
    Strings(Vec<String>),
    /// Int64 labels.
    Int64(Vec<i64>),
}

impl ClassLabels {
    /// Number of classes.
    pub fn len(&self) -> usize {
        match self {
            ClassLabels::Strings(v) => v.len(),
            ClassLabels::Int64(v) => v.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The key kind of the probabilities dictionary.
    pub fn key_kind(&self) -> KeyKind {
        match self {
            ClassLabels::Strings(_) => KeyKind::String,
            ClassLabels::Int64(_) => KeyKind::Int64,
        }
    }
}

/// A classifier (a model converted with coremltools' `ClassifierConfig`):
/// which outputs carry the predicted label and the probabilities, and the
/// label set (from the program's `classify` op).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassifierSpec {
    /// The output holding the predicted label (`predictedFeatureName`).
    pub label_output: String,
    /// The output holding the probabilities dictionary
    /// (`predictedProbabilitiesName`).
    pub probabilities_output: String,
    /// The classes, in the order of the probabilities.
    pub labels: ClassLabels,
}

/// The tensor an image becomes for the program: `spec`'s dtype, shape
/// `[1, C, height, width]`, raw pixel values in `image_spec.color`'s channel
/// order (Core ML's conversion; the program's own ops scale and bias it).
/// Fails, naming what was expected and what came, for a size the model does
/// not take or a pixel format that does not fit its color layout. Costs one
/// pass over the pixels.
pub fn image_to_tensor(name: &str, image: &Image, spec: &TensorSpec, image_spec: &ImageSpec) -> Result<Tensor> {
    let (w, h) = (image.width(), image.height());
    if !image_spec.accepts_size(w, h) {
        return Err(Error::schema_mismatch(
            format!("size of image `{name}`"),
            image_spec.describe_sizes(),
            format!("{w}x{h}"),
        ));
    }
    let layout = image_spec.color;
    let fits = match image.format() {
        // As Core ML's pixel buffers: OneComponent8 for GRAYSCALE, OneComponent16Half for
        // GRAYSCALE_FLOAT16.
        PixelFormat::Gray8 => layout == ColorLayout::Grayscale,
        PixelFormat::GrayF16 => layout == ColorLayout::GrayscaleF16,
        _ => !layout.is_gray(),
    };
    if !fits {
        let expected = match layout {
            ColorLayout::Rgb | ColorLayout::Bgr => "a color pixel format (rgb, bgr, bgra or argb)",
            ColorLayout::Grayscale => "a gray8 pixel format",
            ColorLayout::GrayscaleF16 => "a gray_f16 pixel format",
        };
        return Err(Error::schema_mismatch(
            format!("pixel format of image `{name}` (the model's color layout is {layout:?})"),
            expected,
            image.format().name(),
        ));
    }
    let c = layout.channels();
    let mut values = vec![0f32; c * w * h];
    for y in 0..h {
        for x in 0..w {
            let px = image.channels(x, y, layout);
            for (ch, v) in px.iter().take(c).enumerate() {
                values[(ch * h + y) * w + x] = *v;
            }
        }
    }
    let shape = match spec.shape.len() {
        3 => vec![c, h, w],
        _ => vec![1, c, h, w],
    };
    let t = Tensor::from_vec(shape, values)?;
    Ok(if spec.dtype == DType::F32 {
        t
    } else {
        t.cast(spec.dtype)
    })
}

/// The program tensors for `features` under `schema`: tensors as they are,
/// images through [`image_to_tensor`]. Every model input must be present
/// with its kind, and nothing else. Costs a pass over each image.
pub fn features_to_tensors(schema: &IoSchema, features: &FeatureMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for spec in &schema.inputs {
        let Some(v) = features.get(&spec.name) else {
            let given: Vec<&str> = features.keys().map(String::as_str).collect();
            return Err(Error::schema_mismatch(
                format!("input `{}`", spec.name),
                "the input to be present",
                format!("inputs {given:?}"),
            ));
        };
        let t = match (&spec.kind, v) {
            (FeatureKind::Tensor, FeatureValue::Tensor(t)) => t.clone(),
            (FeatureKind::Image(is), FeatureValue::Image(img)) => image_to_tensor(&spec.name, img, spec, is)?,
            (FeatureKind::Int64, FeatureValue::Int64(i)) => Tensor::from_vec(vec![], vec![*i])?,
            (FeatureKind::Double, FeatureValue::Double(d)) => Tensor::from_vec(vec![], vec![*d])?,
            (kind, v) => {
                return Err(Error::schema_mismatch(
                    format!("input `{}`", spec.name),
                    kind_words(kind),
                    v.kind_name(),
                ))
            }
        };
        out.insert(spec.name.clone(), t);
    }
    if let Some(extra) = features.keys().find(|k| schema.input(k).is_none()) {
        let names: Vec<&str> = schema.inputs.iter().map(|s| s.name.as_str()).collect();
        return Err(Error::schema_mismatch(
            format!("input `{extra}`"),
            format!("only the model's inputs {names:?}"),
            format!("an unknown input `{extra}`"),
        ));
    }
    Ok(out)
}

fn kind_words(kind: &FeatureKind) -> String {
    match kind {
        FeatureKind::Tensor => "a multi-array".into(),
        FeatureKind::Image(i) => format!("an image ({}x{}, {:?})", i.width, i.height, i.color),
        FeatureKind::Int64 => "an int64".into(),
        FeatureKind::Double => "a double".into(),
        FeatureKind::String => "a string".into(),
        FeatureKind::Dictionary { .. } => "a dictionary".into(),
        FeatureKind::Sequence { .. } => "a sequence".into(),
    }
}

/// The feature values of a program's `outputs` under `schema`: tensors as
/// they are, scalars unwrapped, a classifier's label as its string or int64
/// and its probabilities as a dictionary in the labels' order. Costs one
/// copy of each non-tensor output.
pub fn tensors_to_features(schema: &IoSchema, outputs: TensorMap) -> Result<FeatureMap> {
    let mut out = FeatureMap::new();
    for (name, t) in outputs {
        let kind = schema.output(&name).map(|s| s.kind.clone()).unwrap_or_default();
        let v = match kind {
            FeatureKind::Tensor | FeatureKind::Image(_) => FeatureValue::Tensor(t),
            FeatureKind::Int64 => FeatureValue::Int64(scalar(&name, &t)? as i64),
            FeatureKind::Double => FeatureValue::Double(scalar(&name, &t)?),
            FeatureKind::String => {
                let labels = classifier_labels(schema, &name)?;
                let ClassLabels::Strings(labels) = labels else {
                    return Err(Error::internal(format!(
                        "output `{name}` is a string but the classifier's labels are int64"
                    )));
                };
                let i = scalar(&name, &t)?;
                let label = (i >= 0.0).then(|| labels.get(i as usize)).flatten().ok_or_else(|| {
                    Error::internal(format!(
                        "output `{name}`: class index {i} outside the {} labels",
                        labels.len()
                    ))
                })?;
                FeatureValue::String(label.clone())
            }
            FeatureKind::Dictionary { .. } => {
                let labels = classifier_labels(schema, &name)?;
                let p = t.to_f64_vec();
                if p.len() != labels.len() {
                    return Err(Error::internal(format!(
                        "output `{name}`: {} probabilities for {} labels",
                        p.len(),
                        labels.len()
                    )));
                }
                FeatureValue::Dictionary(match labels {
                    ClassLabels::Strings(l) => Dictionary::Strings(l.iter().cloned().zip(p).collect()),
                    ClassLabels::Int64(l) => Dictionary::Int64(l.iter().copied().zip(p).collect()),
                })
            }
            FeatureKind::Sequence { .. } => {
                return Err(Error::unsupported(format!(
                    "sequence output `{name}`: ML Programs have no sequence outputs"
                )))
            }
        };
        out.insert(name, v);
    }
    Ok(out)
}

fn classifier_labels<'a>(schema: &'a IoSchema, name: &str) -> Result<&'a ClassLabels> {
    schema.classifier.as_ref().map(|c| &c.labels).ok_or_else(|| {
        Error::internal(format!(
            "output `{name}` needs the classifier's label set, and the schema has none"
        ))
    })
}

fn scalar(name: &str, t: &Tensor) -> Result<f64> {
    match t.to_f64_vec().as_slice() {
        [v] => Ok(*v),
        other => Err(Error::internal(format!(
            "output `{name}` should be one value, it has {}",
            other.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(color: ColorLayout, w: usize, h: usize) -> (TensorSpec, ImageSpec) {
        let is = ImageSpec {
            width: w,
            height: h,
            color,
            sizes: ImageSizes::Fixed,
        };
        let ts = TensorSpec {
            kind: FeatureKind::Image(is.clone()),
            ..TensorSpec::fixed("img", DType::F32, vec![1, color.channels(), h, w])
        };
        (ts, is)
    }

    #[test]
    fn strides_and_formats_give_the_same_tensor() {
        // 2x2 RGB: pixel (x, y) = (10x+y, 100+10x+y, 200+10x+y).
        let px = |x: u8, y: u8| [10 * x + y, 100 + 10 * x + y, 200 + 10 * x + y];
        let mut rgb = Vec::new();
        let mut bgra_padded = Vec::new();
        let mut argb = Vec::new();
        for y in 0..2 {
            for x in 0..2 {
                let [r, g, b] = px(x, y);
                rgb.extend([r, g, b]);
                bgra_padded.extend([b, g, r, 255]);
                argb.extend([255, r, g, b]);
            }
            bgra_padded.extend([0u8; 5]); // 13 bytes per row
        }
        let (ts, is) = spec(ColorLayout::Rgb, 2, 2);
        let a = image_to_tensor("img", &Image::packed(2, 2, PixelFormat::Rgb, rgb).unwrap(), &ts, &is).unwrap();
        let b = image_to_tensor(
            "img",
            &Image::new(2, 2, PixelFormat::Bgra, 13, bgra_padded).unwrap(),
            &ts,
            &is,
        )
        .unwrap();
        let c = image_to_tensor("img", &Image::packed(2, 2, PixelFormat::Argb, argb).unwrap(), &ts, &is).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.shape(), &[1, 3, 2, 2]);
        // Channel-major: R plane (x=0,y=0),(1,0),(0,1),(1,1) then G, then B.
        assert_eq!(
            a.to_f32_vec(),
            vec![0., 10., 1., 11., 100., 110., 101., 111., 200., 210., 201., 211.]
        );
        let (ts, is) = spec(ColorLayout::Bgr, 2, 2);
        let d = image_to_tensor(
            "img",
            &Image::packed(2, 2, PixelFormat::Rgb, [1, 2, 3].repeat(4)).unwrap(),
            &ts,
            &is,
        )
        .unwrap();
        assert_eq!(&d.to_f32_vec()[..5], &[3., 3., 3., 3., 2.]);
    }

    #[test]
    fn bad_images_are_clear_errors() {
        let e = Image::new(4, 2, PixelFormat::Rgb, 10, vec![0; 40])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "schema mismatch for image row stride: expected at least 12 bytes per row (4 rgb pixels of 3 bytes), got 10 bytes per row"
        );
        let e = Image::new(4, 2, PixelFormat::Bgra, 20, vec![0; 35])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected at least 36 bytes") && e.contains("got 35 bytes"),
            "{e}"
        );
        let e = Image::new(0, 2, PixelFormat::Gray8, 1, vec![]).unwrap_err().to_string();
        assert!(e.contains("got 0x2"), "{e}");
        assert!(Image::new(usize::MAX, 2, PixelFormat::Bgra, usize::MAX, vec![]).is_err());

        let (ts, is) = spec(ColorLayout::Rgb, 4, 2);
        let small = Image::packed(2, 2, PixelFormat::Rgb, vec![0; 12]).unwrap();
        let e = image_to_tensor("img", &small, &ts, &is).unwrap_err().to_string();
        assert_eq!(e, "schema mismatch for size of image `img`: expected 4x2, got 2x2");
        let gray = Image::packed(4, 2, PixelFormat::Gray8, vec![0; 8]).unwrap();
        let e = image_to_tensor("img", &gray, &ts, &is).unwrap_err().to_string();
        assert!(
            e.contains("expected a color pixel format") && e.contains("got gray8"),
            "{e}"
        );
    }

    #[test]
    fn size_constraints() {
        let mut is = ImageSpec {
            width: 8,
            height: 8,
            color: ColorLayout::Grayscale,
            sizes: ImageSizes::Enumerated { sizes: vec![(16, 4)] },
        };
        assert!(is.accepts_size(8, 8) && is.accepts_size(16, 4) && !is.accepts_size(4, 16));
        assert_eq!(is.describe_sizes(), "one of 8x8, 16x4");
        is.sizes = ImageSizes::Range {
            width: (4, Some(32)),
            height: (4, None),
        };
        assert!(is.accepts_size(32, 1000) && !is.accepts_size(33, 8) && !is.accepts_size(8, 3));
        assert_eq!(is.describe_sizes(), "width 4..=32 and height 4..");
    }
}

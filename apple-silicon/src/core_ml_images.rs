//! Image features on the Core ML bridge: the schema's `image` object
//! ([`BridgeImage`], Core ML's `MLImageConstraint`) as the crate's
//! [`ImageSpec`], and an [`Image`] as the bridge's `CoremlImage` descriptor
//! for `coreml_predict_images`.
//!
//! The bridge makes a `CVPixelBuffer` of the feature's pixel format, copies
//! the caller's rows into it through both row strides (RGB and BGR become
//! 32BGRA on the way) and feeds it as `MLFeatureValue(pixelBuffer:)`; Core ML
//! applies the model's own `ImageType` preprocessing. So an image reaches
//! Core ML as the caller's pixels, with none of the crate's own
//! pixel-to-tensor conversion.

use std::ffi::{c_void, CString};

use serde::{Deserialize, Serialize};

use crate::core_ml_bridge::{ffi, DimRange};
use crate::error::{Error, Result};
use crate::feature::{ColorLayout, FeatureKind, Image, ImageSizes, ImageSpec, PixelFormat};
use crate::inference::{ShapeConstraint, TensorSpec};
use crate::tensor::DType;

/// An image feature as the bridge's schema JSON reports it (`MLImageConstraint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeImage {
    /// Default width (`pixelsWide`).
    pub width: i64,
    /// Default height (`pixelsHigh`).
    pub height: i64,
    /// `pixelFormatType`: a CoreVideo `OSType`.
    pub pixel_format: u32,
    /// `color` (Core ML says only that for RGB and BGR models), `rgb`, `bgr`,
    /// `grayscale` or `grayscale_f16`.
    pub color_layout: String,
    /// Other sizes (`MLImageSizeConstraint`).
    pub size_constraint: BridgeImageSizes,
}

/// `MLImageSizeConstraint` as the bridge reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeImageSizes {
    /// `unspecified`, `enumerated` or `range`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The allowed sizes (`enumerated`).
    #[serde(default)]
    pub enumerated_sizes: Vec<BridgeImageSize>,
    /// Width range (`range`).
    #[serde(default)]
    pub width_range: Option<DimRange>,
    /// Height range (`range`).
    #[serde(default)]
    pub height_range: Option<DimRange>,
}

/// One enumerated image size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeImageSize {
    /// Pixels wide.
    pub width: i64,
    /// Pixels high.
    pub height: i64,
}

fn dim(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

impl BridgeImage {
    /// The crate's [`ImageSpec`]. Core ML does not say whether a color
    /// model is RGB or BGR (both take 32BGRA / 32ARGB buffers and the model
    /// reorders itself), so `color` is reported as [`ColorLayout::Rgb`].
    /// Costs a copy of the size list.
    pub fn to_image_spec(&self) -> ImageSpec {
        let color = match self.color_layout.as_str() {
            "bgr" => ColorLayout::Bgr,
            "grayscale" => ColorLayout::Grayscale,
            "grayscale_f16" => ColorLayout::GrayscaleF16,
            _ => ColorLayout::Rgb,
        };
        let c = &self.size_constraint;
        let range = |r: &Option<DimRange>| r.map(|r| (dim(r.lower), r.upper.map(dim))).unwrap_or((0, None));
        let sizes = match c.kind.as_str() {
            "enumerated" => ImageSizes::Enumerated {
                sizes: c
                    .enumerated_sizes
                    .iter()
                    .map(|s| (dim(s.width), dim(s.height)))
                    .collect(),
            },
            "range" => ImageSizes::Range {
                width: range(&c.width_range),
                height: range(&c.height_range),
            },
            _ => ImageSizes::Fixed,
        };
        ImageSpec {
            width: dim(self.width),
            height: dim(self.height),
            color,
            sizes,
        }
    }

    /// The feature's [`TensorSpec`]: the `[1, C, H, W]` tensor an ML
    /// Program sees for it (f32; f16 for `grayscale_f16`), kind
    /// [`FeatureKind::Image`].
    pub fn tensor_spec(&self, name: &str) -> TensorSpec {
        let spec = self.to_image_spec();
        TensorSpec {
            name: name.to_string(),
            shape: vec![1, spec.color.channels(), spec.height, spec.width],
            dtype: if spec.color == ColorLayout::GrayscaleF16 {
                DType::F16
            } else {
                DType::F32
            },
            batch_capable: false,
            constraint: ShapeConstraint::Fixed,
            kind: FeatureKind::Image(spec),
        }
    }
}

/// The `COREML_PIXEL_*` code of a pixel format.
pub fn pixel_format_code(f: PixelFormat) -> i32 {
    match f {
        PixelFormat::Rgb => ffi::COREML_PIXEL_RGB8,
        PixelFormat::Bgr => ffi::COREML_PIXEL_BGR8,
        PixelFormat::Bgra => ffi::COREML_PIXEL_BGRA8,
        PixelFormat::Argb => ffi::COREML_PIXEL_ARGB8,
        PixelFormat::Gray8 => ffi::COREML_PIXEL_GRAY8,
        PixelFormat::GrayF16 => ffi::COREML_PIXEL_GRAY_F16,
    }
}

/// A `CoremlImage` descriptor over `image` (borrowed: valid while `image`
/// and the returned name live). Fails, naming the limit, when a dimension
/// does not fit the C ABI's `int32_t` / `int64_t`; everything else was
/// checked by [`Image::new`]. Costs the name's copy.
pub fn marshal_image(name: &str, image: &Image, subject: &str) -> Result<(CString, ffi::CoremlImage)> {
    let c_name = CString::new(name).map_err(|_| {
        Error::schema_mismatch(
            format!("name of image `{}`", name.escape_debug()),
            "a name without NUL bytes",
            "a name with a NUL byte",
        )
    })?;
    let too_big = |what: &str, v: usize| {
        Error::schema_mismatch(
            format!("{what} of image `{name}` of {subject}"),
            format!("at most {}", i32::MAX),
            v.to_string(),
        )
    };
    let width = i32::try_from(image.width()).map_err(|_| too_big("width", image.width()))?;
    let height = i32::try_from(image.height()).map_err(|_| too_big("height", image.height()))?;
    let bytes_per_row =
        i64::try_from(image.bytes_per_row()).map_err(|_| too_big("row stride", image.bytes_per_row()))?;
    let data = image.data();
    let d = ffi::CoremlImage {
        name: c_name.as_ptr(),
        pixel_format: pixel_format_code(image.format()),
        width,
        height,
        bytes_per_row,
        data: data.as_ptr().cast::<c_void>(),
        byte_len: data.len() as u64,
    };
    Ok((c_name, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_json(extra: &str) -> BridgeImage {
        serde_json::from_str(&format!(
            r#"{{"width": 4, "height": 3, "pixel_format": 1111970369, "color_layout": "bgr", "size_constraint": {extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn schema_json_becomes_an_image_spec() {
        let e = image_json(r#"{"type": "enumerated", "enumerated_sizes": [{"width": 8, "height": 6}]}"#);
        let spec = e.tensor_spec("image");
        assert_eq!(spec.shape, vec![1, 3, 3, 4]);
        assert_eq!(spec.dtype, DType::F32);
        let FeatureKind::Image(is) = &spec.kind else {
            panic!("{:?}", spec.kind)
        };
        assert_eq!(is.color, ColorLayout::Bgr);
        assert!(is.accepts_size(8, 6) && is.accepts_size(4, 3) && !is.accepts_size(5, 5));
        let r = image_json(
            r#"{"type": "range", "width_range": {"lower": 2, "upper": 8}, "height_range": {"lower": 1, "upper": null}}"#,
        );
        let is = r.to_image_spec();
        assert_eq!(
            is.sizes,
            ImageSizes::Range {
                width: (2, Some(8)),
                height: (1, None)
            }
        );
        assert!(is.accepts_size(2, 1000) && !is.accepts_size(9, 3));
        let mut g = image_json(r#"{"type": "unspecified"}"#);
        g.color_layout = "grayscale_f16".into();
        let spec = g.tensor_spec("g");
        assert_eq!((spec.shape.clone(), spec.dtype), (vec![1, 1, 3, 4], DType::F16));
    }

    #[test]
    fn an_image_becomes_a_descriptor_over_its_bytes() {
        let img = Image::new(2, 2, PixelFormat::Rgb, 8, vec![7; 14]).unwrap();
        let (n, d) = marshal_image("image", &img, "m").unwrap();
        assert_eq!(n.to_str().unwrap(), "image");
        assert_eq!(
            (d.pixel_format, d.width, d.height, d.bytes_per_row, d.byte_len),
            (1, 2, 2, 8, 14)
        );
        assert_eq!(d.data, img.data().as_ptr().cast());
        assert!(marshal_image("a\0b", &img, "m").is_err());
    }
}

//! An upload made safe to store: the format decided from the bytes, the declared size checked
//! before a pixel is allocated, decoded, scaled down, turned upright, and re-encoded without
//! its metadata (EXIF with GPS, XMP, comments), plus a thumbnail. CPU-bound and synchronous:
//! the service runs it on the blocking pool.
//!
//! The order follows pict-rs' lesson that a header can lie: sniff, check the header's size,
//! check the decoder's buffer size, and only then decode.

use std::io::Cursor;

use fast_image_resize::images::Image as PixelBuffer;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::error::{ImageError, LimitErrorKind};
use image::metadata::Orientation;
use image::{
    ColorType, DynamicImage, ImageDecoder as _, ImageFormat, ImageReader, Limits, RgbImage,
    RgbaImage,
};
use sha2::{Digest as _, Sha256};

use crate::config::PicturesConfig;
use crate::platform::ids::hex;

/// The formats accepted; anything else (SVG, HEIC, TIFF, a script named `.png`) is refused.
const ACCEPTED: [ImageFormat; 4] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::WebP,
    ImageFormat::Gif,
];

/// An ICC profile is kept (colours of wide-gamut photos) up to this size; a larger one is
/// more likely smuggled data than colour.
const MAX_ICC_BYTES: usize = 64 * 1024;

/// What an upload is turned into.
#[derive(Debug, Clone, Copy)]
pub struct Processing {
    pub max_input_side: u32,
    pub max_input_pixels: u64,
    pub max_side: u32,
    pub thumb_side: u32,
    pub jpeg_quality: u8,
}

impl Processing {
    pub fn new(config: &PicturesConfig) -> Self {
        Self {
            max_input_side: config.max_input_side,
            max_input_pixels: config.max_input_pixels,
            max_side: config.max_side,
            thumb_side: config.thumb_side,
            jpeg_quality: config.jpeg_quality,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("only JPEG, PNG, WebP and GIF pictures are accepted")]
    Unsupported,
    #[error("{0}")]
    TooLarge(String),
    #[error("the picture cannot be decoded: {0}")]
    Invalid(String),
    #[error("the picture cannot be encoded: {0}")]
    Encoding(String),
}

/// A stored format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Jpeg,
    /// Pictures with transparency.
    Png,
}

impl Stored {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
        }
    }

    pub fn from_name(name: &str) -> Self {
        if name.ends_with(".png") {
            Self::Png
        } else {
            Self::Jpeg
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
        }
    }
}

/// One encoded image.
#[derive(Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// An upload ready to store.
#[derive(Debug)]
pub struct Processed {
    /// `<first 128 bits of the SHA-256 of full.bytes, hex>.<jpg|png>`.
    pub name: String,
    pub format: Stored,
    pub full: Encoded,
    pub thumb: Encoded,
}

/// Pixels in one of the two layouts stored.
enum Pixels {
    Rgb(RgbImage),
    Rgba(RgbaImage),
}

pub fn process(upload: &[u8], processing: &Processing) -> Result<Processed, ProcessError> {
    let mut reader = ImageReader::new(Cursor::new(upload))
        .with_guessed_format()
        .map_err(|err| ProcessError::Invalid(err.to_string()))?;
    if !reader
        .format()
        .is_some_and(|format| ACCEPTED.contains(&format))
    {
        return Err(ProcessError::Unsupported);
    }
    // One decode's memory budget: four bytes for every pixel of the largest area allowed.
    let budget = processing.max_input_pixels.saturating_mul(4);
    let mut limits = Limits::default();
    limits.max_image_width = Some(processing.max_input_side);
    limits.max_image_height = Some(processing.max_input_side);
    limits.max_alloc = Some(budget + (16 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(refusal)?;
    let (width, height) = decoder.dimensions();
    let area = u64::from(width) * u64::from(height);
    if area > processing.max_input_pixels {
        return Err(ProcessError::TooLarge(format!(
            "{width}x{height} is more than {} pixels",
            processing.max_input_pixels
        )));
    }
    // `from_decoder` does not honour `max_alloc` for the pixel buffer: the decoded buffer,
    // and the 8-bit copy made of any other layout (16-bit, grey, float), are checked here.
    let converted = match decoder.color_type() {
        ColorType::Rgb8 | ColorType::Rgba8 => 0,
        _ => area * 4,
    };
    if decoder.total_bytes().saturating_add(converted) > budget {
        return Err(ProcessError::TooLarge(format!(
            "{width}x{height} in {:?} needs more than {budget} bytes to decode",
            decoder.color_type()
        )));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder
        .icc_profile()
        .ok()
        .flatten()
        .filter(|icc| icc.len() <= MAX_ICC_BYTES);
    let decoded = DynamicImage::from_decoder(decoder).map_err(refusal)?;

    // Kept in the decoded layout (no full-size copy); an alpha channel that is opaque
    // everywhere (GIFs, many PNGs) is dropped after scaling, and the picture stored as JPEG.
    let pixels = if decoded.color().has_alpha() {
        Pixels::Rgba(decoded.into_rgba8())
    } else {
        Pixels::Rgb(decoded.into_rgb8())
    };
    let opaque = match &pixels {
        Pixels::Rgb(_) => true,
        Pixels::Rgba(image) => image.pixels().all(|pixel| pixel.0[3] == u8::MAX),
    };
    // Scaled before it is turned upright: rotating the smaller image is cheaper, and the
    // longest side is the same either way.
    let mut full = fit(pixels, processing.max_side)?;
    if opaque {
        full = full.without_alpha();
    }
    let thumb = fit(full.copy(), processing.thumb_side)?;
    let full = upright(full, orientation);
    let thumb = upright(thumb, orientation);
    let format = match full {
        Pixels::Rgb(_) => Stored::Jpeg,
        Pixels::Rgba(_) => Stored::Png,
    };
    let full = encode(&full, processing.jpeg_quality, icc.as_deref())?;
    let thumb = encode(&thumb, processing.jpeg_quality, icc.as_deref())?;
    let digest = Sha256::digest(&full.bytes);
    let name = format!("{}.{}", hex(&digest[..16]), format.extension());
    Ok(Processed {
        name,
        format,
        full,
        thumb,
    })
}

fn refusal(err: ImageError) -> ProcessError {
    match err {
        ImageError::Limits(limit) => match limit.kind() {
            LimitErrorKind::DimensionError => {
                ProcessError::TooLarge("the picture's width or height is too large".into())
            }
            _ => ProcessError::TooLarge("the picture would take too much memory".into()),
        },
        ImageError::Unsupported(_) => ProcessError::Unsupported,
        other => ProcessError::Invalid(other.to_string()),
    }
}

impl Pixels {
    fn dimensions(&self) -> (u32, u32) {
        match self {
            Self::Rgb(image) => image.dimensions(),
            Self::Rgba(image) => image.dimensions(),
        }
    }

    fn without_alpha(self) -> Self {
        match self {
            Self::Rgba(image) => Self::Rgb(DynamicImage::ImageRgba8(image).into_rgb8()),
            rgb => rgb,
        }
    }

    fn copy(&self) -> Self {
        match self {
            Self::Rgb(image) => Self::Rgb(image.clone()),
            Self::Rgba(image) => Self::Rgba(image.clone()),
        }
    }
}

/// Scaled down (never up) to `side` on its longest side, keeping its aspect ratio.
fn fit(pixels: Pixels, side: u32) -> Result<Pixels, ProcessError> {
    let (width, height) = pixels.dimensions();
    let longest = width.max(height);
    if longest <= side {
        return Ok(pixels);
    }
    let scale = |length: u32| {
        u32::try_from(u64::from(length) * u64::from(side) / u64::from(longest))
            .unwrap_or(side)
            .max(1)
    };
    let (to_width, to_height) = (scale(width), scale(height));
    let (pixel_type, raw) = match pixels {
        Pixels::Rgb(image) => (PixelType::U8x3, image.into_raw()),
        Pixels::Rgba(image) => (PixelType::U8x4, image.into_raw()),
    };
    let resize_failed = |err: &dyn std::fmt::Display| ProcessError::Encoding(err.to_string());
    let source =
        PixelBuffer::from_vec_u8(width, height, raw, pixel_type).map_err(|e| resize_failed(&e))?;
    let mut target = PixelBuffer::new(to_width, to_height, pixel_type);
    // Lanczos3 for sharp downscales; alpha is premultiplied by the resizer (`use_alpha`).
    Resizer::new()
        .resize(
            &source,
            &mut target,
            &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3)),
        )
        .map_err(|e| resize_failed(&e))?;
    let raw = target.into_vec();
    let rebuilt = match pixel_type {
        PixelType::U8x4 => RgbaImage::from_raw(to_width, to_height, raw).map(Pixels::Rgba),
        _ => RgbImage::from_raw(to_width, to_height, raw).map(Pixels::Rgb),
    };
    rebuilt.ok_or_else(|| ProcessError::Encoding("resized buffer has the wrong size".into()))
}

/// The pixels as the camera meant them to be seen (EXIF orientation applied).
fn upright(pixels: Pixels, orientation: Orientation) -> Pixels {
    if orientation == Orientation::NoTransforms {
        return pixels;
    }
    let mut image = match pixels {
        Pixels::Rgb(image) => DynamicImage::ImageRgb8(image),
        Pixels::Rgba(image) => DynamicImage::ImageRgba8(image),
    };
    image.apply_orientation(orientation);
    match image {
        DynamicImage::ImageRgba8(image) => Pixels::Rgba(image),
        other => Pixels::Rgb(other.into_rgb8()),
    }
}

/// JPEG (4:2:0) for opaque pictures, PNG for transparent ones; nothing but the pixels and the
/// colour profile is written.
fn encode(pixels: &Pixels, quality: u8, icc: Option<&[u8]>) -> Result<Encoded, ProcessError> {
    let (width, height) = pixels.dimensions();
    let failed = |err: &dyn std::fmt::Display| ProcessError::Encoding(err.to_string());
    let mut bytes = Vec::new();
    match pixels {
        Pixels::Rgb(image) => {
            let side = |length: u32| {
                u16::try_from(length).map_err(|_| ProcessError::Encoding("too wide".into()))
            };
            let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, quality);
            if let Some(icc) = icc {
                encoder.add_icc_profile(icc).map_err(|e| failed(&e))?;
            }
            encoder
                .encode(
                    image.as_raw(),
                    side(width)?,
                    side(height)?,
                    jpeg_encoder::ColorType::Rgb,
                )
                .map_err(|e| failed(&e))?;
        }
        Pixels::Rgba(image) => {
            use image::ImageEncoder as _;
            let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
            if let Some(icc) = icc {
                // A profile the encoder refuses is dropped, not fatal.
                let _ = encoder.set_icc_profile(icc.to_vec());
            }
            encoder
                .write_image(
                    image.as_raw(),
                    width,
                    height,
                    image::ExtendedColorType::Rgba8,
                )
                .map_err(|e| failed(&e))?;
        }
    }
    Ok(Encoded {
        bytes,
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn processing() -> Processing {
        Processing::new(&PicturesConfig::default())
    }

    fn png(width: u32, height: u32, alpha: u8) -> Vec<u8> {
        let image = RgbaImage::from_fn(width, height, |x, y| {
            image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, alpha])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(image)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn opaque_pictures_become_jpeg_and_transparent_ones_png() {
        let opaque = process(&png(300, 100, 255), &processing()).unwrap();
        assert_eq!(opaque.format, Stored::Jpeg);
        assert!(opaque.name.ends_with(".jpg"));
        assert_eq!((opaque.full.width, opaque.full.height), (300, 100));
        assert_eq!((opaque.thumb.width, opaque.thumb.height), (256, 85));
        let transparent = process(&png(10, 20, 100), &processing()).unwrap();
        assert_eq!(transparent.format, Stored::Png);
        // Never scaled up.
        assert_eq!(
            (transparent.thumb.width, transparent.thumb.height),
            (10, 20)
        );
    }

    #[test]
    fn the_name_is_the_hash_of_the_stored_bytes() {
        let processed = process(&png(40, 40, 255), &processing()).unwrap();
        let digest = Sha256::digest(&processed.full.bytes);
        assert_eq!(processed.name, format!("{}.jpg", hex(&digest[..16])));
        // The same upload gives the same name.
        assert_eq!(
            process(&png(40, 40, 255), &processing()).unwrap().name,
            processed.name
        );
    }

    #[test]
    fn declared_sizes_are_refused_before_decoding() {
        let mut small = processing();
        small.max_input_pixels = 100;
        assert!(matches!(
            process(&png(20, 20, 255), &small),
            Err(ProcessError::TooLarge(_))
        ));
        small.max_input_side = 10;
        assert!(matches!(
            process(&png(20, 5, 255), &small),
            Err(ProcessError::TooLarge(_))
        ));
    }

    #[test]
    fn wide_layouts_count_against_the_memory_budget() {
        // 16-bit RGBA: 8 bytes per pixel decoded, plus the 8-bit copy.
        let image = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_pixel(
            100,
            100,
            image::Rgba([1, 2, 3, u16::MAX]),
        );
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgba16(image)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        let mut tight = processing();
        // 10,000 pixels fit the area, not the 120,000 bytes: 40,000 allowed.
        tight.max_input_pixels = 10_000;
        assert!(matches!(
            process(out.get_ref(), &tight),
            Err(ProcessError::TooLarge(_))
        ));
        tight.max_input_pixels = 30_000;
        assert!(process(out.get_ref(), &tight).is_ok());
    }

    #[test]
    fn other_formats_are_refused() {
        for bytes in [
            &b"<?php system($_GET['c']); ?>"[..],
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            b"",
            b"II*\0\x08\0\0\0",
        ] {
            assert!(
                matches!(
                    process(bytes, &processing()),
                    Err(ProcessError::Unsupported)
                ),
                "{bytes:?}"
            );
        }
    }
}

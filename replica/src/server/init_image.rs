//! img2img source images and inpainting masks: base64 PNG or JPEG, with or without a `data:`
//! URI prefix, decoded under size limits (so a small body cannot expand into a huge allocation)
//! and resized to the requested output size.

use base64::Engine as _;
use image::{ImageFormat, RgbImage};

/// Largest side accepted for a source image, as a multiple of the model's largest output side:
/// a client may send a larger photo than it asks for, but not an arbitrarily large one.
const MAX_SIDE_FACTOR: u32 = 4;

/// Decode `text` and resize it to `width`×`height`. Errors are messages for the request field.
pub fn decode(text: &str, width: u32, height: u32, model_max_side: u32) -> Result<RgbImage, String> {
    let payload = strip_data_uri(text.trim())?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload.as_bytes())
        .map_err(|e| format!("not valid base64: {e}"))?;
    let format = image::guess_format(&bytes).map_err(|_| "not a PNG or JPEG image".to_string())?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(format!("{format:?} images are not accepted; send PNG or JPEG"));
    }
    let max_side = model_max_side.saturating_mul(MAX_SIDE_FACTOR);
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(&bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => format!("image is larger than {max_side}×{max_side} pixels"),
        other => format!("cannot decode the image: {other}"),
    })?;
    let rgb = decoded.into_rgb8();
    if rgb.width() == width && rgb.height() == height {
        return Ok(rgb);
    }
    // diffusers' `VaeImageProcessor` resizes with PIL's Lanczos (`resample="lanczos"`), for
    // img2img sources and inpainting masks alike.
    Ok(image::imageops::resize(
        &rgb,
        width,
        height,
        image::imageops::FilterType::Lanczos3,
    ))
}

/// Accept `data:image/png;base64,...` and plain base64.
fn strip_data_uri(text: &str) -> Result<&str, String> {
    let Some(rest) = text.strip_prefix("data:") else {
        return Ok(text);
    };
    let (meta, payload) = rest
        .split_once(',')
        .ok_or_else(|| "data URI without a `,`".to_string())?;
    if !meta.ends_with(";base64") {
        return Err("data URI must be base64 (`data:image/png;base64,...`)".into());
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_base64(width: u32, height: u32) -> String {
        let img = RgbImage::from_pixel(width, height, image::Rgb([10, 200, 30]));
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, ImageFormat::Png)
            .expect("encode test png");
        base64::engine::general_purpose::STANDARD.encode(out.into_inner())
    }

    #[test]
    fn plain_and_data_uri_base64_both_decode_and_resize() {
        let plain = png_base64(40, 24);
        let img = decode(&plain, 64, 32, 512).expect("plain base64");
        assert_eq!(img.dimensions(), (64, 32));
        assert_eq!(img.get_pixel(5, 5), &image::Rgb([10, 200, 30]));
        let uri = format!("data:image/png;base64,{plain}");
        assert_eq!(
            decode(&uri, 40, 24, 512).expect("data uri").dimensions(),
            (40, 24)
        );
    }

    #[test]
    fn garbage_and_oversized_images_are_refused_with_a_reason() {
        assert!(
            decode("!!!", 64, 64, 512)
                .expect_err("refused")
                .contains("base64")
        );
        let not_image = base64::engine::general_purpose::STANDARD.encode(b"hello world");
        assert!(
            decode(&not_image, 64, 64, 512)
                .expect_err("refused")
                .contains("PNG or JPEG")
        );
        assert!(
            decode("data:image/png,abc", 64, 64, 512)
                .expect_err("refused")
                .contains("base64")
        );
        let big = png_base64(300, 10);
        assert!(decode(&big, 64, 64, 64).expect_err("refused").contains("256"));
    }
}

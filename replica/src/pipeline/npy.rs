//! Reading NumPy `.npy` files (format versions 1–3) holding little-endian float32 arrays:
//! `--init-latents` and the golden data. Anything else is a clear error naming what was found.
//! Format: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>.

use std::path::Path;

/// The 6-byte magic string every `.npy` file starts with.
const MAGIC: &[u8] = b"\x93NUMPY";

/// Why a `.npy` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("not a .npy file: {0}")]
    Format(String),
    #[error("dtype {found} is not supported; save the array as float32 (`<f4`)")]
    Dtype { found: String },
    #[error("shape {found:?} does not match the expected {expected}")]
    Shape { found: Vec<usize>, expected: String },
}

impl NpyError {
    /// Short stable kind for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Format(_) => "npy_format",
            Self::Dtype { .. } => "npy_dtype",
            Self::Shape { .. } => "npy_shape",
        }
    }
}

/// A float32 array read from a `.npy` file, in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyF32 {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NpyF32 {
    /// Read `path`.
    pub fn read(path: &Path) -> Result<Self, NpyError> {
        let bytes = std::fs::read(path).map_err(|source| NpyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parse the bytes of a `.npy` file.
    pub fn parse(bytes: &[u8]) -> Result<Self, NpyError> {
        let format = |m: &str| NpyError::Format(m.to_string());
        if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
            return Err(format("missing the \\x93NUMPY magic"));
        }
        let major = bytes[6];
        let (header_len, header_start): (usize, usize) = match major {
            1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
            2 | 3 => {
                let raw = bytes
                    .get(8..12)
                    .ok_or_else(|| format("truncated header length"))?;
                (u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize, 12)
            }
            v => return Err(NpyError::Format(format!("unknown format version {v}"))),
        };
        let header_end = header_start
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| format("header runs past the end of the file"))?;
        let header = std::str::from_utf8(&bytes[header_start..header_end])
            .map_err(|_| format("header is not text"))?;
        let descr = dict_value(header, "descr").ok_or_else(|| format("header has no 'descr'"))?;
        let descr = descr.trim_matches(|c| c == '\'' || c == '"');
        if descr != "<f4" && descr != "=f4" {
            return Err(NpyError::Dtype {
                found: descr.to_string(),
            });
        }
        if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err(format(
                "Fortran-ordered arrays are not supported; save a C-ordered array",
            ));
        }
        let shape = parse_shape(dict_value(header, "shape").ok_or_else(|| format("header has no 'shape'"))?)?;
        let count = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format("shape overflows"))?;
        let body = &bytes[header_end..];
        if body.len() != count * 4 {
            return Err(NpyError::Format(format!(
                "{} data bytes for shape {shape:?} (need {})",
                body.len(),
                count * 4
            )));
        }
        let data = body
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Self { shape, data })
    }

    /// The data, after checking the shape is exactly `expected`.
    pub fn expect_shape(self, expected: &[usize]) -> Result<Vec<f32>, NpyError> {
        if self.shape != expected {
            return Err(NpyError::Shape {
                found: self.shape,
                expected: format!("{expected:?}"),
            });
        }
        Ok(self.data)
    }
}

/// The raw text of `key`'s value in the header's Python dict literal.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    if rest.starts_with('(') {
        rest.find(')').map(|end| &rest[..=end])
    } else {
        Some(rest.split([',', '}']).next().unwrap_or(rest).trim())
    }
}

/// `(1, 4, 8, 8)`, `(3,)` or `()` to dimensions.
fn parse_shape(text: &str) -> Result<Vec<usize>, NpyError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| NpyError::Format(format!("bad shape {text}")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| NpyError::Format(format!("bad shape {text}")))
        })
        .collect()
}

/// Bytes of a version-1 float32 `.npy` file (tests and tools write fixtures with it).
pub fn to_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    // Pad so the data starts on a 64-byte boundary, ending the header with a newline.
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(unpadded + data.len() * 4 + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&u16::try_from(header.len()).unwrap_or(u16::MAX).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_array_reads_back_with_its_shape() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let back = NpyF32::parse(&to_bytes(&[1, 2, 3, 4], &data)).expect("parse");
        assert_eq!(
            back,
            NpyF32 {
                shape: vec![1, 2, 3, 4],
                data
            }
        );
        let one = NpyF32::parse(&to_bytes(&[3], &[1.0, 2.0, 3.0])).expect("parse");
        assert_eq!(one.shape, [3]);
    }

    #[test]
    fn a_numpy_written_header_parses() {
        // Exactly what `np.save` wrote for np.zeros((1, 2), np.float32).
        let mut bytes =
            b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }".to_vec();
        bytes.extend(std::iter::repeat_n(b' ', 128 - 10 - bytes.len() + 10 - 1 - 10));
        let header_len = bytes.len() - 10 + 1;
        bytes[8] = header_len as u8;
        bytes.push(b'\n');
        bytes.extend([0u8; 8]);
        assert_eq!(NpyF32::parse(&bytes).expect("parse").data, [0.0, 0.0]);
    }

    #[test]
    fn float64_arrays_are_refused_naming_the_dtype() {
        let mut bytes = to_bytes(&[2], &[1.0, 2.0]);
        let at = bytes.windows(3).position(|w| w == b"<f4").expect("descr");
        bytes[at + 2] = b'8';
        let err = NpyF32::parse(&bytes).expect_err("f8");
        assert!(
            matches!(&err, NpyError::Dtype { found } if found == "<f8"),
            "{err}"
        );
    }

    #[test]
    fn truncated_data_and_garbage_are_format_errors() {
        let mut bytes = to_bytes(&[4], &[1.0, 2.0, 3.0, 4.0]);
        bytes.truncate(bytes.len() - 3);
        assert_eq!(NpyF32::parse(&bytes).expect_err("short").kind(), "npy_format");
        assert_eq!(
            NpyF32::parse(b"hello world, not numpy")
                .expect_err("garbage")
                .kind(),
            "npy_format"
        );
        assert_eq!(NpyF32::parse(b"").expect_err("empty").kind(), "npy_format");
    }

    #[test]
    fn a_wrong_shape_is_named_against_the_expected_one() {
        let arr = NpyF32::parse(&to_bytes(&[1, 4, 2, 2], &[0.0; 16])).expect("parse");
        let err = arr.expect_shape(&[1, 4, 8, 8]).expect_err("shape");
        assert_eq!(
            err.to_string(),
            "shape [1, 4, 2, 2] does not match the expected [1, 4, 8, 8]"
        );
    }
}

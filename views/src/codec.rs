//! The Redis value format of a view (SPEC "Redis data contract"): one format
//! byte, then the payload. `0x00`: JSON as is; `0x01`: an LZ4 block of the
//! JSON with its uncompressed length prepended as a little-endian u32.

use std::borrow::Cow;

/// Format byte of an uncompressed JSON view.
pub const FORMAT_JSON: u8 = 0x00;
/// Format byte of an LZ4-compressed JSON view.
pub const FORMAT_LZ4: u8 = 0x01;
/// JSON longer than this many bytes is stored compressed.
pub const LZ4_THRESHOLD: usize = 1024;

/// Why a stored value could not be turned back into JSON bytes.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty view value")]
    Empty,
    #[error("unknown view format byte {0:#04x}")]
    UnknownFormat(u8),
    #[error("corrupt lz4 view: {0}")]
    Lz4(#[from] lz4_flex::block::DecompressError),
    #[error("lz4 view declares {0} bytes, more than a view may hold")]
    TooLarge(usize),
    #[error("lz4 view declares {declared} bytes but holds {actual}")]
    SizeMismatch { declared: usize, actual: usize },
}

/// The largest JSON a view may decompress to: a corrupt length prefix must
/// not make a reader allocate gigabytes.
pub const MAX_VIEW_BYTES: usize = 64 * 1024 * 1024;

/// Encodes view JSON into its Redis value: LZ4 over [`LZ4_THRESHOLD`] bytes.
pub fn encode(json: &[u8]) -> Vec<u8> {
    // Real HTML compresses to about half (DESIGN.md, Benchmark data).
    let mut out = Vec::with_capacity(if json.len() > LZ4_THRESHOLD {
        json.len() / 2
    } else {
        json.len() + 1
    });
    encode_with(json, |part| out.extend_from_slice(part));
    out
}

/// Encodes view JSON as [`encode`] does, handing the value to `write` in
/// parts, so a caller can append it to a buffer of its own without an
/// intermediate copy.
pub fn encode_with(json: &[u8], mut write: impl FnMut(&[u8])) {
    if json.len() > LZ4_THRESHOLD {
        write(&[FORMAT_LZ4]);
        write(&lz4_flex::block::compress_prepend_size(json));
    } else {
        write(&[FORMAT_JSON]);
        write(json);
    }
}

/// Decodes a Redis view value back to its JSON bytes (borrowed when stored raw).
pub fn decode(value: &[u8]) -> Result<Cow<'_, [u8]>, DecodeError> {
    match payload(value)? {
        Payload::Json(json) => Ok(Cow::Borrowed(json)),
        Payload::Lz4(block) => inflate(block, 0).map(Cow::Owned),
    }
}

/// Decodes a Redis view value into a new buffer with room for `room` more
/// bytes after the JSON, so a caller can append to it without growing it
/// (an LZ4 view is decompressed straight into it, never copied).
pub(crate) fn decode_with_room(value: &[u8], room: usize) -> Result<Vec<u8>, DecodeError> {
    match payload(value)? {
        Payload::Json(json) => {
            let mut out = Vec::with_capacity(json.len() + room);
            out.extend_from_slice(json);
            Ok(out)
        }
        Payload::Lz4(block) => inflate(block, room),
    }
}

/// A stored value past its format byte.
enum Payload<'a> {
    Json(&'a [u8]),
    /// The LZ4 block with its length prefix.
    Lz4(&'a [u8]),
}

fn payload(value: &[u8]) -> Result<Payload<'_>, DecodeError> {
    match value.split_first() {
        None => Err(DecodeError::Empty),
        Some((&FORMAT_JSON, json)) => Ok(Payload::Json(json)),
        Some((&FORMAT_LZ4, block)) => Ok(Payload::Lz4(block)),
        Some((&other, _)) => Err(DecodeError::UnknownFormat(other)),
    }
}

/// Decompresses a length-prefixed LZ4 block into a buffer of exactly its
/// declared length plus `room` spare capacity.
fn inflate(block: &[u8], room: usize) -> Result<Vec<u8>, DecodeError> {
    let (size, body) = block.split_at_checked(4).ok_or(DecodeError::Empty)?;
    let declared = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    if declared > MAX_VIEW_BYTES {
        return Err(DecodeError::TooLarge(declared));
    }
    // lz4_flex writes at most the capacity it is given, so a corrupt block
    // that runs past `declared` is caught by the length check below.
    let json = lz4_flex::block::decompress(body, declared + room)?;
    if json.len() != declared {
        return Err(DecodeError::SizeMismatch {
            declared,
            actual: json.len(),
        });
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_json_is_stored_as_is_behind_format_byte_zero() {
        let json = br#"{"id":1}"#;
        let value = encode(json);
        assert_eq!(value[0], FORMAT_JSON);
        assert_eq!(&value[1..], json);
        assert_eq!(decode(&value).expect("decodes").as_ref(), json);
    }

    #[test]
    fn json_of_exactly_the_threshold_is_not_compressed() {
        let json = vec![b'a'; LZ4_THRESHOLD];
        assert_eq!(encode(&json)[0], FORMAT_JSON);
        let json = vec![b'a'; LZ4_THRESHOLD + 1];
        assert_eq!(encode(&json)[0], FORMAT_LZ4);
    }

    #[test]
    fn large_json_round_trips_through_lz4_with_prepended_size() {
        let json: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("{{\"k{i}\":{}}}", i * 7919 % 1013).into_bytes())
            .collect();
        let value = encode(&json);
        assert_eq!(value[0], FORMAT_LZ4);
        let declared = u32::from_le_bytes(value[1..5].try_into().expect("4 bytes"));
        assert_eq!(declared as usize, json.len());
        assert_eq!(decode(&value).expect("decodes").as_ref(), json.as_slice());
    }

    #[test]
    fn decoding_with_room_gives_the_same_json_and_spare_capacity() {
        let json: Vec<u8> = (0..3000u32)
            .flat_map(|i| format!("<li>{i}</li>").into_bytes())
            .collect();
        for value in [encode(&json), encode(br#"{"id":1}"#)] {
            let expected = decode(&value).expect("decodes").into_owned();
            let out = decode_with_room(&value, 300).expect("decodes");
            assert_eq!(out, expected);
            assert!(out.capacity() >= out.len() + 300);
        }
        let mut truncated = encode(&json);
        truncated.truncate(truncated.len() / 2);
        assert!(decode_with_room(&truncated, 300).is_err());
    }

    #[test]
    fn unknown_format_and_empty_values_are_errors_not_panics() {
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(&[7, 1, 2]),
            Err(DecodeError::UnknownFormat(7))
        ));
        assert!(decode(&[FORMAT_LZ4, 255, 255, 255, 255, 0]).is_err());
        assert!(
            decode(&[FORMAT_LZ4, 10, 0, 0, 0, 0]).is_err(),
            "declares more than it holds"
        );
        assert!(decode(&[FORMAT_LZ4, 1]).is_err(), "truncated length");
    }

    #[test]
    fn a_mangled_lz4_view_is_an_error_or_other_bytes_never_a_panic() {
        // lz4_flex decodes with its fast decoder, bounds-checked
        // (`checked-decode`): corrupt blocks must fail cleanly.
        let json: Vec<u8> = (0..3000u32)
            .flat_map(|i| format!("<p class=\"c{}\">{i}</p>", i % 17).into_bytes())
            .collect();
        let value = encode(&json);
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for round in 0..2000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut mangled = value.clone();
            let at = 5 + (seed as usize % (mangled.len() - 5));
            mangled[at] = (seed >> 32) as u8;
            if round % 3 == 0 {
                mangled.truncate(at.max(6));
            }
            if let Ok(out) = decode(&mangled) {
                assert_eq!(out.len(), json.len(), "the declared length holds");
            }
        }
    }
}

//! PostgreSQL WAL positions in their text form (`%X/%X`, not zero-padded),
//! compared as 64-bit numbers, never as strings.

use std::{fmt, str::FromStr};

/// A WAL position (log sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// The text was not an LSN of the form `X/X` with hexadecimal halves.
#[derive(Debug, thiserror::Error)]
#[error("not an LSN (expected hexadecimal `X/X`, for example `0/16B3748`): {0:?}")]
pub struct ParseLsnError(String);

impl Lsn {
    /// Exactly the texts [`Lsn::from_str`] accepts, as a regular expression
    /// (for API references): two halves of 1 to 8 hexadecimal digits.
    pub const PATTERN: &'static str = "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$";
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.chars().take(40).collect());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid =
            |h: &str| !h.is_empty() && h.len() <= 8 && h.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_postgresql_without_padding() {
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert_eq!(Lsn((0x16 << 32) | 0xB374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn parses_padded_and_unpadded_and_compares_numerically() {
        let a: Lsn = "0/9FFFFFF".parse().expect("lsn");
        let b: Lsn = "0/10000000".parse().expect("lsn");
        assert!(a < b, "numeric, not string, order");
        assert_eq!(
            "00000001/0000000A".parse::<Lsn>().expect("lsn"),
            Lsn((1 << 32) | 10)
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "0", "/1", "1/", "g/1", "0/1/2", "123456789/0", " 0/1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
        }
    }
}

//! User and item ids as they appear in the data (integers or strings), their stable hashes
//! (owner rank, hold-out split, initial factors) and the interner that numbers them densely.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::error::Result;
use crate::wire::{Reader, Writer};

/// An id from the data. A string that spells a plain integer (`"42"`, not `"042"`) is the same id
/// as the integer, so CSV and Parquet copies of a dataset agree.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Id {
    Int(i64),
    Str(Box<str>),
}

impl Id {
    pub fn from_str_value(s: &str) -> Id {
        match parse_canonical_int(s) {
            Some(v) => Id::Int(v),
            None => Id::Str(s.into()),
        }
    }

    /// A hash that never changes across versions, platforms or rank counts.
    pub fn stable_hash(&self) -> u64 {
        match self {
            Id::Int(v) => hash_int(*v),
            Id::Str(s) => hash_str(s),
        }
    }

    pub fn write(&self, w: &mut Writer) {
        match self {
            Id::Int(v) => {
                w.u8(0);
                w.i64(*v);
            }
            Id::Str(s) => {
                w.u8(1);
                w.bytes(s.as_bytes());
            }
        }
    }

    pub fn read(r: &mut Reader) -> Result<Id> {
        match r.u8()? {
            0 => Ok(Id::Int(r.i64()?)),
            _ => {
                let b = r.bytes()?;
                Ok(Id::Str(String::from_utf8_lossy(b).into()))
            }
        }
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Int(v) => write!(f, "{v}"),
            Id::Str(s) => f.write_str(s),
        }
    }
}

/// `"42"` -> 42; `"042"`, `"+42"`, `"4.2"`, `""` -> None (they stay strings).
pub fn parse_canonical_int(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits[0] == b'0' && (digits.len() > 1 || b.len() != digits.len()) {
        return None;
    }
    s.parse().ok()
}

/// splitmix64's finaliser: a strong, fast 64-bit mix.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline]
pub fn hash_int(v: i64) -> u64 {
    mix64(v as u64 ^ 0x6A09_E667_F3BC_C908)
}

/// FNV-1a over the bytes, then mixed; tagged so that no string collides with an integer's hash
/// by construction of the input domain.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in s.as_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h ^ 0xBB67_AE85_84CA_A73B)
}

/// A fast non-cryptographic hasher for the interner's maps (keys are trusted-size ids).
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        mix64(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut v = [0u8; 8];
            v[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(v)).wrapping_mul(0x517C_C1B7_2722_0A95);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    fn write_i64(&mut self, i: i64) {
        self.write_u64(i as u64)
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64)
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64)
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Numbers ids densely (0, 1, 2, ...) in order of first appearance.
#[derive(Default)]
pub struct Interner {
    ints: FastMap<i64, u32>,
    strs: FastMap<Box<str>, u32>,
    ids: Vec<Id>,
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    #[inline]
    pub fn intern_int(&mut self, v: i64) -> u32 {
        let next = self.ids.len() as u32;
        *self.ints.entry(v).or_insert_with(|| {
            self.ids.push(Id::Int(v));
            next
        })
    }

    /// Intern a string value (canonical integers become integer ids).
    #[inline]
    pub fn intern_str(&mut self, s: &str) -> u32 {
        if let Some(v) = parse_canonical_int(s) {
            return self.intern_int(v);
        }
        if let Some(&i) = self.strs.get(s) {
            return i;
        }
        let next = self.ids.len() as u32;
        self.strs.insert(s.into(), next);
        self.ids.push(Id::Str(s.into()));
        next
    }

    pub fn intern(&mut self, id: &Id) -> u32 {
        match id {
            Id::Int(v) => self.intern_int(*v),
            Id::Str(s) => self.intern_str(s),
        }
    }

    pub fn ids(&self) -> &[Id] {
        &self.ids
    }

    pub fn into_ids(self) -> Vec<Id> {
        self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_integers_only() {
        assert_eq!(parse_canonical_int("42"), Some(42));
        assert_eq!(parse_canonical_int("-7"), Some(-7));
        assert_eq!(parse_canonical_int("0"), Some(0));
        assert_eq!(parse_canonical_int("042"), None);
        assert_eq!(parse_canonical_int("-0"), None);
        assert_eq!(parse_canonical_int("+4"), None);
        assert_eq!(parse_canonical_int("4.0"), None);
        assert_eq!(parse_canonical_int(""), None);
        assert_eq!(parse_canonical_int("99999999999999999999"), None);
    }

    #[test]
    fn string_spelling_an_integer_is_the_integer_id() {
        let mut i = Interner::new();
        let a = i.intern_str("17");
        let b = i.intern_int(17);
        let c = i.intern_str("u17");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(i.ids(), &[Id::Int(17), Id::Str("u17".into())]);
    }

    const PINNED_HASH_INT_1: u64 = 7_192_185_014_346_937_746;
    const PINNED_HASH_STR_ABC: u64 = 3_840_074_555_849_445_763;

    #[test]
    fn stable_hashes_do_not_change() {
        // Pinned values: the hold-out split and the owner of every user depend on them.
        assert_eq!(Id::Int(1).stable_hash(), hash_int(1));
        assert_eq!(hash_int(1), PINNED_HASH_INT_1);
        assert_eq!(hash_str("abc"), PINNED_HASH_STR_ABC);
        assert_ne!(hash_str("1"), hash_int(1));
        assert_eq!(hash_str("abc"), hash_str("abc"));
    }
}

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

/// Integer ids to their numbers: open addressing with linear probing, each slot a key and its
/// number side by side (one cache line per probe), so a caller can prefetch the slot of an id
/// it will intern soon (`Interner::prefetch_int`): interning is a cache miss per row on a
/// table of 100k users, and a column of ids is known ahead.
#[derive(Default)]
struct IntTable {
    /// (key, number); number `u32::MAX` marks an empty slot. A power of two long, or empty.
    slots: Vec<(i64, u32)>,
    len: usize,
}

const EMPTY_SLOT: u32 = u32::MAX;

impl IntTable {
    #[inline]
    fn home(&self, key: i64) -> usize {
        mix64(key as u64) as usize & (self.slots.len() - 1)
    }

    #[inline]
    fn prefetch(&self, key: i64) {
        if !self.slots.is_empty() {
            crate::prefetch::prefetch_row(&self.slots, self.home(key), 1);
        }
    }

    /// The number of `key`, or `new()` stored as its number.
    #[inline]
    fn get_or_insert(&mut self, key: i64, new: impl FnOnce() -> u32) -> u32 {
        // At most half full: probes stay short.
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        loop {
            let (k, number) = self.slots[at];
            if number == EMPTY_SLOT {
                let number = new();
                self.slots[at] = (key, number);
                self.len += 1;
                return number;
            }
            if k == key {
                return number;
            }
            at = (at + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let len = (2 * self.slots.len()).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![(0, EMPTY_SLOT); len]);
        let mask = self.slots.len() - 1;
        for (key, number) in old.into_iter().filter(|s| s.1 != EMPTY_SLOT) {
            let mut at = self.home(key);
            while self.slots[at].1 != EMPTY_SLOT {
                at = (at + 1) & mask;
            }
            self.slots[at] = (key, number);
        }
    }
}

/// Numbers ids densely (0, 1, 2, ...) in order of first appearance.
#[derive(Default)]
pub struct Interner {
    ints: IntTable,
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
        let ids = &mut self.ids;
        self.ints.get_or_insert(v, || {
            ids.push(Id::Int(v));
            ids.len() as u32 - 1
        })
    }

    /// Start loading where `intern_int(v)` will look, a few rows ahead of it.
    #[inline]
    pub fn prefetch_int(&self, v: i64) {
        self.ints.prefetch(v)
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

    #[test]
    fn integer_ids_are_numbered_in_order_of_first_appearance_through_growth() {
        let mut rng = crate::rng::Rng::new(7, 1);
        let values: Vec<i64> = (0..300_000)
            .map(|n| match n % 3 {
                0 => (rng.next_u64() % 50_000) as i64 - 25_000,
                1 => n as i64 * 1_000_003,
                _ => i64::MIN + (rng.next_u64() % 1000) as i64,
            })
            .collect();
        let mut interner = Interner::new();
        let mut reference: HashMap<i64, u32> = HashMap::new();
        for (n, &v) in values.iter().enumerate() {
            if let Some(&ahead) = values.get(n + 8) {
                interner.prefetch_int(ahead);
            }
            let next = reference.len() as u32;
            let expected = *reference.entry(v).or_insert(next);
            assert_eq!(interner.intern_int(v), expected, "value {v}");
        }
        assert_eq!(interner.len(), reference.len());
        for (&v, &number) in &reference {
            assert_eq!(interner.ids()[number as usize], Id::Int(v));
        }
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

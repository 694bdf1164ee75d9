//! A stable hash, part of the contract between stages and the host.
//!
//! [`stable_hash`] is FNV-1a, 64-bit (offset basis `0xcbf29ce484222325`, prime
//! `0x100000001b3`), over the bytes as given. The host's native `hash_bucket` operator
//! uses the same function, so a key bucketed in a stage and the same key bucketed by
//! the host land in the same bucket, and a pipeline can move that work between the two
//! without changing a single output. It is stable across platforms, releases and runs
//! (unlike `std`'s `DefaultHasher`, which is randomly seeded and may change).
//!
//! It is not a cryptographic hash and not a defence against hash flooding; it is a
//! fast, fixed, well-distributed function for bucketing.
//!
//! For strings, hash the UTF-8 bytes; the bucket of a key is
//! `stable_hash(key.as_bytes()) % buckets`, which [`bucket`] computes.

use std::num::NonZeroU32;

/// FNV-1a 64-bit offset basis.
const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// The FNV-1a 64-bit hash of `bytes`: the same on every platform and in every release,
/// and the same the host's `hash_bucket` operator computes.
///
/// # Examples
///
/// ```
/// use weir_guest::hash::stable_hash;
///
/// assert_eq!(stable_hash(b""), 0xcbf29ce484222325);
/// assert_eq!(stable_hash(b"a"), 0xaf63dc4c8601ec8c);
/// ```
pub const fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash = OFFSET_BASIS;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(PRIME);
        i += 1;
    }
    hash
}

/// The bucket of `bytes` among `buckets`: `stable_hash(bytes) % buckets`, as the
/// host's `hash_bucket` operator computes it. `NonZeroU32` because zero buckets has no
/// answer.
///
/// # Examples
///
/// ```
/// use std::num::NonZeroU32;
/// use weir_guest::hash::{bucket, stable_hash};
///
/// let n = NonZeroU32::new(1024).unwrap();
/// assert_eq!(u64::from(bucket(b"u42", n)), stable_hash(b"u42") % 1024);
/// ```
pub const fn bucket(bytes: &[u8], buckets: NonZeroU32) -> u32 {
    // The remainder is below `buckets`, a u32, so the cast is exact.
    (stable_hash(bytes) % buckets.get() as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fnv1a_64_values() {
        // The FNV reference test vectors.
        assert_eq!(stable_hash(b""), 0xcbf29ce484222325);
        assert_eq!(stable_hash(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn bucket_is_hash_mod_n() {
        let one = NonZeroU32::new(1).unwrap();
        assert_eq!(bucket(b"anything", one), 0);
        let n = NonZeroU32::new(7).unwrap();
        assert_eq!(u64::from(bucket(b"u1", n)), stable_hash(b"u1") % 7);
    }
}

//! Bit-packed bitmaps, least significant bit first, as Arrow packs them: bit `i % 8` of
//! byte `i / 8` belongs to row `i`. Validity bitmaps and boolean values both use it.

/// Bytes needed to hold `len` bits.
pub(crate) const fn bytes_for(len: usize) -> usize {
    len.div_ceil(8)
}

/// Bit `i` of `bits`. The caller keeps `i` below the bitmap's length.
#[inline]
pub(crate) fn get(bits: &[u8], i: usize) -> bool {
    bits[i / 8] & (1 << (i % 8)) != 0
}

/// How many of the first `len` bits are clear.
pub(crate) fn count_zeros(bits: &[u8], len: usize) -> usize {
    let full = len / 8;
    let ones: usize = bits[..full].iter().map(|b| b.count_ones() as usize).sum();
    let tail = len % 8;
    let tail_ones = if tail == 0 {
        0
    } else {
        (bits[full] & ((1u8 << tail) - 1)).count_ones() as usize
    };
    len - ones - tail_ones
}

/// Calls `f` with the index of every clear bit among the first `len`, in order.
///
/// A byte at a time: a fully valid byte (the common case) costs one comparison.
#[inline]
pub(crate) fn for_each_zero(bits: &[u8], len: usize, mut f: impl FnMut(usize)) {
    for (byte_index, &byte) in bits.iter().enumerate().take(bytes_for(len)) {
        let mut zeros = !byte;
        while zeros != 0 {
            let i = byte_index * 8 + zeros.trailing_zeros() as usize;
            if i >= len {
                return;
            }
            f(i);
            zeros &= zeros - 1;
        }
    }
}

/// Packs bits one at a time.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    bytes: Vec<u8>,
    len: usize,
    zeros: usize,
}

impl Builder {
    pub(crate) fn with_capacity(bits: usize) -> Self {
        Builder {
            bytes: Vec::with_capacity(bytes_for(bits)),
            len: 0,
            zeros: 0,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, bit: bool) {
        if self.len.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            // The push above guarantees a last byte.
            if let Some(last) = self.bytes.last_mut() {
                *last |= 1 << (self.len % 8);
            }
        } else {
            self.zeros += 1;
        }
        self.len += 1;
    }

    /// The packed bits.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.bytes
    }

    /// The packed bits as a validity bitmap: `None` when every bit is set, which is
    /// how the contract says "no nulls".
    pub(crate) fn finish_validity(self) -> Option<Vec<u8>> {
        (self.zeros > 0).then_some(self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_lsb_first() {
        let mut b = Builder::with_capacity(10);
        for bit in [
            true, false, false, true, false, false, false, false, false, true,
        ] {
            b.push(bit);
        }
        let bytes = b.finish();
        assert_eq!(bytes, vec![0b0000_1001, 0b0000_0010]);
        assert!(get(&bytes, 0));
        assert!(!get(&bytes, 1));
        assert!(get(&bytes, 3));
        assert!(get(&bytes, 9));
        assert_eq!(count_zeros(&bytes, 10), 7);
        assert_eq!(count_zeros(&bytes, 8), 6);
        let mut zeros = Vec::new();
        for_each_zero(&bytes, 10, |i| zeros.push(i));
        assert_eq!(zeros, [1, 2, 4, 5, 6, 7, 8]);
        zeros.clear();
        // Bits past `len` are ignored, set or not.
        for_each_zero(&[0b0000_0001, 0], 9, |i| zeros.push(i));
        assert_eq!(zeros, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn all_set_validity_is_none() {
        let mut b = Builder::with_capacity(3);
        (0..3).for_each(|_| b.push(true));
        assert_eq!(b.finish_validity(), None);
    }
}

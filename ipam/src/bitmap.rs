//! A growable bitmap: words past the end read as zero, so an empty bitmap
//! over millions of bits costs nothing until bits are set.

/// Bits indexed by `u64`; storage grows to the highest set bit and shrinks
/// when the top words become zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bitmap {
    words: Vec<u64>,
}

fn word_index(i: u64) -> usize {
    usize::try_from(i / 64).unwrap_or(usize::MAX)
}

impl Bitmap {
    fn word(&self, w: usize) -> u64 {
        self.words.get(w).copied().unwrap_or(0)
    }

    fn trim(&mut self) {
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }

    /// Whether bit `i` is set.
    pub fn get(&self, i: u64) -> bool {
        self.word(word_index(i)) & (1 << (i % 64)) != 0
    }

    /// Set bit `i`.
    pub fn set(&mut self, i: u64) {
        let w = word_index(i);
        if w >= self.words.len() {
            self.words.resize(w + 1, 0);
        }
        self.words[w] |= 1 << (i % 64);
    }

    /// Clear bit `i`.
    pub fn clear(&mut self, i: u64) {
        let w = word_index(i);
        if let Some(word) = self.words.get_mut(w) {
            *word &= !(1 << (i % 64));
            self.trim();
        }
    }

    /// Mask of the bits of word `w` that lie in `lo..=hi`.
    fn span_mask(w: u64, lo: u64, hi: u64) -> u64 {
        let first = w * 64;
        let from = lo.max(first) - first;
        let to = hi.min(first + 63) - first;
        (u64::MAX << from) & (u64::MAX >> (63 - to))
    }

    /// Set every bit of `lo..=hi`.
    pub fn set_range(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        let last = word_index(hi);
        if last >= self.words.len() {
            self.words.resize(last + 1, 0);
        }
        for w in lo / 64..=hi / 64 {
            self.words[w as usize] |= Self::span_mask(w, lo, hi);
        }
    }

    /// Clear every bit of `lo..=hi`.
    pub fn clear_range(&mut self, lo: u64, hi: u64) {
        if lo > hi {
            return;
        }
        let end = (hi / 64).min(self.words.len() as u64);
        for w in lo / 64..=end {
            if let Some(word) = self.words.get_mut(w as usize) {
                *word &= !Self::span_mask(w, lo, hi);
            }
        }
        self.trim();
    }

    /// Lowest set bit in `lo..=hi`.
    pub fn first_set(&self, lo: u64, hi: u64) -> Option<u64> {
        if lo > hi {
            return None;
        }
        let len = self.words.len() as u64;
        let mut w = lo / 64;
        while w <= hi / 64 && w < len {
            let bits = self.word(w as usize) & Self::span_mask(w, lo, hi);
            if bits != 0 {
                return Some(w * 64 + u64::from(bits.trailing_zeros()));
            }
            w += 1;
        }
        None
    }

    /// Lowest bit in `lo..=hi` that is clear in both `self` and `other`.
    pub fn next_clear_union(&self, other: &Bitmap, lo: u64, hi: u64) -> Option<u64> {
        if lo > hi {
            return None;
        }
        let len = self.words.len().max(other.words.len()) as u64;
        let mut w = lo / 64;
        while w <= hi / 64 {
            if w >= len {
                // Past both bitmaps: everything is clear.
                return Some(lo.max(w * 64));
            }
            let taken = self.word(w as usize) | other.word(w as usize);
            let free = !taken & Self::span_mask(w, lo, hi);
            if free != 0 {
                return Some(w * 64 + u64::from(free.trailing_zeros()));
            }
            w += 1;
        }
        None
    }

    /// Lowest clear bit in `lo..=hi`.
    pub fn next_clear(&self, lo: u64, hi: u64) -> Option<u64> {
        self.next_clear_union(&Bitmap::default(), lo, hi)
    }

    /// Number of set bits.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Maximal runs of set bits, in order, as inclusive `(first, last)`.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (w, &word) in self.words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                // Length of the run of ones starting at b within this word.
                let ones = u64::from((bits >> b).trailing_ones());
                let first = w as u64 * 64 + b;
                let last = first + ones - 1;
                match runs.last_mut() {
                    Some(r) if r.1 + 1 == first => r.1 = last,
                    _ => runs.push((first, last)),
                }
                bits = if b + ones >= 64 {
                    0
                } else {
                    bits & (u64::MAX << (b + ones))
                };
            }
        }
        runs
    }

    /// The bits as hex, 16 digits per 64-bit word, lowest word first.
    pub fn to_hex(&self) -> String {
        self.words.iter().map(|w| format!("{w:016x}")).collect()
    }

    /// Bits from [`Bitmap::to_hex`]; `None` unless the text is well formed
    /// and sets no bit at or above `len`.
    pub fn from_hex(text: &str, len: u64) -> Option<Bitmap> {
        if !text.len().is_multiple_of(16) || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let words = text
            .as_bytes()
            .chunks(16)
            .map(|c| u64::from_str_radix(std::str::from_utf8(c).ok()?, 16).ok())
            .collect::<Option<Vec<u64>>>()?;
        let mut b = Bitmap { words };
        b.trim();
        match b.words.len() {
            0 => Some(b),
            n if (n as u64 - 1) * 64 >= len => None,
            _ => b.first_set(len, u64::MAX).is_none().then_some(b),
        }
    }

    /// Whether any bit is set in both.
    pub fn intersects(&self, other: &Bitmap) -> bool {
        self.words.iter().zip(&other.words).any(|(a, b)| a & b != 0)
    }

    /// Set every bit set in `other`.
    pub fn union_with(&mut self, other: &Bitmap) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.words.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn grows_and_trims() {
        let mut b = Bitmap::default();
        assert!(!b.get(1_000_000));
        b.set(130);
        assert!(b.get(130));
        assert_eq!(b.words.len(), 3);
        b.clear(130);
        assert!(b.words.is_empty());
    }

    #[test]
    fn ranges() {
        let mut b = Bitmap::default();
        b.set_range(3, 200);
        assert_eq!(b.count_ones(), 198);
        assert_eq!(b.runs(), vec![(3, 200)]);
        assert_eq!(b.first_set(0, 10), Some(3));
        assert_eq!(b.next_clear(3, 1000), Some(201));
        assert_eq!(b.next_clear(3, 200), None);
        b.clear_range(64, 127);
        assert_eq!(b.runs(), vec![(3, 63), (128, 200)]);
        assert_eq!(b.next_clear(3, 1000), Some(64));
        b.clear_range(0, 10_000);
        assert!(b.words.is_empty());
        b.set_range(0, 63);
        assert_eq!(b.runs(), vec![(0, 63)]);
        b.set_range(64, 64);
        assert_eq!(b.runs(), vec![(0, 64)]);
    }

    #[test]
    fn union() {
        let mut a = Bitmap::default();
        let mut b = Bitmap::default();
        a.set_range(0, 99);
        b.set_range(100, 300);
        assert_eq!(a.next_clear_union(&b, 0, 1 << 20), Some(301));
        assert_eq!(a.next_clear_union(&b, 0, 300), None);
    }

    #[test]
    fn hex() {
        let mut b = Bitmap::default();
        b.set_range(0, 3);
        b.set(64);
        let text = b.to_hex();
        assert_eq!(text, "000000000000000f0000000000000001");
        assert_eq!(Bitmap::from_hex(&text, 65), Some(b.clone()));
        assert_eq!(Bitmap::from_hex(&text, 64), None);
        assert_eq!(Bitmap::from_hex(&text, 1000), Some(b));
        assert_eq!(Bitmap::from_hex("", 0), Some(Bitmap::default()));
        assert_eq!(
            Bitmap::from_hex("0000000000000000", 0),
            Some(Bitmap::default())
        );
        assert_eq!(Bitmap::from_hex("xyz", 64), None);
        assert_eq!(Bitmap::from_hex("000000000000000g", 64), None);
        assert_eq!(Bitmap::from_hex("+00000000000000f", 64), None);
        assert_eq!(Bitmap::from_hex("é00000000000000", 64), None);
    }

    proptest! {
        #[test]
        fn matches_model(ops in prop::collection::vec((0u8..4, 0u64..300, 0u64..300), 0..60)) {
            let mut b = Bitmap::default();
            let mut m = BTreeSet::new();
            for (op, x, y) in ops {
                let (lo, hi) = (x.min(y), x.max(y));
                match op {
                    0 => { b.set(x); m.insert(x); }
                    1 => { b.clear(x); m.remove(&x); }
                    2 => { b.set_range(lo, hi); m.extend(lo..=hi); }
                    _ => { b.clear_range(lo, hi); for i in lo..=hi { m.remove(&i); } }
                }
                prop_assert_eq!(b.count_ones(), m.len() as u64);
                prop_assert_eq!(b.first_set(lo, hi), m.range(lo..=hi).next().copied());
                prop_assert_eq!(b.next_clear(lo, hi), (lo..=hi).find(|i| !m.contains(i)));
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for &i in &m {
                    match runs.last_mut() {
                        Some(r) if r.1 + 1 == i => r.1 = i,
                        _ => runs.push((i, i)),
                    }
                }
                prop_assert_eq!(b.runs(), runs);
                prop_assert!(b.words.last() != Some(&0));
            }
        }
    }
}

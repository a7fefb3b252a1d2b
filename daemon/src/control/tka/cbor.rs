//! The few CBOR (RFC 8949) items a node-key signature is made of: maps
//! with small unsigned keys, unsigned integers and byte strings.
//!
//! Encoding is the canonical form (CTAP2): every length and integer in its
//! shortest head, map keys in ascending order; the signing digest is taken
//! over these bytes, so they must match the signer's exactly. Decoding is
//! strict where ambiguity could hide a second meaning (indefinite lengths,
//! tags, duplicate keys, trailing bytes) and bounded in nesting.

/// Major types used here.
const UNSIGNED: u8 = 0;
const BYTES: u8 = 2;
const MAP: u8 = 5;

/// Additional-information value for an indefinite length.
const INDEFINITE: u8 = 31;

/// Why bytes are not a well-formed signature encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("CBOR ends in the middle of an item")]
    Truncated,
    #[error("CBOR has {0} bytes after the signature")]
    TrailingBytes(usize),
    #[error("CBOR uses an indefinite length, which signatures never do")]
    IndefiniteLength,
    #[error("CBOR uses a reserved additional-information value {0}")]
    Reserved(u8),
    #[error("CBOR uses a tag, which signatures never do")]
    Tagged,
    #[error("CBOR item of major type {found} where {expected} was expected")]
    UnexpectedType { expected: &'static str, found: u8 },
    #[error("CBOR map key {0} appears twice")]
    DuplicateKey(u64),
    #[error("CBOR nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("CBOR length {0} does not fit the input")]
    TooLong(u64),
}

/// Appends the shortest head for major type `major` with argument `arg`.
fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let major = major << 5;
    // Each arm checked the range, so the narrowing casts are exact.
    match arg {
        0..=23 => out.push(major | arg as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(arg as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&arg.to_be_bytes());
        }
    }
}

/// Appends an unsigned integer.
pub fn unsigned(out: &mut Vec<u8>, value: u64) {
    head(out, UNSIGNED, value);
}

/// Appends a byte string.
pub fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    head(out, BYTES, value.len() as u64);
    out.extend_from_slice(value);
}

/// Appends the head of a map of `pairs` entries; the caller appends the
/// keys (ascending) and values.
pub fn map(out: &mut Vec<u8>, pairs: usize) {
    head(out, MAP, pairs as u64);
}

/// Reads items from a byte slice, front to back.
pub struct Reader<'a> {
    input: &'a [u8],
    max_depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader that refuses maps nested deeper than `max_depth`.
    pub fn new(input: &'a [u8], max_depth: usize) -> Self {
        Self { input, max_depth }
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), CborError> {
        match self.input.len() {
            0 => Ok(()),
            left => Err(CborError::TrailingBytes(left)),
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], CborError> {
        if self.input.len() < len {
            return Err(CborError::Truncated);
        }
        let (taken, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(taken)
    }

    /// The next head: major type and argument.
    fn head(&mut self) -> Result<(u8, u64), CborError> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]])),
            26 => {
                let b = self.take(4)?;
                u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            }
            27 => {
                let b = self.take(8)?;
                u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            }
            INDEFINITE => return Err(CborError::IndefiniteLength),
            reserved => return Err(CborError::Reserved(reserved)),
        };
        if major == 6 {
            return Err(CborError::Tagged);
        }
        Ok((major, arg))
    }

    fn expect(&mut self, major: u8, expected: &'static str) -> Result<u64, CborError> {
        match self.head()? {
            (found, arg) if found == major => Ok(arg),
            (found, _) => Err(CborError::UnexpectedType { expected, found }),
        }
    }

    /// An unsigned integer.
    pub fn unsigned(&mut self) -> Result<u64, CborError> {
        self.expect(UNSIGNED, "an unsigned integer")
    }

    /// A byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], CborError> {
        let len = self.expect(BYTES, "a byte string")?;
        let len = usize::try_from(len).map_err(|_| CborError::TooLong(len))?;
        self.take(len)
    }

    /// A map at nesting level `depth` (1 for the outermost): calls `entry`
    /// with each key, which must read exactly that key's value. Keys must be
    /// unsigned integers and unique.
    pub fn map(
        &mut self,
        depth: usize,
        mut entry: impl FnMut(&mut Self, u64) -> Result<(), CborError>,
    ) -> Result<(), CborError> {
        if depth > self.max_depth {
            return Err(CborError::TooDeep(self.max_depth));
        }
        let pairs = self.expect(MAP, "a map")?;
        // Each pair takes at least two bytes: a bound before looping.
        if pairs > (self.input.len() / 2) as u64 {
            return Err(CborError::Truncated);
        }
        let mut seen: Vec<u64> = Vec::new();
        for _ in 0..pairs {
            let key = self.unsigned()?;
            if seen.contains(&key) {
                return Err(CborError::DuplicateKey(key));
            }
            seen.push(key);
            entry(self, key)?;
        }
        Ok(())
    }

    /// Skips one item of any major type but tags (a field this version
    /// does not know), within the nesting bound.
    pub fn skip(&mut self, depth: usize) -> Result<(), CborError> {
        if depth > self.max_depth {
            return Err(CborError::TooDeep(self.max_depth));
        }
        let (major, arg) = self.head()?;
        let len = |arg: u64| usize::try_from(arg).map_err(|_| CborError::TooLong(arg));
        match major {
            // Integers and simple values carry everything in the head.
            0 | 1 | 7 => Ok(()),
            2 | 3 => self.take(len(arg)?).map(drop),
            4 => (0..arg).try_for_each(|_| self.skip(depth + 1)),
            _ => (0..arg).try_for_each(|_| {
                self.skip(depth + 1)?;
                self.skip(depth + 1)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    /// Heads take the shortest form RFC 8949 §4.2.1 asks for.
    #[test]
    fn contract_heads_are_shortest() {
        assert_eq!(encoded(|o| unsigned(o, 0)), [0x00]);
        assert_eq!(encoded(|o| unsigned(o, 23)), [0x17]);
        assert_eq!(encoded(|o| unsigned(o, 24)), [0x18, 24]);
        assert_eq!(encoded(|o| unsigned(o, 255)), [0x18, 0xff]);
        assert_eq!(encoded(|o| unsigned(o, 256)), [0x19, 0x01, 0x00]);
        assert_eq!(encoded(|o| unsigned(o, 65536)), [0x1a, 0, 1, 0, 0]);
        assert_eq!(
            encoded(|o| unsigned(o, 1 << 32)),
            [0x1b, 0, 0, 0, 1, 0, 0, 0, 0]
        );
        assert_eq!(encoded(|o| bytes(o, b"np")), [0x42, b'n', b'p']);
        let long = encoded(|o| bytes(o, &[7; 34]));
        assert_eq!(&long[..2], [0x58, 34]);
        assert_eq!(encoded(|o| map(o, 3)), [0xa3]);
    }

    #[test]
    fn reads_what_it_writes() {
        let mut input = Vec::new();
        map(&mut input, 2);
        unsigned(&mut input, 1);
        unsigned(&mut input, 300);
        unsigned(&mut input, 2);
        bytes(&mut input, b"abc");
        let mut reader = Reader::new(&input, 1);
        let (mut number, mut text) = (0, Vec::new());
        reader
            .map(1, |r, key| {
                match key {
                    1 => number = r.unsigned()?,
                    _ => text = r.bytes()?.to_vec(),
                }
                Ok(())
            })
            .unwrap();
        reader.finish().unwrap();
        assert_eq!((number, &text[..]), (300, &b"abc"[..]));
    }

    #[test]
    fn ambiguous_or_hostile_input_is_refused() {
        let read_map = |input: &[u8]| {
            let mut reader = Reader::new(input, 2);
            reader.map(1, |r, _| r.skip(2))?;
            reader.finish()
        };
        // Indefinite-length map, a tag, a duplicate key, trailing bytes.
        assert_eq!(read_map(&[0xbf, 0xff]), Err(CborError::IndefiniteLength));
        assert_eq!(read_map(&[0xa1, 0x01, 0xc2, 0x40]), Err(CborError::Tagged));
        assert_eq!(
            read_map(&[0xa2, 0x01, 0x00, 0x01, 0x00]),
            Err(CborError::DuplicateKey(1))
        );
        assert_eq!(read_map(&[0xa0, 0x00]), Err(CborError::TrailingBytes(1)));
        // A length far past the input, a map claiming 2^32 pairs.
        assert_eq!(
            read_map(&[0xa1, 0x01, 0x5a, 0xff, 0xff, 0xff, 0xff]),
            Err(CborError::Truncated)
        );
        assert_eq!(
            read_map(&[0xba, 0xff, 0xff, 0xff, 0xff]),
            Err(CborError::Truncated)
        );
        // Nesting past the bound, and input cut short.
        assert_eq!(
            read_map(&[0xa1, 0x01, 0xa1, 0x01, 0xa1, 0x01, 0x00]),
            Err(CborError::TooDeep(2))
        );
        assert_eq!(read_map(&[0xa1, 0x01]), Err(CborError::Truncated));
        assert_eq!(read_map(&[0xa1, 0x01, 0x1c]), Err(CborError::Reserved(28)));
        // Keys must be unsigned integers.
        assert!(matches!(
            read_map(&[0xa1, 0x61, b'k', 0x00]),
            Err(CborError::UnexpectedType { found: 3, .. })
        ));
    }
}

//! GPT-2's byte <-> printable-character map used by byte-level BPE vocabularies.

/// The character GPT-2's `bytes_to_unicode` assigns to each byte.
const fn byte_to_char_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if printable {
            table[b] = b as u32;
        } else {
            table[b] = 256 + n;
            n += 1;
        }
        b += 1;
    }
    table
}

const BYTE_TO_CHAR: [u32; 256] = byte_to_char_table();

/// The printable character byte-level BPE vocabularies use for `b`.
pub(crate) fn gpt2_byte_to_char(b: u8) -> char {
    char::from_u32(BYTE_TO_CHAR[b as usize]).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte a byte-level BPE vocabulary character stands for, or `None` for characters
/// outside the map.
pub(crate) fn gpt2_unicode_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    if c < 256 && BYTE_TO_CHAR[c as usize] == c {
        return Some(c as u8);
    }
    if (256..256 + 68).contains(&c) {
        // The non-printable bytes, in ascending order, are mapped to 256, 257, ...
        return BYTE_TO_CHAR.iter().position(|&m| m == c).map(|b| b as u8);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let mut seen = [false; 256];
        for b in 0..=255u8 {
            let c = gpt2_byte_to_char(b);
            assert_eq!(gpt2_unicode_to_byte(c), Some(b), "byte {b:#04x} via {c:?}");
            assert!(!seen[b as usize]);
            seen[b as usize] = true;
        }
        assert_eq!(gpt2_unicode_to_byte('Ġ'), Some(b' '));
        assert_eq!(gpt2_unicode_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(gpt2_unicode_to_byte('中'), None);
    }
}

//! [`StreamDecoder`]: ids in, complete UTF-8 text out.

use std::sync::Arc;

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

/// Turns a stream of token ids into text without ever splitting a UTF-8 character.
///
/// Byte-level tokens can end in the middle of a multi-byte character (an emoji is often
/// two or three tokens). [`StreamDecoder::push`] returns only the text that is complete so
/// far and keeps the unfinished bytes for the next call; [`StreamDecoder::finish`] returns
/// whatever is left. The concatenation of everything returned equals
/// [`Tokenizer::decode`] of all the ids (invalid byte sequences become U+FFFD the same
/// way in both).
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Arc<Tokenizer>,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    #[must_use]
    pub fn new(tokenizer: Arc<Tokenizer>) -> StreamDecoder {
        StreamDecoder { tokenizer, pending: Vec::new() }
    }

    /// Adds one token; returns the text it completes (possibly empty).
    ///
    /// # Errors
    /// [`TokenizerError::UnknownId`] for an id outside the vocabulary (nothing is consumed).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        let piece = self.tokenizer.token_piece_bytes(id)?;
        self.pending.extend_from_slice(piece);
        Ok(drain_complete(&mut self.pending))
    }

    /// Bytes received but not yet returned (an unfinished UTF-8 character).
    #[must_use]
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    /// Ends the stream: returns the unfinished bytes, if any, as U+FFFD.
    #[must_use]
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

/// Moves every complete character (and every definitely-invalid sequence, as U+FFFD) out
/// of `pending`, leaving only a possibly-unfinished tail. Applies the same rule as
/// `String::from_utf8_lossy`, so that streaming and whole-buffer decoding agree.
fn drain_complete(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(len) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[len..];
                    }
                    None => {
                        // Unfinished character at the end: keep it for the next push.
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let consumed = pending.len() - rest.len();
    pending.drain(..consumed);
    out
}

#[cfg(test)]
mod tests {
    use super::drain_complete;

    #[test]
    fn byte_by_byte_matches_from_utf8_lossy() {
        let cases: &[&[u8]] = &[
            b"\xF0\x9F\x98\x80",
            b"a\xF0\x9Fb",
            b"\xFF\xFEabc",
            b"\xE4\xB8",
            b"\xC3\xA9\xC3",
            b"\xED\xA0\x80x",
            "h\u{e9}llo \u{4e16}\u{754c} \u{1F980}".as_bytes(),
        ];
        for bytes in cases {
            let mut out = String::new();
            let mut pending = Vec::new();
            for &b in *bytes {
                pending.push(b);
                out.push_str(&drain_complete(&mut pending));
            }
            out.push_str(&String::from_utf8_lossy(&pending));
            assert_eq!(out, String::from_utf8_lossy(bytes), "{bytes:?}");
        }
    }
}

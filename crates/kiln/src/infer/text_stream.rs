//! Streaming generated text: each new token's text is printed as soon as it is final. A
//! byte-level BPE token can end part-way through a UTF-8 character; decoding then gives a
//! replacement character that the next token turns into the real one, so the text after the
//! last complete character is held back until it is complete (or the generation ends).

use crate::error::Result;
use crate::tokenize::Tokenizer;

/// Turns generated token ids into text pieces whose concatenation equals the decoding of all
/// of them (what `--json` prints).
pub struct TextStream<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    /// Bytes of the decoded text already handed out.
    shown: usize,
}

impl<'a> TextStream<'a> {
    /// An empty stream.
    pub fn new(tok: &'a Tokenizer) -> Self {
        TextStream {
            tok,
            ids: Vec::new(),
            shown: 0,
        }
    }

    /// Adds a token; returns the text that became final (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        // Decoding everything (not only the new token) lets the decoder join pieces as it
        // does for the whole text; generated continuations are short, so this stays cheap.
        let text = self.tok.decode(&self.ids, true)?;
        let stable = text.trim_end_matches('\u{FFFD}');
        Ok(self.take(stable))
    }

    /// The text still held back (an incomplete character at the end stays a replacement
    /// character, as in the full decoding).
    pub fn finish(&mut self) -> Result<String> {
        let text = self.tok.decode(&self.ids, true)?;
        Ok(self.take(&text))
    }

    fn take(&mut self, text: &str) -> String {
        if text.len() <= self.shown || !text.is_char_boundary(self.shown) {
            return String::new();
        }
        let new = text[self.shown..].to_string();
        self.shown = text.len();
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_to_the_full_decoding_when_tokens_split_characters() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gpt2");
        let tok = Tokenizer::from_dir(&dir).unwrap().unwrap();
        for text in [
            "你好，世界",
            "émoji 😀 ok",
            "日本語のテキスト",
            "plain ascii",
        ] {
            let ids = tok.encode_plain(text).unwrap().ids;
            let mut stream = TextStream::new(&tok);
            let mut pieces = Vec::new();
            for &id in &ids {
                pieces.push(stream.push(id).unwrap());
            }
            pieces.push(stream.finish().unwrap());
            assert_eq!(pieces.concat(), tok.decode(&ids, true).unwrap(), "{text}");
            assert!(
                pieces.iter().all(|p| !p.contains('\u{FFFD}')),
                "{text}: {pieces:?}"
            );
            if !text.is_ascii() {
                assert!(ids.len() > text.chars().count(), "{text}: no split to test");
            }
        }
    }
}

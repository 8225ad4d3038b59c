//! Vocabulary extension: the words of a fine-tuning corpus that the tokenizer can only spell as
//! its unknown token — the Chinese characters an English BERT vocabulary lacks, say — become
//! tokens of their own, as transformers users do with `tokenizer.add_tokens(...)` followed by
//! `model.resize_token_embeddings(len(tokenizer))` (the model side is
//! [`crate::model::resize::grow_vocab`]).

use super::{tok_err, Tokenizer};
use crate::error::Result;
use std::collections::HashMap;
use tokenizers::{AddedToken, NormalizedString, Normalizer};

impl Tokenizer {
    /// The unknown token's id (`[UNK]` or `<unk>`), if the vocabulary has one.
    pub fn unk_id(&self) -> Option<u32> {
        self.first_of(&["[UNK]", "<unk>"])
    }

    /// The words of `texts` that encode to the unknown token, in the normalized form the
    /// tokenizer matches added tokens against, with their counts: most frequent first, ties in
    /// order of first appearance (so the result never depends on hashing).
    pub fn unknown_words<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<(String, usize)>> {
        let Some(unk) = self.unk_id() else {
            return Ok(Vec::new());
        };
        let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
        for text in texts {
            let enc = self
                .inner
                .encode(text, false)
                .map_err(|e| tok_err(&self.source, e))?;
            for (i, &id) in enc.get_ids().iter().enumerate() {
                if id != unk {
                    continue;
                }
                let (s, e) = enc.get_offsets()[i];
                let Some(raw) = text.get(s..e) else { continue };
                let word = self.normalized(raw)?;
                if word.is_empty() {
                    continue;
                }
                let order = seen.len();
                seen.entry(word).or_insert((0, order)).0 += 1;
            }
        }
        let mut words: Vec<(String, (usize, usize))> = seen.into_iter().collect();
        words.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .1.cmp(&b.1 .1)));
        Ok(words.into_iter().map(|(w, (n, _))| (w, n)).collect())
    }

    /// `raw` through the tokenizer's normalizer (lower-casing, accents, the spaces a BERT
    /// normalizer puts around CJK characters), trimmed.
    fn normalized(&self, raw: &str) -> Result<String> {
        let mut ns = NormalizedString::from(raw);
        if let Some(n) = self.inner.get_normalizer() {
            n.normalize(&mut ns).map_err(|e| tok_err(&self.source, e))?;
        }
        Ok(ns.get().trim().to_string())
    }

    /// Adds `words` as new ordinary (not special) tokens, matched on normalized text as
    /// transformers' `add_tokens` does; their ids follow the current vocabulary in order.
    /// Returns how many were new. The tokenizer is marked changed, so a saved model writes
    /// this `tokenizer.json` instead of copying its source's.
    pub fn add_tokens(&mut self, words: &[String]) -> usize {
        let tokens: Vec<AddedToken> = words
            .iter()
            .map(|w| AddedToken::from(w.clone(), false))
            .collect();
        let added = self.inner.add_tokens(&tokens);
        if added > 0 {
            self.changed = true;
        }
        added
    }

    /// Whether tokens were added since loading.
    pub fn changed(&self) -> bool {
        self.changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn tiny() -> Tokenizer {
        let vocab: serde_json::Map<String, serde_json::Value> =
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "我"]
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), i.into()))
                .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
                "vocab": vocab}
        });
        let t = tokenizers::Tokenizer::from_str(&json.to_string()).unwrap();
        Tokenizer::from_parts(t, "tiny".into()).unwrap()
    }

    #[test]
    fn unknown_words_are_found_normalized_counted_and_added() {
        let mut t = tiny();
        let texts = ["The cat 爱你", "我爱 DOG", "Dog"];
        let words = t.unknown_words(texts.iter().copied()).unwrap();
        assert_eq!(
            words,
            vec![
                ("爱".to_string(), 2),
                ("dog".to_string(), 2),
                ("你".to_string(), 1)
            ]
        );
        assert!(!t.changed());
        let list: Vec<String> = words.into_iter().map(|(w, _)| w).collect();
        assert_eq!(t.add_tokens(&list), 3);
        assert!(t.changed());
        assert_eq!(t.vocab_size(), 10);
        let ids = t.encode_plain("我爱你 the DOG").unwrap().ids;
        assert_eq!(ids, vec![6, 7, 9, 4, 8]);
        assert!(t.unknown_words(texts.iter().copied()).unwrap().is_empty());
        // Adding again changes nothing.
        assert_eq!(t.add_tokens(&list), 0);
    }
}

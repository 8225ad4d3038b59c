//! A text corpus spread over files: plain text (one text per line) or JSON Lines (a text field
//! per line), either of them gzip-compressed (`.gz`). Streamed line by line, never loaded whole.

use crate::engine::dropout::mix;
use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The files of a corpus and how to read them.
#[derive(Clone, Debug)]
pub struct Corpus {
    files: Vec<PathBuf>,
    text_field: String,
    holdout: Option<Holdout>,
}

/// Where a text came from (for error messages and data positions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Index into the corpus files.
    pub file: usize,
    /// 1-based line number.
    pub line: usize,
}

impl Corpus {
    /// A corpus over `files`; JSONL files (`.jsonl`, `.json`, optionally `.gz`) take their text
    /// from `text_field`.
    pub fn new(files: Vec<PathBuf>, text_field: &str) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::Input("no corpus files given".into()));
        }
        for f in &files {
            if !f.is_file() {
                return Err(Error::MissingFile {
                    path: f.clone(),
                    hint: "corpus file not found".into(),
                });
            }
        }
        Ok(Corpus {
            files,
            text_field: text_field.to_string(),
            holdout: None,
        })
    }

    /// The files.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn is_jsonl(path: &Path) -> bool {
        let name = path.to_string_lossy();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        name.ends_with(".jsonl") || name.ends_with(".json")
    }

    fn open(path: &Path) -> Result<Box<dyn BufRead + Send>> {
        let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
        let r: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(flate2::read::MultiGzDecoder::new(f))
        } else {
            Box::new(f)
        };
        Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
    }

    /// Every non-empty text in file order, pulled one at a time (streamed).
    pub fn texts(&self) -> Texts<'_> {
        Texts {
            corpus: self,
            file: 0,
            reader: None,
            line: 0,
        }
    }

    /// Calls `f(text, position)` for every non-empty text, in file order; stops at the first
    /// error (from reading, or returned by `f`), which names the file and line.
    pub fn for_each_text(&self, mut f: impl FnMut(&str, Position) -> Result<()>) -> Result<()> {
        let mut texts = self.texts();
        while let Some(t) = texts.next() {
            let t = t?;
            f(&t, texts.location())?;
        }
        Ok(())
    }

    /// Splits off a held-out part: each text (a line) goes to the held-out side with
    /// probability `fraction`, decided by a hash of its file, line and `seed`, so the two sides
    /// are disjoint, cover the corpus, and stay the same on every pass and every resume.
    /// Returns (training part, held-out part).
    pub fn split(&self, fraction: f64, seed: u64) -> Result<(Corpus, Corpus)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::Input(format!(
                "--valid-fraction: {fraction} is not in (0, 1)"
            )));
        }
        let side = |held_out| Corpus {
            holdout: Some(Holdout {
                fraction,
                seed,
                held_out,
            }),
            ..self.clone()
        };
        Ok((side(false), side(true)))
    }
}

/// A deterministic split of a corpus' texts (see [`Corpus::split`]).
#[derive(Clone, Copy, Debug)]
struct Holdout {
    fraction: f64,
    seed: u64,
    held_out: bool,
}

impl Holdout {
    fn keeps(&self, pos: Position) -> bool {
        let h = mix(self.seed ^ mix(((pos.file as u64) << 40) ^ pos.line as u64));
        let u = (h >> 11) as f64 / (1u64 << 53) as f64;
        (u < self.fraction) == self.held_out
    }
}

/// A pull iterator over a corpus' texts (see [`Corpus::texts`]).
pub struct Texts<'a> {
    corpus: &'a Corpus,
    file: usize,
    reader: Option<std::io::Lines<Box<dyn BufRead + Send>>>,
    line: usize,
}

impl Texts<'_> {
    /// Where the text returned last came from.
    pub fn location(&self) -> Position {
        Position {
            file: self.file,
            line: self.line,
        }
    }
}

impl Iterator for Texts<'_> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        loop {
            if self.file >= self.corpus.files.len() {
                return None;
            }
            let path = &self.corpus.files[self.file];
            if self.reader.is_none() {
                match Corpus::open(path) {
                    Ok(r) => self.reader = Some(r.lines()),
                    Err(e) => {
                        self.file = self.corpus.files.len();
                        return Some(Err(e));
                    }
                }
                self.line = 0;
            }
            let next = self.reader.as_mut().and_then(|r| r.next());
            let Some(line) = next else {
                self.reader = None;
                self.file += 1;
                continue;
            };
            self.line += 1;
            let fail = |msg: String| {
                Some(Err(Error::Input(format!(
                    "{} line {}: {msg}",
                    path.display(),
                    self.line
                ))))
            };
            let line = match line {
                Ok(l) => l,
                Err(e) => return fail(format!("cannot read: {e}")),
            };
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty()
                || self
                    .corpus
                    .holdout
                    .is_some_and(|h| !h.keeps(self.location()))
            {
                continue;
            }
            if !Corpus::is_jsonl(path) {
                return Some(Ok(line.to_string()));
            }
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => return fail(format!("invalid JSON: {e}")),
            };
            return match v.get(&self.corpus.text_field).and_then(|t| t.as_str()) {
                Some(t) => Some(Ok(t.to_string())),
                None => fail(format!(
                    "no string field \"{}\" (choose it with --text-field)",
                    self.corpus.text_field
                )),
            };
        }
    }
}

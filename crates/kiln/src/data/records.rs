//! Labelled task data as records (field name → JSON value), one per example, from JSON Lines,
//! CSV or TSV with a header row, or CoNLL column files, each optionally gzip-compressed. Every record remembers its
//! file and line, so a bad value is reported where it is.

use crate::error::{Error, Result};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One example's fields and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The fields (CSV/TSV values are strings).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
}

impl Record {
    /// An input error at this record.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::Input(format!("{} line {}: {msg}", self.path.display(), self.line))
    }

    /// A required string field.
    pub fn text(&self, field: &str) -> Result<&str> {
        match self.fields.get(field) {
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(_) => Err(self.error(format!("field \"{field}\" is not a string"))),
            None => Err(self.error(format!("no field \"{field}\""))),
        }
    }
}

/// The data format, from the file name (`.jsonl`/`.json`, `.csv`, `.tsv`, each optionally
/// `.gz`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON Lines: one object per line.
    Jsonl,
    /// Comma-separated with a header row.
    Csv,
    /// Tab-separated with a header row.
    Tsv,
    /// CoNLL columns: a word per line (word first, tags after, separated by spaces or tabs),
    /// sentences separated by blank lines, `-DOCSTART-` lines skipped. A sentence becomes a
    /// record with `tokens` (first column), `tags` (last column) and `col1`, `col2`, … (every
    /// column after the word).
    Conll,
}

impl Format {
    /// The format of `path`, or an error naming it.
    pub fn of(path: &Path) -> Result<Format> {
        let name = path.to_string_lossy().to_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if name.ends_with(".jsonl") || name.ends_with(".json") {
            Ok(Format::Jsonl)
        } else if name.ends_with(".csv") {
            Ok(Format::Csv)
        } else if name.ends_with(".tsv") {
            Ok(Format::Tsv)
        } else if name.ends_with(".conll") || name.ends_with(".conllu") {
            Ok(Format::Conll)
        } else {
            Err(Error::Input(format!(
                "{}: unknown data format (expected .jsonl, .csv, .tsv or .conll, optionally .gz)",
                path.display()
            )))
        }
    }
}

/// The name `-` reads standard input (as JSON Lines).
pub const STDIN: &str = "-";

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    if path == Path::new(STDIN) {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f = std::fs::File::open(path).map_err(|e| Error::io("open", path, e))?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
}

/// A line (or CoNLL sentence) that could not be read as a record.
#[derive(Clone, Debug, PartialEq)]
pub struct Invalid {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub msg: String,
}

/// The records of a data file and the malformed lines `skip_invalid` passed over.
#[derive(Clone, Debug)]
pub struct DataFile {
    /// The records, in file order.
    pub records: Vec<Record>,
    /// Malformed lines skipped, in file order (always empty without `skip_invalid`).
    pub invalid: Vec<Invalid>,
}

impl DataFile {
    /// How many malformed lines were skipped.
    pub fn skipped(&self) -> usize {
        self.invalid.len()
    }
}

/// Reads every record of `path` (`-`: standard input, JSON Lines). A malformed line is an
/// error naming the file and line, unless `skip_invalid`, which lists it instead. Blank lines
/// are not records.
pub fn read_records(path: &Path, skip_invalid: bool) -> Result<DataFile> {
    let stdin = path == Path::new(STDIN);
    let format = if stdin {
        Format::Jsonl
    } else {
        Format::of(path)?
    };
    let reader = open(path)?;
    let path: &Path = if stdin { Path::new("<stdin>") } else { path };
    let mut out = Vec::new();
    let mut invalid = Vec::new();
    let at =
        |line: usize, msg: String| Error::Input(format!("{} line {line}: {msg}", path.display()));
    match format {
        Format::Jsonl => {
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| at(i + 1, format!("cannot read: {e}")))?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(serde_json::Value::Object(fields)) => out.push(Record {
                        fields,
                        path: path.to_path_buf(),
                        line: i + 1,
                    }),
                    Ok(_) if skip_invalid => invalid.push(Invalid {
                        line: i + 1,
                        msg: "expected a JSON object".into(),
                    }),
                    Ok(_) => return Err(at(i + 1, "expected a JSON object".into())),
                    Err(e) if skip_invalid => invalid.push(Invalid {
                        line: i + 1,
                        msg: format!("invalid JSON: {e}"),
                    }),
                    Err(e) => return Err(at(i + 1, format!("invalid JSON: {e}"))),
                }
            }
        }
        Format::Conll => {
            let mut rows: Vec<Vec<String>> = Vec::new();
            let mut start = 0;
            let mut bad = false;
            let mut flush = |rows: &mut Vec<Vec<String>>, start: usize, bad: &mut bool| {
                if !rows.is_empty() && !*bad {
                    let mut fields = serde_json::Map::new();
                    let col = |i: usize| -> serde_json::Value {
                        rows.iter().map(|r| r[i].clone()).collect::<Vec<_>>().into()
                    };
                    let width = rows[0].len();
                    fields.insert("tokens".into(), col(0));
                    fields.insert("tags".into(), col(width - 1));
                    for i in 1..width {
                        fields.insert(format!("col{i}"), col(i));
                    }
                    out.push(Record {
                        fields,
                        path: path.to_path_buf(),
                        line: start,
                    });
                }
                rows.clear();
                *bad = false;
            };
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| at(i + 1, format!("cannot read: {e}")))?;
                let cols: Vec<String> = line.split_whitespace().map(String::from).collect();
                if cols.is_empty() {
                    flush(&mut rows, start, &mut bad);
                    continue;
                }
                if cols[0] == "-DOCSTART-" {
                    continue;
                }
                if rows.is_empty() {
                    start = i + 1;
                }
                let width = rows.first().map_or(cols.len(), |r| r.len());
                if cols.len() < 2 || cols.len() != width {
                    if skip_invalid {
                        if !bad {
                            invalid.push(Invalid {
                                line: i + 1,
                                msg: format!(
                                    "expected {} columns (word, then tags), found {}",
                                    width.max(2),
                                    cols.len()
                                ),
                            });
                        }
                        bad = true;
                        rows.push(vec![String::new(); width.max(2)]);
                        continue;
                    }
                    return Err(at(
                        i + 1,
                        format!(
                            "expected {} columns (word, then tags), found {}",
                            width.max(2),
                            cols.len()
                        ),
                    ));
                }
                rows.push(cols);
            }
            flush(&mut rows, start, &mut bad);
        }
        Format::Csv | Format::Tsv => {
            let mut r = csv::ReaderBuilder::new()
                .delimiter(if format == Format::Tsv { b'\t' } else { b',' })
                // TSV files of NLP datasets quote nothing; a stray quote is text.
                .quoting(format == Format::Csv)
                .flexible(false)
                .from_reader(reader);
            let header: Vec<String> = r
                .headers()
                .map_err(|e| at(1, format!("cannot read the header row: {e}")))?
                .iter()
                .map(|h| h.trim().to_string())
                .collect();
            for row in r.records() {
                let row = match row {
                    Ok(row) => row,
                    Err(e) if skip_invalid => {
                        invalid.push(Invalid {
                            line: e.position().map_or(0, |p| p.line() as usize),
                            msg: format!("malformed row: {e}"),
                        });
                        continue;
                    }
                    Err(e) => {
                        let line = e.position().map_or(0, |p| p.line() as usize);
                        return Err(at(line, format!("malformed row: {e}")));
                    }
                };
                let line = row.position().map_or(0, |p| p.line() as usize);
                let fields = header
                    .iter()
                    .zip(row.iter())
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string())))
                    .collect();
                out.push(Record {
                    fields,
                    path: path.to_path_buf(),
                    line,
                });
            }
        }
    }
    Ok(DataFile {
        records: out,
        invalid,
    })
}

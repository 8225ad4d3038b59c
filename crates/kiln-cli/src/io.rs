//! Input lines and output sinks shared by the commands.

use anyhow::{Context, Result};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Reads items, one per line, from a file or standard input (trailing `\r` removed).
pub fn read_lines(input: Option<&Path>) -> Result<Vec<String>> {
    let reader: Box<dyn BufRead> = match input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p)
                .with_context(|| format!("cannot open --input {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| {
            format!(
                "{} line {}: not valid UTF-8 text",
                input.map_or("<stdin>".into(), |p| p.display().to_string()),
                i + 1
            )
        })?;
        out.push(line.trim_end_matches('\r').to_string());
    }
    Ok(out)
}

/// Where results go: standard output, or a file that appears only when complete (written to a
/// temporary file and renamed).
pub struct Output {
    writer: BufWriter<Box<dyn Write>>,
    target: Option<(PathBuf, PathBuf)>,
}

impl Output {
    /// Opens `path` (or standard output when `None`).
    pub fn open(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Output {
                writer: BufWriter::new(Box::new(std::io::stdout().lock())),
                target: None,
            }),
            Some(p) => {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("out");
                let tmp = p.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
                let f = std::fs::File::create(&tmp)
                    .with_context(|| format!("cannot create --output {}", p.display()))?;
                Ok(Output {
                    writer: BufWriter::new(Box::new(f)),
                    target: Some((tmp, p.to_path_buf())),
                })
            }
        }
    }

    /// Writes one line.
    pub fn line(&mut self, s: &str) -> Result<()> {
        self.writer.write_all(s.as_bytes())?;
        self.writer.write_all(b"\n")?;
        Ok(())
    }

    /// Writes raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> Result<()> {
        self.writer.write_all(b)?;
        Ok(())
    }

    /// Flushes (stdout) — lets streamed output appear as it is produced.
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush()?;
        Ok(())
    }

    /// Flushes and moves the file into place.
    pub fn finish(mut self) -> Result<()> {
        self.writer.flush()?;
        if let Some((tmp, dst)) = self.target.take() {
            drop(self.writer);
            std::fs::rename(&tmp, &dst)
                .with_context(|| format!("cannot move output into {}", dst.display()))?;
        }
        Ok(())
    }
}

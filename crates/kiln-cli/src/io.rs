//! Input lines and output sinks shared by the commands.

use anyhow::{Context, Result};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Items read one per line from a file or standard input, in blocks, so large inputs are
/// streamed rather than loaded whole.
pub struct LineBlocks {
    reader: Box<dyn BufRead>,
    name: String,
    line_no: usize,
}

impl LineBlocks {
    /// Opens `input` (standard input when `None`).
    pub fn open(input: Option<&Path>) -> Result<Self> {
        let reader: Box<dyn BufRead> = match input {
            Some(p) => Box::new(std::io::BufReader::new(
                std::fs::File::open(p)
                    .with_context(|| format!("cannot open --input {}", p.display()))?,
            )),
            None => Box::new(std::io::stdin().lock()),
        };
        Ok(LineBlocks {
            reader,
            name: input.map_or("<stdin>".into(), |p| p.display().to_string()),
            line_no: 0,
        })
    }

    /// The input's name (`<stdin>` for standard input).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lines read so far (the 1-based number of the last line returned).
    pub fn line_no(&self) -> usize {
        self.line_no
    }

    /// Up to `n` more lines (line ending removed); empty at the end of the input.
    pub fn next_block(&mut self, n: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut buf = Vec::new();
            let read = self
                .reader
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("cannot read {}", self.name))?;
            if read == 0 {
                break;
            }
            self.line_no += 1;
            let line = String::from_utf8(buf).map_err(|_| {
                anyhow::anyhow!("{} line {}: not valid UTF-8 text", self.name, self.line_no)
            })?;
            out.push(
                line.trim_end_matches('\n')
                    .trim_end_matches('\r')
                    .to_string(),
            );
        }
        Ok(out)
    }
}

/// Lines in a file, for a progress bar's length (`None` for standard input, or when the file
/// cannot be read: the reading itself will then say why).
pub fn count_lines(input: Option<&Path>) -> Option<u64> {
    let f = std::fs::File::open(input?).ok()?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf().ok()?;
        if buf.is_empty() {
            return Some(n);
        }
        n += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        let len = buf.len();
        r.consume(len);
    }
}

/// Reads every item, one per line, from a file or standard input.
pub fn read_lines(input: Option<&Path>) -> Result<Vec<String>> {
    let mut r = LineBlocks::open(input)?;
    let mut all = Vec::new();
    loop {
        let block = r.next_block(4096)?;
        if block.is_empty() {
            return Ok(all);
        }
        all.extend(block);
    }
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
            std::fs::rename(&tmp, &dst)
                .with_context(|| format!("cannot move output into {}", dst.display()))?;
        }
        Ok(())
    }
}

impl Drop for Output {
    /// An output that was not finished (an error part way) leaves no partial file behind.
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.target.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// An error naming the input line whose output is not finite: weights that are finite (they
/// are checked at load) can still overflow on some input, and NaN must not pass as a result.
pub fn check_finite(values: &[f32], input: &str, line: usize) -> Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    anyhow::bail!(
        "{input} line {line}: the model's output is not finite (NaN or infinity); its weights overflow on this input"
    )
}

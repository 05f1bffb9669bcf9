//! A task's output on disk, bounded: the shim copies the task's stdout and stderr (one pipe)
//! into `output.log`; when that file would pass half the cap it becomes `output.log.1` (the
//! previous one is dropped) and a new `output.log` starts. So a task keeps at most
//! [`LOG_MAX_BYTES`] of output, the most recent, however much it prints; [`read`] gives it
//! back in order (`netctl service logs` shows its tail, as `docker service logs` does with
//! docker's rotating json-file driver).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::shim::OUTPUT;

/// A task's output kept on disk at most (both files together).
pub const LOG_MAX_BYTES: u64 = 16 << 20;

/// The rotated file: the output before `output.log`.
pub fn rotated(dir: &Path) -> PathBuf {
    dir.join(format!("{OUTPUT}.1"))
}

/// The task's kept output, oldest first (the rotated file, then the current one).
pub fn read(dir: &Path) -> Vec<u8> {
    let mut out = fs::read(rotated(dir)).unwrap_or_default();
    out.extend(fs::read(dir.join(OUTPUT)).unwrap_or_default());
    out
}

/// Appends to `output.log`, rotating it at half of `max` bytes.
pub struct Writer {
    dir: PathBuf,
    file: File,
    len: u64,
    /// Bytes per file: half the cap.
    per_file: u64,
}

impl Writer {
    /// Opens (appends to) the task's `output.log` in `dir`; `max` caps both files together.
    pub fn open(dir: &Path, max: u64) -> io::Result<Writer> {
        let file = open(dir)?;
        let len = file.metadata()?.len();
        Ok(Writer {
            dir: dir.to_path_buf(),
            file,
            len,
            per_file: (max / 2).max(1),
        })
    }

    /// Writes `buf`, rotating first if the current file would pass its half of the cap. A
    /// chunk bigger than a whole file keeps only its end.
    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        if buf.len() as u64 > self.per_file {
            buf = &buf[buf.len() - self.per_file as usize..];
        }
        if self.len + buf.len() as u64 > self.per_file {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(self.dir.join(OUTPUT), rotated(&self.dir))?;
        self.file = open(&self.dir)?;
        self.len = 0;
        Ok(())
    }
}

fn open(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(OUTPUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(dir: &Path) -> u64 {
        [dir.join(OUTPUT), rotated(dir)]
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    #[test]
    fn much_output_stays_under_the_cap_and_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 << 10;
        let mut w = Writer::open(dir.path(), max).unwrap();
        for i in 0..100_000u32 {
            w.write(format!("line {i}\n").as_bytes()).unwrap();
            assert!(kept(dir.path()) <= max);
        }
        let text = String::from_utf8(read(dir.path())).unwrap();
        assert!(text.ends_with("line 99999\n"), "the end is kept");
        assert!(
            text.len() as u64 > max / 2,
            "at least one full file is kept"
        );
        // In order, no gap: consecutive numbers from the first whole line on.
        let nums: Vec<u32> = text
            .lines()
            .skip(1)
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1));
        // Reopened (a restarted shim), it appends and keeps the bound.
        let mut w = Writer::open(dir.path(), max).unwrap();
        w.write(&vec![b'x'; (max * 3) as usize]).unwrap();
        assert!(kept(dir.path()) <= max);
        assert!(read(dir.path()).ends_with(b"xxx"));
    }

    #[test]
    fn nothing_written_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).is_empty());
    }
}

//! `netctl service logs`: docker's multiplexed log stream (an 8-byte header — stream, 0, 0, 0,
//! big-endian length — before each frame) printed as it came: stdout frames on stdout, stderr
//! frames on stderr.

use std::io::Write;

use anyhow::{Result, bail};

/// Splits the stream into (stream, payload) frames.
fn frames(mut data: &[u8]) -> Result<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 8 {
            bail!("the daemon's log stream ends inside a frame header");
        }
        let len = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
        let Some(payload) = data.get(8..8 + len) else {
            bail!("the daemon's log stream ends inside a frame");
        };
        out.push((data[0], payload));
        data = &data[8 + len..];
    }
    Ok(out)
}

pub fn print(data: &[u8]) -> Result<()> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    for (stream, payload) in frames(data)? {
        if stream == 2 {
            err.write_all(payload)?;
        } else {
            out.write_all(payload)?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_truncation_is_an_error() {
        let mut s = vec![1, 0, 0, 0, 0, 0, 0, 3];
        s.extend_from_slice(b"ab\n");
        s.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 2]);
        s.extend_from_slice(b"e\n");
        let f = frames(&s).unwrap();
        assert_eq!(f, vec![(1, &b"ab\n"[..]), (2, &b"e\n"[..])]);
        assert!(frames(&s[..s.len() - 1]).is_err());
        assert!(frames(&s[..4]).is_err());
        assert!(frames(&[]).unwrap().is_empty());
    }
}

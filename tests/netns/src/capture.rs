//! A tcpdump on the lab's underlay writing a pcap file: the packets the nodes put on the wire,
//! read back raw ([`Capture::stop`]) or as tcpdump's lines for some filters
//! ([`Capture::stop_matching`]).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::Lab;

pub struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    /// Captures `filter` on the underlay's interface `iface` (`p<i>` is node i's link, `any`
    /// every link) into `<lab dir>/<name>.pcap`; returns once tcpdump listens.
    pub fn start(lab: &Lab, iface: &str, name: &str, filter: &str) -> Capture {
        let file = lab.dir().join(format!("{name}.pcap"));
        let child = lab
            .underlay()
            .command("tcpdump")
            // Immediate mode: without it libpcap hands packets over in blocks (1 s timeout), and
            // a block not yet handed over when the capture stops is lost. -U writes each packet
            // to the file as it is captured.
            .args([
                "-Z",
                "root",
                "--immediate-mode",
                "-i",
                iface,
                "-n",
                "-U",
                "-s",
                "256",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpdump");
        // tcpdump creates its file once it listens.
        let t = Instant::now();
        while !file.exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        Capture { child, file }
    }

    /// Stops the capture; the captured frames (the interface must be Ethernet, not `any`).
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        let stderr = self.finish();
        let data = std::fs::read(&self.file)
            .unwrap_or_else(|e| panic!("{}: {e}; tcpdump said: {stderr}", self.file.display()));
        let pkts = pcap_packets(&data);
        if pkts.is_empty() {
            eprintln!("tcpdump captured nothing: {stderr}");
        }
        pkts
    }

    /// Stops the capture; for each of `filters`, the packets it matches as tcpdump prints them.
    pub fn stop_matching(mut self, filters: &[&str]) -> Vec<Vec<String>> {
        self.finish();
        filters
            .iter()
            .map(|f| {
                let out = std::process::Command::new("tcpdump")
                    .args(["-n", "-r"])
                    .arg(&self.file)
                    .arg(f)
                    .output()
                    .expect("tcpdump -r");
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .collect()
    }

    /// Ends tcpdump once the file has stopped growing (at most 10 s: under TCG tcpdump can lag
    /// the traffic); what it printed.
    fn finish(&mut self) -> String {
        let size = || std::fs::metadata(&self.file).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        let mut last = size();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = size();
            if now == last || t.elapsed() > Duration::from_secs(10) {
                break;
            }
            last = now;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        stderr
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The packets of a classic pcap file (either byte order, Ethernet link type).
pub fn pcap_packets(data: &[u8]) -> Vec<Vec<u8>> {
    assert!(data.len() >= 24, "pcap file too short");
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        m => panic!("not a pcap file (magic {m:#x})"),
    };
    let u32_at = |off: usize| {
        let b: [u8; 4] = data[off..off + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "link type must be Ethernet");
    let mut off = 24;
    let mut out = Vec::new();
    while off + 16 <= data.len() {
        let incl = u32_at(off + 8) as usize;
        let start = off + 16;
        if start + incl > data.len() {
            break;
        }
        out.push(data[start..start + incl].to_vec());
        off = start + incl;
    }
    out
}

//! What the bench reads about processes and the machine, all from `/proc` (and two
//! standard tools), so the crate needs no `libc`: memory (VmRSS/VmHWM), CPU time,
//! context switches over all threads, the open-file limit, binary sizes.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// The machine a run was taken on; every report names it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub mem_total_mib: u64,
    /// 1/5/15-minute load averages when the run started and when it ended: other work on
    /// the machine shows up here, and it makes every figure noisier.
    pub loadavg_start: String,
    pub loadavg_end: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        // x86 says "model name"; many arm64 kernels only say "Model" or nothing useful.
        let cpu = ["model name", "Model", "Hardware", "CPU part"]
            .iter()
            .find_map(|key| {
                cpuinfo.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == *key).then(|| v.trim().to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let mem_total_mib = field_kib(&read("/proc/meminfo"), "MemTotal:") / 1024;
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            mem_total_mib,
            loadavg_start: loadavg(),
            loadavg_end: String::new(),
        }
    }
}

pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The number after `name` in a `/proc/*/status`-style text (kB for memory fields).
fn field_kib(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Memory of a process, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    pub vm_rss_kib: u64,
    pub vm_hwm_kib: u64,
    /// VmRSS split: heap, stacks and other private memory...
    pub rss_anon_kib: u64,
    /// ...and pages of the binary and shared libraries (shared with other processes
    /// mapping the same files, and dropped first under memory pressure).
    pub rss_file_kib: u64,
    /// Shared memory; a binary run from tmpfs is counted here instead of as file.
    pub rss_shmem_kib: u64,
    pub threads: u64,
}

pub fn memory(pid: u32) -> Memory {
    let status = read(format!("/proc/{pid}/status"));
    Memory {
        vm_rss_kib: field_kib(&status, "VmRSS:"),
        vm_hwm_kib: field_kib(&status, "VmHWM:"),
        rss_anon_kib: field_kib(&status, "RssAnon:"),
        rss_file_kib: field_kib(&status, "RssFile:"),
        rss_shmem_kib: field_kib(&status, "RssShmem:"),
        threads: field_kib(&status, "Threads:"),
    }
}

/// utime + stime of the whole process (threads that already exited included), in clock
/// ticks, from `/proc/PID/stat`.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = read(format!("/proc/{pid}/stat"));
    // The command name (field 2) may hold spaces; fields resume after its closing ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0], so utime (14) and stime (15) are fields[11] and [12].
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux build we know of).
pub fn clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Voluntary + involuntary context switches summed over the live threads: every wakeup
/// of a sleeping thread ends in a voluntary switch, so their growth counts wakeups.
/// Threads that exit between two readings take their counts with them.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| {
            let status = read(t.path().join("status"));
            field_kib(&status, "voluntary_ctxt_switches:")
                + field_kib(&status, "nonvoluntary_ctxt_switches:")
        })
        .sum()
}

/// Raises this process's soft RLIMIT_NOFILE to `want` (capped at the hard limit) with
/// util-linux `prlimit` on our own pid, since std offers no setrlimit and the crate has
/// no libc. Children inherit it. Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let (soft, hard) = nofile();
    if soft >= want {
        return soft;
    }
    let target = want.min(hard);
    let _ = Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={target}:{hard}"))
        .status();
    nofile().0
}

/// (soft, hard) "Max open files" from `/proc/self/limits`.
fn nofile() -> (u64, u64) {
    let limits = read("/proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| {
            if w == "unlimited" {
                Some(u64::MAX)
            } else {
                w.parse().ok()
            }
        })
        .collect();
    (
        nums.first().copied().unwrap_or(1024),
        nums.get(1).copied().unwrap_or(1024),
    )
}

/// Size of a binary as built and stripped.
#[derive(Debug, Clone, Serialize)]
pub struct BinarySize {
    pub path: String,
    pub arch: String,
    pub bytes: u64,
    /// `None` when no `strip` for that architecture is installed.
    pub stripped_bytes: Option<u64>,
}

pub fn binary_size(path: &Path, scratch: &Path) -> BinarySize {
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let head = std::fs::read(path)
        .ok()
        .map(|b| b[..b.len().min(20)].to_vec())
        .unwrap_or_default();
    // ELF e_machine, little-endian, at offset 18.
    let (arch, strips): (&str, &[&str]) = match head.get(18..20) {
        Some([0x3e, 0]) => ("x86_64", &["strip", "x86_64-linux-gnu-strip"]),
        Some([0xb7, 0]) => ("aarch64", &["aarch64-linux-gnu-strip"]),
        Some([0x28, 0]) => ("arm", &["arm-linux-gnueabihf-strip"]),
        _ => ("unknown", &["strip"]),
    };
    let out = scratch.join(format!("stripped-{arch}"));
    let stripped_bytes = strips.iter().find_map(|tool| {
        let ok = Command::new(tool)
            .arg("-o")
            .arg(&out)
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let size = ok.then(|| std::fs::metadata(&out).map_or(0, |m| m.len()));
        let _ = std::fs::remove_file(&out);
        size
    });
    BinarySize {
        path: path.display().to_string(),
        arch: arch.to_owned(),
        bytes,
        stripped_bytes,
    }
}

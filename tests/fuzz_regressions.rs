//! The fuzz targets' inputs on the stable toolchain, so that a machine without nightly (CI)
//! still exercises the decoders (docs/fuzzing.md):
//! - every seed in `fuzz/seeds/<target>/` and every saved crash or hang in
//!   `fuzz/regressions/<target>/` goes through its `tether::fuzzing` entry point;
//! - then a few thousand inputs per target made from the seeds by a pseudo-random mutator
//!   with a fixed seed (bit flips, interesting bytes and numbers, truncations, deletions,
//!   duplications, splices, dictionary tokens): the same inputs on every run.
//!
//! An input that panics is written under the target directory's `tmp/fuzz-failures/` and
//! the test fails naming it; keep a new one by copying it to `fuzz/regressions/<target>/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

/// Mutated inputs per target.
const MUTATIONS: usize = 3000;

/// Largest mutated input.
const MAX_INPUT: usize = 16 * 1024;

type Entry = fn(&[u8]);

fn entry(target: &str) -> Entry {
    match target {
        "cloud_response" => tether::fuzzing::cloud_response,
        "cloud_protobuf" => tether::fuzzing::cloud_protobuf,
        "mqtt_stream" => tether::fuzzing::mqtt_stream,
        "appliance_message" => tether::fuzzing::appliance_message,
        "config" => tether::fuzzing::config,
        other => panic!("no fuzz target {other}"),
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files in `dir` (none if it does not exist), by name; dot files are skipped.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            if name.starts_with('.') {
                return None;
            }
            let data = std::fs::read(e.path()).ok()?;
            Some((name, data))
        })
        .collect();
    out.sort();
    out
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let seeds = files(&fuzz_dir().join("seeds").join(target));
    assert!(
        !seeds.is_empty(),
        "no seeds in fuzz/seeds/{target}/: the mutation run would test nothing"
    );
    seeds
}

/// Runs one input; if it panics, saves it and says where.
fn run(target: &str, label: &str, input: &[u8]) -> Result<(), String> {
    let f = entry(target);
    if std::panic::catch_unwind(AssertUnwindSafe(|| f(input))).is_ok() {
        return Ok(());
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-failures")
        .join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(label.replace(['/', ' '], "-"));
    let saved = match std::fs::write(&path, input) {
        Ok(()) => format!("saved as {}", path.display()),
        Err(e) => format!("not saved ({e}): {:?}", String::from_utf8_lossy(input)),
    };
    Err(format!(
        "{target}: {label} ({} bytes), {saved}",
        input.len()
    ))
}

/// Fails the test listing every input that panicked (their messages are above).
fn verdict(failures: &[String], advice: &str) {
    if !failures.is_empty() {
        panic!(
            "{} input(s) panicked (messages above):\n  {}\n{advice}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}

fn seeds_and_regressions(target: &str) {
    let mut failures = Vec::new();
    for (name, data) in seeds(target) {
        failures.extend(run(target, &format!("seed {name}"), &data).err());
    }
    for (name, data) in files(&fuzz_dir().join("regressions").join(target)) {
        failures.extend(run(target, &format!("regression {name}"), &data).err());
    }
    verdict(
        &failures,
        "A regression that panics is a bug found earlier and not fixed yet (docs/fuzzing.md).",
    );
}

#[test]
fn cloud_response_seeds_and_regressions() {
    seeds_and_regressions("cloud_response");
}

#[test]
fn cloud_protobuf_seeds_and_regressions() {
    seeds_and_regressions("cloud_protobuf");
}

#[test]
fn mqtt_stream_seeds_and_regressions() {
    seeds_and_regressions("mqtt_stream");
}

#[test]
fn appliance_message_seeds_and_regressions() {
    seeds_and_regressions("appliance_message");
}

#[test]
fn config_seeds_and_regressions() {
    seeds_and_regressions("config");
}

/// Tokens that matter to the decoders (JSON, the protocol's fields, TOML, MQTT topics).
const TOKENS: &[&[u8]] = &[
    b"\"id\":",
    b"\"target\":",
    b"\"payload\":",
    b"\"ttl_ms\":",
    b"\"timeout_ms\":",
    b"\"idempotent\":true",
    b"\"commands\":[",
    b"\"acked\":[",
    b"\"poll\":{\"wait_s\":",
    b"\"interval_s\":",
    b"\"ok\":false",
    b"\"error\":",
    b"\"group:lights\"",
    b"\"group:all\"",
    b"\"lamp-1\"",
    b"\"thermo-1\"",
    b"null",
    b"[]",
    b"{}",
    b"[[[[[[[[[[[[[[[[",
    b"\"\\u0000\"",
    b"\"\\ud800\"",
    b"tether/lamp-1/result",
    b"tether/lamp-1/events",
    b"[[appliance]]\n",
    b"[groups]\n",
    b"= \"0s\"\n",
    b"= \"1000000000y\"\n",
    b"startup_grace",
    b"max_timeout",
    b"idle_timeout",
    b"stop_grace",
];

/// Numbers that find overflows and limits.
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"-1",
    b"1",
    b"128",
    b"65535",
    b"4294967296",
    b"18446744073709551615",
    b"18446744073709551616",
    b"9223372036854775807",
    b"1e400",
    b"-0.0",
];

const BYTES: &[u8] = &[
    0, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'\n', b'=', b'/',
];

fn mutate(rng: &mut fastrand::Rng, seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut data = seeds[rng.usize(..seeds.len())].1.clone();
    for _ in 0..rng.usize(1..=4) {
        let len = data.len();
        match rng.u8(..10) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                data[i] ^= 1 << rng.u8(..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                data[i] = BYTES[rng.usize(..BYTES.len())];
            }
            2 if len > 0 => data.truncate(rng.usize(..len)),
            3 if len > 0 => {
                let a = rng.usize(..len);
                let b = rng.usize(a..=len.min(a + 64));
                data.drain(a..b);
            }
            4 if len > 0 => {
                let a = rng.usize(..len);
                let b = rng.usize(a..=len.min(a + 64));
                let chunk = data[a..b].to_vec();
                let at = rng.usize(..=len);
                data.splice(at..at, chunk);
            }
            5 => {
                let other = &seeds[rng.usize(..seeds.len())].1;
                let cut = rng.usize(..=len);
                let from = rng.usize(..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            6 => {
                let at = rng.usize(..=len);
                let token = TOKENS[rng.usize(..TOKENS.len())];
                data.splice(at..at, token.iter().copied());
            }
            7 => {
                // A run of digits becomes an interesting number (or one is inserted).
                let number = NUMBERS[rng.usize(..NUMBERS.len())];
                match (0..len).find(|&i| data[i].is_ascii_digit() && rng.u8(..4) == 0) {
                    Some(start) => {
                        let end = (start..len)
                            .find(|&i| !data[i].is_ascii_digit())
                            .unwrap_or(len);
                        data.splice(start..end, number.iter().copied());
                    }
                    None => {
                        let at = rng.usize(..=len);
                        data.splice(at..at, number.iter().copied());
                    }
                }
            }
            8 => {
                let at = rng.usize(..=len);
                let n = rng.usize(1..=8);
                let random: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                data.splice(at..at, random);
            }
            _ => {
                // Repeat a short chunk many times (deep nesting, long runs).
                if len > 0 {
                    let a = rng.usize(..len);
                    let b = rng.usize(a..=len.min(a + 4));
                    let chunk = data[a..b].to_vec();
                    let times = rng.usize(2..=200);
                    data.splice(a..a, chunk.repeat(times));
                }
            }
        }
    }
    data.truncate(MAX_INPUT);
    data
}

fn mutations(target: &str, seed: u64) {
    let seeds = seeds(target);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut failures = Vec::new();
    for n in 0..MUTATIONS {
        let input = mutate(&mut rng, &seeds);
        failures.extend(run(target, &format!("mutation-{seed:x}-{n}"), &input).err());
        if failures.len() >= 5 {
            break;
        }
    }
    verdict(
        &failures,
        &format!(
            "A new bug: minimise the input (cargo fuzz tmin {target} FILE, or by hand), keep it in \
             fuzz/regressions/{target}/ under a name that says what it does, and fix the bug."
        ),
    );
}

#[test]
fn cloud_response_mutations() {
    mutations("cloud_response", 0x7e7e_0001);
}

#[test]
fn cloud_protobuf_mutations() {
    mutations("cloud_protobuf", 0x7e7e_0005);
}

#[test]
fn mqtt_stream_mutations() {
    mutations("mqtt_stream", 0x7e7e_0002);
}

#[test]
fn appliance_message_mutations() {
    mutations("appliance_message", 0x7e7e_0003);
}

#[test]
fn config_mutations() {
    mutations("config", 0x7e7e_0004);
}

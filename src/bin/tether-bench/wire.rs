//! What the cloud link costs in bytes, JSON against Protocol Buffers (`cloud.encoding`),
//! and what an idle link costs per hour at the cadences a metered cloud would choose.
//!
//! Per encoding, one tetherd with one appliance against devclouds of its own:
//! - with `--wait-s 1`: the bytes of an idle poll cycle (request and response), from the
//!   devcloud's counters over a window of cycles;
//! - with `--wait-s 3600 --ping-s 10`: the bytes one command's round trip adds to a held
//!   link (the held poll's answer, the next poll, the early flush of the result), its
//!   latency, and, over a quiet window, the bytes of one HTTP/2 PING and its ACK.
//!
//! Bytes are counted below TLS (records, HTTP/2 frames, PINGs); TCP/IP is estimated as one
//! 52-byte header (IPv4 + TCP with timestamps) per TLS record and one more for its ACK, an
//! upper bound for sparse traffic where every record is a segment acked on its own. An idle
//! hour is modelled from the measured parts: one poll cycle plus 3600 / ping_s PINGs.
//! The body of a poll carrying 10 results and 10 events is encoded here, from the results
//! the round trips stored, in both encodings.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tether::cloud::proto::Encoding;
use tether::cloud::wire::{CommandResult, Event, PollRequest};

use crate::Ctx;
use crate::admin::{Admin, Stats};
use crate::appliance::Fleet;
use crate::latency;
use crate::procs::{DevCloud, Setup, Tetherd};
use crate::report::{Dist, Wire, WireRow};

/// IPv4 (20) + TCP (20) + timestamps option (12).
pub const TCP_IP_HEADER: f64 = 52.0;

pub async fn run(
    ctx: &Ctx<'_>,
    encodings: &[String],
    sync: &str,
    smoke: bool,
) -> Result<Wire, String> {
    let mut rows = Vec::new();
    let mut stored = Vec::new();
    for name in encodings {
        let encoding = match name.as_str() {
            "json" => Encoding::Json,
            "protobuf" => Encoding::Protobuf,
            other => return Err(format!("--encodings: no encoding {other}")),
        };
        let (row, results) = one(ctx, encoding, sync, smoke).await?;
        rows.push(row);
        stored = results;
    }
    let poll = ten_results_and_events(&stored);
    let codec_us = [Encoding::Json, Encoding::Protobuf]
        .map(|e| codec_cost(e, &stored, if smoke { 200 } else { 20_000 }));
    Ok(Wire {
        rows,
        codec_us_per_round_trip_json: codec_us[0],
        codec_us_per_round_trip_protobuf: codec_us[1],
        poll_10_results_10_events_json: Encoding::Json.encode(&poll).len(),
        poll_10_results_10_events_protobuf: Encoding::Protobuf.encode(&poll).len(),
        tcp_ip_header: TCP_IP_HEADER,
    })
}

async fn one(
    ctx: &Ctx<'_>,
    encoding: Encoding,
    sync: &str,
    smoke: bool,
) -> Result<(WireRow, Vec<CommandResult>), String> {
    let name = encoding.as_str();
    eprintln!("wire: {name}");
    let gw = format!("gw-wire-{name}");
    let setup = Setup {
        gateway: &gw,
        appliances: 1,
        linger: "0s",
        sync,
        encoding: name,
    };

    // Idle poll cycles, one a second.
    let dir = ctx.dir.join(format!("wire-{name}-cycle"));
    let (cycle_bytes, cycle_records) = {
        let (cloud, admin) = devcloud(ctx, &dir, &["--wait-s", "1", "--max-wait-s", "1"]).await?;
        let sub = Ctx {
            cloud: &cloud,
            admin: &admin,
            ..*ctx
        };
        let out = idle_cycles(&sub, &setup, if smoke { 3 } else { 10 }).await;
        cloud.stop().await;
        out?
    };

    // A held link: round trips, then PINGs.
    let dir = ctx.dir.join(format!("wire-{name}-held"));
    let (cloud, admin) = devcloud(
        ctx,
        &dir,
        &["--wait-s", "3600", "--max-wait-s", "3600", "--ping-s", "10"],
    )
    .await?;
    let sub = Ctx {
        cloud: &cloud,
        admin: &admin,
        ..*ctx
    };
    let out = held(&sub, &setup, smoke).await;
    cloud.stop().await;
    let ([rtt, down, up], rt_bytes, rt_records, ping, results) = out?;

    let hour = |ping_s: f64| {
        ping.map(|(bytes, records)| {
            let pings = 3600.0 / ping_s;
            let tls = cycle_bytes + pings * bytes;
            let tcp = tls + 2.0 * TCP_IP_HEADER * (cycle_records + pings * records);
            (tls, tcp)
        })
    };
    Ok((
        WireRow {
            encoding: name.to_owned(),
            idle_cycle_bytes: cycle_bytes,
            idle_cycle_with_tcp_ip: cycle_bytes + 2.0 * TCP_IP_HEADER * cycle_records,
            round_trip_bytes: rt_bytes,
            round_trip_with_tcp_ip: rt_bytes + 2.0 * TCP_IP_HEADER * rt_records,
            ping_bytes: ping.map(|p| p.0),
            rtt,
            down,
            up,
            idle_hour_wait3600_ping20: hour(20.0).map(|h| h.0),
            idle_hour_wait3600_ping20_with_tcp_ip: hour(20.0).map(|h| h.1),
            idle_hour_wait3600_ping300: hour(300.0).map(|h| h.0),
            idle_hour_wait3600_ping300_with_tcp_ip: hour(300.0).map(|h| h.1),
        },
        results,
    ))
}

async fn devcloud(ctx: &Ctx<'_>, dir: &Path, args: &[&str]) -> Result<(DevCloud, Admin), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cloud = DevCloud::start_with(ctx.devcloud, dir, args).await?;
    let admin = Admin::new(cloud.admin)?;
    Ok((cloud, admin))
}

/// Bytes and TLS records per idle poll cycle, over `cycles` of them.
async fn idle_cycles(ctx: &Ctx<'_>, setup: &Setup<'_>, cycles: u64) -> Result<(f64, f64), String> {
    let tetherd = Tetherd::start(ctx, setup).await?;
    let out = async {
        // The first polls prove the connection; count from a cycle boundary on.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = ctx.admin.stats().await?;
        let d = wait_polls(ctx.admin, &before, cycles).await?;
        let polls = d.polls as f64;
        Ok::<_, String>((
            (d.bytes_in + d.bytes_out) as f64 / polls,
            (d.records_in + d.records_out) as f64 / polls,
        ))
    }
    .await;
    tetherd.stop().await;
    out
}

/// The counters since `before`, once `polls` more polls have come in.
async fn wait_polls(admin: &Admin, before: &Stats, polls: u64) -> Result<Stats, String> {
    for _ in 0..(polls * 40 + 200) {
        let d = admin.stats().await?.since(before);
        if d.polls >= polls {
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("fewer than {polls} polls came in"))
}

type Held = ([Dist; 3], f64, f64, Option<(f64, f64)>, Vec<CommandResult>);

/// Round trips on a held link, then (unless `smoke`) a quiet window of PINGs.
async fn held(ctx: &Ctx<'_>, setup: &Setup<'_>, smoke: bool) -> Result<Held, String> {
    let tetherd = Tetherd::start(ctx, setup).await?;
    let mut fleet = Fleet::new();
    let out = async {
        fleet.grow(tetherd.mqtt, 1, Duration::from_secs(60)).await?;
        // The cloud's ping_s makes the gateway open its connection again, once; wait for
        // that poll to be held before measuring.
        for _ in 0..200 {
            let s = ctx.admin.stats().await?;
            if s.tls_handshakes >= 2 && s.polls >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = if smoke { 5 } else { 100 };
        let s = latency::sequential(
            ctx.admin,
            setup.gateway,
            Some(&mut fleet),
            Some(tetherd.pid),
            n,
            if smoke { 1 } else { 5 },
            0,
        )
        .await?;
        let c = s.counters;
        let per = |x: u64| x as f64 / n as f64;
        let rt_bytes = per(c.bytes_in + c.bytes_out);
        let rt_records = per(c.records_in + c.records_out);
        let ping = if smoke {
            None
        } else {
            let before = ctx.admin.stats().await?;
            tokio::time::sleep(Duration::from_secs(35)).await;
            let d = ctx.admin.stats().await?.since(&before);
            if d.pings_received == 0 || d.polls > 0 {
                return Err(format!("quiet window not quiet: {d:?}"));
            }
            let pings = d.pings_received as f64;
            Some((
                (d.bytes_in + d.bytes_out) as f64 / pings,
                (d.records_in + d.records_out) as f64 / pings,
            ))
        };
        let results = ctx
            .admin
            .results(setup.gateway)
            .await?
            .into_iter()
            .filter_map(|v| serde_json::from_value(v["result"].clone()).ok())
            .collect();
        let dists = [Dist::of(s.rtt), Dist::of(s.down), Dist::of(s.up)];
        Ok::<_, String>((dists, rt_bytes, rt_records, ping, results))
    }
    .await;
    drop(fleet);
    tetherd.stop().await;
    out
}

/// CPU time, in microseconds, of the encoding work one round trip takes on both sides:
/// the poll the gateway sends (one pending id), the response carrying one command, the
/// early flush with its result and the flush's response; each encoded and decoded.
fn codec_cost(encoding: Encoding, stored: &[CommandResult], rounds: u32) -> f64 {
    use tether::cloud::wire::{PollResponse, ResultsRequest, ResultsResponse};
    let result = stored.first().cloned().unwrap_or(CommandResult {
        command_id: "c1".into(),
        status: tether::cloud::wire::Status::Ok,
        payload: Some(json!({"echo": {"n": 1}})),
        error: None,
        items: None,
        duration_ms: 1,
    });
    let poll = PollRequest {
        pending: vec![result.command_id.clone()],
        capacity: 1023,
        ..PollRequest::default()
    };
    let response = PollResponse {
        commands: vec![json!({"id": result.command_id, "target": "a0", "payload": {"n": 1}})],
        acked: Vec::new(),
        poll: None,
    };
    let flush = ResultsRequest {
        results: vec![result.clone()],
        events: Vec::new(),
    };
    let flushed = ResultsResponse {
        acked: vec![result.command_id.clone()],
    };
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        let a: Result<PollRequest, _> = encoding.decode(&encoding.encode(&poll));
        let b: Result<PollResponse, _> = encoding.decode(&encoding.encode(&response));
        let c: Result<ResultsRequest, _> = encoding.decode(&encoding.encode(&flush));
        let d: Result<ResultsResponse, _> = encoding.decode(&encoding.encode(&flushed));
        let _ = std::hint::black_box((a, b, c, d));
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

/// A poll as a busy gateway sends it: 10 results of real round trips, 10 events of the
/// kind appliances publish.
fn ten_results_and_events(stored: &[CommandResult]) -> PollRequest {
    let results = stored.iter().rev().take(10).cloned().collect();
    let events = (0..10)
        .map(|n| Event {
            appliance: Some(format!("thermo-{n}")),
            kind: "event".into(),
            payload: json!({"temp_c": 21.5, "humidity": 40 + n, "battery": 88}),
        })
        .collect();
    PollRequest {
        results,
        pending: Vec::new(),
        waiting: Vec::new(),
        events,
        capacity: 64,
    }
}

//! `tether-conformance`: checks a cloud against docs/protocol.md by playing gateways
//! against it over real TLS and HTTP/2, one case per clause of "Server requirements".
//!
//! This file owns the command line, the trust settings, the selection of cases, running
//! each under its own timeout (a case that hangs or panics fails, and the run goes on),
//! the report (one line per case, JUnit XML) and the exit status. The cases are in
//! `cases`, the HTTP/2 connection in `link`, the fixture contract in `fixture`. Built with
//! the devcloud, not shipped in the .deb.

mod cases;
mod fixture;
mod link;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tether::cloud::proto::Encoding;
use tokio::time::Instant;

use crate::cases::{CASES, Case, Ctx, Level, Protobuf, Verdict};
use crate::fixture::Fixture;
use crate::link::Target;

/// Conformance kit for Tether clouds (protocol v1): plays gateways against a cloud and
/// checks it clause by clause (docs/conformance.md).
#[derive(Debug, Parser)]
#[command(name = "tether-conformance", version, about)]
struct Cli {
    /// The cloud's base URL, as a gateway's `cloud.url` (https://host:port[/prefix]).
    #[arg(long, value_name = "URL", required_unless_present = "list")]
    url: Option<String>,

    /// Trust only this CA (PEM) for the cloud and an https fixture; without it, the
    /// system's trust store.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,

    /// The bearer token gateways present (any gateway id must accept it in test mode).
    #[arg(long, value_name = "T", conflicts_with = "token_file")]
    token: Option<String>,

    /// Read the token from this file (trailing whitespace dropped).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// A client certificate (PEM) to present, with --client-key.
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,

    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,

    /// Base URL of the fixture contract (docs/conformance.md).
    #[arg(long, value_name = "URL", required_unless_present_any = ["list", "no_fixture"])]
    fixture: Option<String>,

    /// Run without the fixture contract: the cases that need it (most MUST cases) are
    /// skipped.
    #[arg(long, conflicts_with = "fixture")]
    no_fixture: bool,

    /// Gateway ids the kit makes up start with this.
    #[arg(long, value_name = "P", default_value = "conformance")]
    gateway_prefix: String,

    /// The largest request body the cloud accepts; limits.body-413 sends more.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    max_body: usize,

    /// How soon "at once" must be, in milliseconds (raise it for a cloud far away).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    prompt_ms: u64,

    /// Longest a case may run before it fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    case_timeout: u64,

    /// Run only these cases (ids or globs with `*`, comma-separated or repeated).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    only: Vec<String>,

    /// Leave these cases out (ids or globs).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    skip: Vec<String>,

    /// SHOULD failures count like MUST failures in the exit status.
    #[arg(long)]
    strict: bool,

    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,

    /// List the cases and exit.
    #[arg(long)]
    list: bool,
}

/// One case as run: a case in one encoding.
struct Planned {
    case: &'static Case,
    encoding: Encoding,
    id: String,
}

struct Ran {
    planned: Planned,
    outcome: Result<(), Verdict>,
    took: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether-conformance: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(run(cli));
    // A case that timed out may leave a task parked on a stalled server.
    runtime.shutdown_background();
    code
}

fn plan() -> Vec<Planned> {
    let mut out = Vec::new();
    for case in CASES {
        out.push(Planned {
            case,
            encoding: Encoding::Json,
            id: case.id.to_owned(),
        });
        if case.both {
            out.push(Planned {
                case,
                encoding: Encoding::Protobuf,
                id: format!("{}@protobuf", case.id),
            });
        }
    }
    out
}

/// `*` matches any run of characters; anything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| glob(rest, &tail[i..]))
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let all = plan();
    if cli.list {
        for p in &all {
            println!(
                "{:<34} {:<4} {}",
                p.id,
                p.case.clause,
                p.case.level.as_str()
            );
        }
        return ExitCode::SUCCESS;
    }
    for pattern in cli.only.iter().chain(&cli.skip) {
        if !all.iter().any(|p| glob(pattern, &p.id)) {
            eprintln!("tether-conformance: no case matches {pattern:?} (--list shows them)");
            return ExitCode::from(2);
        }
    }
    let selected: Vec<Planned> = all
        .into_iter()
        .filter(|p| cli.only.is_empty() || cli.only.iter().any(|o| glob(o, &p.id)))
        .filter(|p| !cli.skip.iter().any(|s| glob(s, &p.id)))
        .collect();

    let setup = match setup(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tether-conformance: {e}");
            return ExitCode::from(2);
        }
    };
    let (target, fixture) = setup;

    let run_id = format!("{:06x}", fastrand::u32(..0x100_0000));
    let context = |encoding, tag: &str, protobuf| {
        Ctx::new(
            target.clone(),
            fixture.clone(),
            encoding,
            format!("{}-{run_id}-{tag}", cli.gateway_prefix),
            Duration::from_millis(cli.prompt_ms),
            cli.max_body,
            protobuf,
        )
    };
    let protobuf = if selected
        .iter()
        .any(|p| p.encoding == Encoding::Protobuf || p.case.id.starts_with("protobuf."))
    {
        cases::probe_protobuf(context(Encoding::Protobuf, "probe", Protobuf::Served)).await
    } else {
        Protobuf::Served
    };

    println!(
        "tether-conformance {} against {} (run {run_id})",
        env!("CARGO_PKG_VERSION"),
        cli.url.as_deref().unwrap_or_default()
    );
    let mut ran = Vec::new();
    for planned in selected {
        let start = Instant::now();
        let unserved = match &protobuf {
            Protobuf::Served => None,
            Protobuf::Refused(status) => Some(format!(
                "the cloud refuses protobuf ({status}): a JSON-only cloud"
            )),
            Protobuf::Broken(why) => Some(format!("protobuf does not work: {why}")),
            Protobuf::Untestable(why) => Some(why.clone()),
        };
        let outcome = match unserved {
            Some(why) if planned.encoding == Encoding::Protobuf => Err(Verdict::Skip(why)),
            _ => {
                let tag = planned.id.replace(['.', '@'], "-");
                let cx = context(planned.encoding, &tag, protobuf.clone());
                run_case(planned.case, cx, Duration::from_secs(cli.case_timeout)).await
            }
        };
        let r = Ran {
            planned,
            outcome,
            took: start.elapsed(),
        };
        println!("{}", line(&r));
        ran.push(r);
    }

    let count = |f: fn(&Ran) -> bool| ran.iter().filter(|r| f(r)).count();
    let passed = count(|r| r.outcome.is_ok());
    let failed = count(|r| matches!(r.outcome, Err(Verdict::Fail(_))));
    let skipped = count(|r| matches!(r.outcome, Err(Verdict::Skip(_))));
    println!("{passed} passed, {failed} failed, {skipped} skipped");

    let counted = ran.iter().any(|r| {
        matches!(r.outcome, Err(Verdict::Fail(_)))
            && (r.planned.case.level == Level::Must || cli.strict)
    });
    if let Some(path) = &cli.junit
        && let Err(e) = std::fs::write(path, junit(&ran))
    {
        eprintln!("tether-conformance: cannot write {}: {e}", path.display());
        // A failing cloud is the news; a report that could not be written comes second.
        return ExitCode::from(if counted { 1 } else { 2 });
    }
    if counted {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs a case on its own task, so a panic or a hang is that case's failure.
async fn run_case(case: &'static Case, cx: Ctx, limit: Duration) -> Result<(), Verdict> {
    let task = tokio::spawn((case.run)(Arc::new(cx)));
    let abort = task.abort_handle();
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) if e.is_panic() => Err(Verdict::Fail(format!(
            "the kit itself failed (a bug in the kit): {}",
            panic_text(e.into_panic())
        ))),
        Ok(Err(e)) => Err(Verdict::Fail(format!("the case was cancelled: {e}"))),
        Err(_) => {
            abort.abort();
            Err(Verdict::Fail(format!(
                "the case did not finish within {} s (--case-timeout)",
                limit.as_secs()
            )))
        }
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

fn line(r: &Ran) -> String {
    let (word, why) = match &r.outcome {
        Ok(()) => ("PASS", ""),
        Err(Verdict::Fail(why)) => ("FAIL", why.as_str()),
        Err(Verdict::Skip(why)) => ("SKIP", why.as_str()),
    };
    let mut text = format!(
        "{word}  {:<34} {:<4} {:<6} {:>6.2}s",
        r.planned.id,
        r.planned.case.clause,
        r.planned.case.level.as_str(),
        r.took.as_secs_f64()
    );
    if !why.is_empty() {
        text.push_str("  ");
        text.push_str(why);
    }
    text
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no place for other control characters.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn junit(ran: &[Ran]) -> String {
    let failures = ran
        .iter()
        .filter(|r| matches!(r.outcome, Err(Verdict::Fail(_))))
        .count();
    let skipped = ran
        .iter()
        .filter(|r| matches!(r.outcome, Err(Verdict::Skip(_))))
        .count();
    let total: f64 = ran.iter().map(|r| r.took.as_secs_f64()).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites><testsuite name=\"tether-conformance\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{total:.3}\">",
        ran.len()
    );
    for r in ran {
        let case = r.planned.case;
        let _ = write!(
            out,
            "  <testcase classname=\"protocol.{} {}\" name=\"{}\" time=\"{:.3}\"",
            case.clause,
            case.level.as_str(),
            xml_escape(&r.planned.id),
            r.took.as_secs_f64()
        );
        match &r.outcome {
            Ok(()) => out.push_str("/>\n"),
            Err(Verdict::Fail(why)) => {
                let _ = writeln!(
                    out,
                    "><failure message=\"{}\" type=\"{}\"/></testcase>",
                    xml_escape(why),
                    case.level.as_str()
                );
            }
            Err(Verdict::Skip(why)) => {
                let _ = writeln!(
                    out,
                    "><skipped message=\"{}\"/></testcase>",
                    xml_escape(why)
                );
            }
        }
    }
    out.push_str("</testsuite></testsuites>\n");
    out
}

/// Everything read from files and the URL, once; `Err` is a usage or setup problem.
fn setup(cli: &Cli) -> Result<(Arc<Target>, Option<Arc<Fixture>>), String> {
    tether::cloud::tls::install_crypto_provider();
    let url = cli.url.as_deref().unwrap_or_default();
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("--url {url}: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("--url {url}: gateways speak https only"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("--url {url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let base_path = parsed.path().trim_end_matches('/').to_owned();

    let ca_pem = match &cli.ca {
        Some(path) => {
            Some(std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?)
        }
        None => None,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("--ca: {e}"))?;
                roots.add(cert).map_err(|e| format!("--ca: {e}"))?;
            }
            if roots.is_empty() {
                return Err("--ca: no certificate in the file".to_owned());
            }
            builder.with_root_certificates(roots)
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| format!("the system trust store: {e}"))?
        }
    };
    let mut tls = match (&cli.client_cert, &cli.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("--client-cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--client-key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--client-cert: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?
                .trim_end()
                .to_owned(),
        ),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());

    let fixture = match &cli.fixture {
        Some(base) => Some(Arc::new(Fixture::new(
            base,
            ca_pem.as_deref(),
            token.clone(),
        )?)),
        None => None,
    };
    let target = Arc::new(Target {
        host,
        port,
        base_path,
        tls: Arc::new(tls),
        token,
        client_cert: cli.client_cert.is_some(),
        max_response: 4 * 1024 * 1024,
        connect_timeout: Duration::from_secs(10),
    });
    Ok((target, fixture))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("results.*", "results.duplicate@protobuf"));
        assert!(glob("*@protobuf", "capacity.zero@protobuf"));
        assert!(!glob("*@protobuf", "capacity.zero"));
        assert!(glob("poll.held", "poll.held"));
        assert!(!glob("poll.held", "poll.held@protobuf"));
    }

    #[test]
    fn case_ids_are_unique_and_tied_to_clauses() {
        let plan = plan();
        let mut ids: Vec<&str> = plan.iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), plan.len());
        let protocol = include_str!("../../../docs/protocol.md");
        for case in CASES {
            let anchor = format!("**{}** ({})", case.clause, case.level.as_str());
            assert!(
                protocol.contains(&anchor),
                "docs/protocol.md has no clause {anchor} for {}",
                case.id
            );
        }
    }

    #[test]
    fn junit_escapes() {
        assert_eq!(
            xml_escape("a<b & \"c\"\u{1}"),
            "a&lt;b &amp; &quot;c&quot;?"
        );
    }
}

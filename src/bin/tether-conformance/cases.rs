//! The cases: each plays one or two gateways against the cloud and checks one clause of
//! docs/protocol.md ("Server requirements"). A case fails with a sentence a cloud developer
//! can act on, and passes only on evidence: where a check could pass because nothing
//! happened (no command arrived, so none was resent), the case first proves that the thing
//! it watches does happen.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderName};
use prost::Message;
use serde_json::{Value, json};
use tether::cloud::proto::{Body, Encoding};
use tether::cloud::wire::{PollRequest, PollResponse, ResultsRequest, ResultsResponse};
use tokio::time::{Instant, sleep};

use crate::fixture::Fixture;
use crate::link::{Auth, Link, Reply, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Must,
    Should,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
        }
    }
}

/// Why a case did not pass.
#[derive(Debug)]
pub enum Verdict {
    Fail(String),
    Skip(String),
}

impl Verdict {
    /// A failure's reason rewritten by `f` (a skip stays as it is).
    fn reworded(self, f: impl FnOnce(String) -> String) -> Verdict {
        match self {
            Verdict::Fail(why) => Verdict::Fail(f(why)),
            skip => skip,
        }
    }
}

/// A connection that cannot be made fails the case, unless the server speaks only
/// HTTP/1.1, which the kit does not test.
impl From<crate::link::OpenError> for Verdict {
    fn from(e: crate::link::OpenError) -> Self {
        match e {
            crate::link::OpenError::NotH2(why) => Verdict::Skip(why),
            crate::link::OpenError::Failed(why) => Verdict::Fail(why),
        }
    }
}

impl From<String> for Verdict {
    fn from(reason: String) -> Self {
        Verdict::Fail(reason)
    }
}

pub type Outcome = Result<(), Verdict>;
type Run = fn(Arc<Ctx>) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;

pub struct Case {
    pub id: &'static str,
    /// The clause of docs/protocol.md's "Server requirements" it checks.
    pub clause: &'static str,
    pub level: Level,
    /// Also run in Protocol Buffers (as `ID@protobuf`) when the cloud serves them.
    pub both: bool,
    pub run: Run,
}

macro_rules! fail {
    ($($arg:tt)*) => { return Err(Verdict::Fail(format!($($arg)*))) };
}

macro_rules! case {
    ($id:literal, $clause:literal, $level:ident, $both:literal, $f:ident) => {
        Case {
            id: $id,
            clause: $clause,
            level: Level::$level,
            both: $both,
            run: |cx| Box::pin($f(cx)),
        }
    };
}

/// Every case, in the order they run.
pub const CASES: &[Case] = &[
    case!("transport.h2", "S1", Should, false, transport_h2),
    case!("transport.ping", "S2", Must, false, transport_ping),
    case!("auth.refused", "S3", Must, false, auth_refused),
    case!("poll.wait-zero", "S4", Must, true, poll_wait_zero),
    case!("poll.wait-honoured", "S4", Must, false, poll_wait_honoured),
    case!("poll.held", "S5", Should, false, poll_held),
    case!("poll.queued-at-once", "S6", Must, true, poll_queued_at_once),
    case!("poll.wakes", "S6", Must, false, poll_wakes),
    case!("gateways.isolated", "S7", Must, false, gateways_isolated),
    case!("capacity.zero", "S8", Must, true, capacity_zero),
    case!("capacity.limit", "S8", Must, true, capacity_limit),
    case!("poll.answer-size", "S20", Must, true, poll_answer_size),
    case!("pending.not-resent", "S9", Must, true, pending_not_resent),
    case!("resend.lost", "S10", Must, true, resend_lost),
    case!("results.duplicate", "S11", Must, true, results_duplicate),
    case!(
        "results.first-stays",
        "S11",
        Must,
        true,
        results_first_stays
    ),
    case!(
        "results.acked-stored",
        "S12",
        Must,
        true,
        results_acked_stored
    ),
    case!(
        "flush.second-stream",
        "S13",
        Must,
        true,
        flush_second_stream
    ),
    case!("unknown-fields", "S14", Must, true, unknown_fields),
    case!("limits.body-413", "S15", Should, false, limits_body_413),
    case!(
        "errors.malformed-400",
        "S16",
        Should,
        true,
        errors_malformed_400
    ),
    case!("poll.cadence", "S17", Should, false, poll_cadence),
    case!("protobuf.encoding", "S18", Must, false, protobuf_encoding),
    case!("protobuf.refusal", "S19", Should, false, protobuf_refusal),
];

/// What a protobuf poll told about the cloud, found once before the cases run.
#[derive(Debug, Clone)]
pub enum Protobuf {
    /// Answered in protobuf.
    Served,
    /// Refused with this status (a JSON-only cloud).
    Refused(StatusCode),
    /// Answered, but wrongly (or not at all): why.
    Broken(String),
    /// The kit cannot tell (an HTTP/1.1-only server): why.
    Untestable(String),
}

/// Everything a case needs; one per case run.
pub struct Ctx {
    pub target: Arc<Target>,
    pub fixture: Option<Arc<Fixture>>,
    pub encoding: Encoding,
    /// Gateway ids start with this (the run's prefix and the case).
    pub gateway_prefix: String,
    /// How soon "at once" must be.
    pub prompt: Duration,
    /// The body size the server is said to refuse (`--max-body`).
    pub max_body: usize,
    pub protobuf: Protobuf,
    next: AtomicU64,
}

impl Ctx {
    pub fn new(
        target: Arc<Target>,
        fixture: Option<Arc<Fixture>>,
        encoding: Encoding,
        gateway_prefix: String,
        prompt: Duration,
        max_body: usize,
        protobuf: Protobuf,
    ) -> Ctx {
        Ctx {
            target,
            fixture,
            encoding,
            gateway_prefix,
            prompt,
            max_body,
            protobuf,
            next: AtomicU64::new(1),
        }
    }

    fn unique(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh gateway id on a fresh connection.
    async fn gateway(&self) -> Result<Gw<'_>, Verdict> {
        let link = Link::open(&self.target).await?;
        Ok(Gw {
            cx: self,
            id: format!("{}-{}", self.gateway_prefix, self.unique()),
            link,
        })
    }

    fn fixture(&self) -> Result<&Fixture, Verdict> {
        self.fixture
            .as_deref()
            .ok_or_else(|| Verdict::Skip("needs the fixture contract (--fixture URL)".into()))
    }
}

/// One simulated gateway.
struct Gw<'a> {
    cx: &'a Ctx,
    id: String,
    link: Link,
}

fn poll_body(results: Vec<Value>, pending: &[String], capacity: u32) -> Value {
    json!({ "results": results, "pending": pending, "events": [], "capacity": capacity })
}

/// A poll that carries nothing and has room for commands.
fn idle_poll() -> Value {
    poll_body(vec![], &[], 64)
}

fn result(id: &str, status: &str, payload: Value) -> Value {
    json!({ "command_id": id, "status": status, "payload": payload, "duration_ms": 3 })
}

fn ids(commands: &[Value]) -> Result<Vec<String>, Verdict> {
    commands
        .iter()
        .map(|c| match c.get("id").and_then(Value::as_str) {
            Some(id) => Ok(id.to_owned()),
            None => Err(Verdict::Fail(format!(
                "the poll answer carries a command without a string id: {}",
                c.to_string().chars().take(120).collect::<String>()
            ))),
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

impl Gw<'_> {
    /// A new command for this gateway (not yet queued).
    fn command(&self) -> (String, Value) {
        let id = format!("k{}-{}", self.cx.unique(), fastrand::u32(..));
        let cmd = json!({
            "id": id,
            "target": "lamp-1",
            "payload": { "kit": "conformance", "n": 1 },
            "ttl_ms": 600_000,
        });
        (id, cmd)
    }

    async fn enqueue_new(&self) -> Result<String, Verdict> {
        let (id, cmd) = self.command();
        self.cx.fixture()?.enqueue(&self.id, &cmd).await?;
        Ok(id)
    }

    fn headers(&self, wait: Option<u64>) -> Vec<(HeaderName, String)> {
        let media = self.cx.encoding.media_type().to_owned();
        let mut headers = vec![(CONTENT_TYPE, media.clone()), (ACCEPT, media)];
        if let Some(wait) = wait {
            headers.push((HeaderName::from_static("prefer"), format!("wait={wait}")));
        }
        headers
    }

    fn encode<M: Body>(&self, body: &Value) -> Result<Bytes, Verdict> {
        match self.cx.encoding {
            Encoding::Json => Ok(Bytes::from(body.to_string())),
            Encoding::Protobuf => {
                let message: M = serde_json::from_value(body.clone())
                    .map_err(|e| Verdict::Fail(format!("the kit built a bad body: {e}")))?;
                Ok(Bytes::from(Encoding::Protobuf.encode(&message)))
            }
        }
    }

    /// A poll, sent as is; the reply unchecked.
    async fn poll_raw(&self, body: Bytes, wait: u64, auth: Auth<'_>) -> Result<Reply, String> {
        let path = format!("/v1/gateways/{}/poll", self.id);
        let within = Duration::from_secs(wait) + self.cx.prompt + Duration::from_secs(10);
        self.link
            .post(&path, &self.headers(Some(wait)), auth, body, within)
            .await
            .map_err(|e| format!("poll (Prefer: wait={wait}): {e}"))
    }

    /// A poll; its answer checked and decoded.
    async fn poll(&self, body: &Value, wait: u64) -> Result<(PollResponse, Reply), Verdict> {
        let bytes = self.encode::<PollRequest>(body)?;
        let reply = self.poll_raw(bytes, wait, Auth::Token).await?;
        let decoded = self.decode::<PollResponse>("poll", &reply)?;
        Ok((decoded, reply))
    }

    /// A poll that must bring the commands with `expected` ids (and maybe more).
    async fn deliver(&self, expected: &[String]) -> Result<Vec<String>, Verdict> {
        let (answer, _) = self.poll(&idle_poll(), 5).await?;
        let got = ids(&answer.commands)?;
        for id in expected {
            if !got.contains(id) {
                fail!(
                    "a poll did not bring the command {id} queued through the fixture (it brought {got:?}); the case cannot go on"
                );
            }
        }
        Ok(got)
    }

    async fn flush(&self, body: &Value) -> Result<(ResultsResponse, Reply), Verdict> {
        let bytes = self.encode::<ResultsRequest>(body)?;
        let path = format!("/v1/gateways/{}/results", self.id);
        let within = self.cx.prompt + Duration::from_secs(10);
        let reply = self
            .link
            .post(&path, &self.headers(None), Auth::Token, bytes, within)
            .await
            .map_err(|e| format!("early flush: {e}"))?;
        let decoded = self.decode::<ResultsResponse>("early flush", &reply)?;
        Ok((decoded, reply))
    }

    fn decode<M: Body>(&self, what: &str, reply: &Reply) -> Result<M, Verdict> {
        if reply.status != StatusCode::OK {
            fail!(
                "{what} answered {} (expected 200): {}",
                reply.status,
                reply.body_excerpt()
            );
        }
        let named = Encoding::from_media_type(reply.content_type());
        let encoding = match (self.cx.encoding, named) {
            (Encoding::Protobuf, Some(Encoding::Protobuf)) => Encoding::Protobuf,
            (Encoding::Protobuf, _) => fail!(
                "{what}: a protobuf request was answered with Content-Type {:?}, not application/protobuf",
                reply.content_type()
            ),
            (Encoding::Json, Some(Encoding::Protobuf)) => {
                fail!("{what}: a JSON request was answered in protobuf")
            }
            (Encoding::Json, _) => Encoding::Json,
        };
        encoding.decode::<M>(&reply.body).map_err(|e| {
            Verdict::Fail(format!(
                "{what}: the 200 body is not a valid {} answer ({e}): {}",
                encoding.as_str(),
                reply.body_excerpt()
            ))
        })
    }
}

/// What the fixture shows for one command.
async fn stored(cx: &Ctx, gw: &str, id: &str) -> Result<Vec<crate::fixture::Stored>, Verdict> {
    let all = cx.fixture()?.results(gw).await?;
    Ok(all.into_iter().filter(|s| s.command_id == id).collect())
}

// ---- S1, S2, S3: transport and authentication -------------------------------------

async fn transport_h2(cx: Arc<Ctx>) -> Outcome {
    match Link::open(&cx.target).await {
        // Link::open accepts only h2.
        Ok(_) => Ok(()),
        Err(crate::link::OpenError::NotH2(why) | crate::link::OpenError::Failed(why)) => {
            fail!("{why}")
        }
    }
}

async fn transport_ping(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let within = Duration::from_secs(5);
    gw.link
        .ping(within)
        .await
        .map_err(|e| format!("on an idle connection: {e}"))?;
    // While a poll is held, the gateway's PINGs are what keep the connection checked.
    // (A server that does not hold polls has nothing more to show here: poll.held.)
    let body = gw.encode::<PollRequest>(&idle_poll())?;
    let (held, pinged) = tokio::join!(
        async { (gw.poll_raw(body, 2, Auth::Token).await, Instant::now()) },
        async {
            sleep(Duration::from_millis(300)).await;
            (gw.link.ping(within).await, Instant::now())
        }
    );
    let ((held, poll_ended), (pinged, ponged)) = (held, pinged);
    let held = held.map_err(|e| format!("the poll held during the PING: {e}"))?;
    if poll_ended > ponged || held.status != StatusCode::OK {
        pinged.map_err(|e| format!("while a poll was held: {e}"))?;
    } else {
        pinged.map_err(|e| format!("right after a poll: {e}"))?;
    }
    Ok(())
}

async fn auth_refused(cx: Arc<Ctx>) -> Outcome {
    let Some(token) = cx.target.token.clone() else {
        return Err(Verdict::Skip(
            "no --token given, so the kit cannot tell a wrong one".into(),
        ));
    };
    if cx.target.client_cert {
        return Err(Verdict::Skip(
            "the kit presents a client certificate, which a cloud may take as credentials enough"
                .into(),
        ));
    }
    let gw = cx.gateway().await?;
    let wrong = format!("{token}-wrong");
    for (auth, what) in [
        (Auth::None, "without Authorization"),
        (Auth::Bearer(&wrong), "with a wrong bearer token"),
    ] {
        let body = gw.encode::<PollRequest>(&idle_poll())?;
        let reply = gw.poll_raw(body, 0, auth).await?;
        if !matches!(reply.status.as_u16(), 401 | 403) {
            fail!(
                "a poll {what} was answered {}, not 401 or 403",
                reply.status
            );
        }
    }
    // Not vacuous: the right token works on the same connection.
    gw.poll(&idle_poll(), 0).await?;
    Ok(())
}

// ---- S4 to S7: holding and answering polls ------------------------------------------

async fn poll_wait_zero(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let (_, reply) = gw.poll(&idle_poll(), 0).await?;
    if reply.elapsed > cx.prompt {
        fail!(
            "a poll with Prefer: wait=0 and nothing queued was answered after {}; it must be answered at once",
            secs(reply.elapsed)
        );
    }
    Ok(())
}

async fn poll_wait_honoured(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let wait = 2;
    let (_, reply) = gw.poll(&idle_poll(), wait).await?;
    let bound = Duration::from_secs(wait) + cx.prompt;
    if reply.elapsed > bound {
        fail!(
            "a poll with Prefer: wait={wait} was held {}; a server may hold it at most {wait} s",
            secs(reply.elapsed)
        );
    }
    Ok(())
}

async fn poll_held(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let (_, reply) = gw.poll(&idle_poll(), 3).await?;
    if reply.elapsed < Duration::from_secs(1) {
        fail!(
            "a poll with Prefer: wait=3 and nothing queued was answered after {}: the server does not hold polls, so gateways poll in a loop",
            secs(reply.elapsed)
        );
    }
    Ok(())
}

async fn poll_queued_at_once(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let id = gw.enqueue_new().await?;
    let (answer, reply) = gw.poll(&idle_poll(), 10).await?;
    let got = ids(&answer.commands)?;
    if !got.contains(&id) {
        fail!(
            "a poll with a command queued was answered after {} without it (commands: {got:?})",
            secs(reply.elapsed)
        );
    }
    if reply.elapsed > cx.prompt {
        fail!(
            "a poll with a command queued was held {} before the answer; it must be answered at once",
            secs(reply.elapsed)
        );
    }
    Ok(())
}

async fn poll_wakes(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let (id, cmd) = gw.command();
    let fixture = cx.fixture()?;
    // Long enough for the poll to reach the server before the command is queued.
    let lead = (cx.prompt / 2).max(Duration::from_millis(500));
    let body = idle_poll();
    let (polled, queued) = tokio::join!(gw.poll(&body, 10), async {
        sleep(lead).await;
        fixture.enqueue(&gw.id, &cmd).await
    });
    queued?;
    let (answer, reply) = polled?;
    let got = ids(&answer.commands)?;
    if !got.contains(&id) && reply.elapsed < lead {
        return Err(Verdict::Skip(format!(
            "the poll was answered after {}, before the command was queued: the server does not hold polls (poll.held), so there is no hold to end",
            secs(reply.elapsed)
        )));
    }
    if !got.contains(&id) {
        fail!(
            "a held poll ended after {} without the command queued during the hold (commands: {got:?})",
            secs(reply.elapsed)
        );
    }
    if reply.elapsed > lead + cx.prompt {
        fail!(
            "a command queued while a poll was held reached it only after {}; the hold must end at once",
            secs(reply.elapsed - lead)
        );
    }
    Ok(())
}

async fn gateways_isolated(cx: Arc<Ctx>) -> Outcome {
    let a = cx.gateway().await?;
    let b = cx.gateway().await?;
    let id = a.enqueue_new().await?;
    let (answer, _) = b.poll(&idle_poll(), 1).await?;
    if ids(&answer.commands)?.contains(&id) {
        fail!(
            "a command queued for gateway {} was delivered to gateway {}",
            a.id,
            b.id
        );
    }
    a.deliver(&[id]).await?;
    Ok(())
}

// ---- S8 to S10: capacity, pending, resending ----------------------------------------

async fn capacity_zero(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let first = gw.enqueue_new().await?;
    let second = gw.enqueue_new().await?;
    let (answer, _) = gw.poll(&poll_body(vec![], &[], 0), 1).await?;
    if !answer.commands.is_empty() {
        fail!(
            "a poll with capacity 0 got {} command(s); capacity 0 means none",
            answer.commands.len()
        );
    }
    // Not vacuous: the commands were there to be sent.
    gw.deliver(&[first, second]).await?;
    Ok(())
}

async fn capacity_limit(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let mut queued = Vec::new();
    for _ in 0..5 {
        queued.push(gw.enqueue_new().await?);
    }
    let (answer, _) = gw.poll(&poll_body(vec![], &[], 2), 5).await?;
    let mut got = ids(&answer.commands)?;
    if got.len() > 2 {
        fail!(
            "a poll with capacity 2 got {} commands; never more than capacity",
            got.len()
        );
    }
    if got.is_empty() {
        fail!("a poll with capacity 2 got none of the 5 commands queued");
    }
    // The rest come once there is room, each once, however many polls that takes.
    while got.len() < queued.len() {
        let (answer, _) = gw.poll(&poll_body(vec![], &got, 10), 5).await?;
        let more = ids(&answer.commands)?;
        if more.is_empty() {
            break;
        }
        if let Some(again) = more.iter().find(|id| got.contains(id)) {
            fail!("{again} was sent again although the poll listed it in pending");
        }
        got.extend(more);
    }
    let mut missing: Vec<&String> = queued.iter().filter(|id| !got.contains(id)).collect();
    missing.sort();
    if !missing.is_empty() {
        fail!("after capacity grew, the queued commands {missing:?} never came");
    }
    Ok(())
}

async fn poll_answer_size(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let fixture = cx.fixture()?;
    // 80 commands of 60 KiB each: more than one answer may carry, each far below the
    // gateway's 64 KiB bound for a command.
    let filler = Value::String("x".repeat(60 * 1024));
    let mut queued = Vec::new();
    for _ in 0..80 {
        let (id, mut cmd) = gw.command();
        cmd["payload"]["filler"] = filler.clone();
        fixture.enqueue(&gw.id, &cmd).await?;
        queued.push(id);
    }
    let mut got: Vec<String> = Vec::new();
    while got.len() < queued.len() {
        let (answer, _) = gw
            .poll(&poll_body(vec![], &got, 1000), 5)
            .await
            .map_err(|v| v.reworded(|why| format!(
                    "with 4.8 MB of commands queued and capacity 1000: {why}; keep an answer under 4 MiB and send the rest with the next poll"
                )))?;
        let more = ids(&answer.commands)?;
        if more.is_empty() {
            break;
        }
        if let Some(again) = more.iter().find(|id| got.contains(id)) {
            fail!("{again} was sent again although the poll listed it in pending");
        }
        got.extend(more);
    }
    let missing = queued.iter().filter(|id| !got.contains(id)).count();
    if missing > 0 {
        fail!("{missing} of the 80 large commands queued never came");
    }
    Ok(())
}

async fn pending_not_resent(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let first = gw.enqueue_new().await?;
    gw.deliver(std::slice::from_ref(&first)).await?;
    let pending = vec![first.clone()];
    let (answer, _) = gw.poll(&poll_body(vec![], &pending, 64), 1).await?;
    if ids(&answer.commands)?.contains(&first) {
        fail!("{first} was sent again although the next poll listed it in pending");
    }
    // And while other commands flow.
    let second = gw.enqueue_new().await?;
    let (answer, _) = gw.poll(&poll_body(vec![], &pending, 64), 5).await?;
    let got = ids(&answer.commands)?;
    if got.contains(&first) {
        fail!("{first} was sent again, beside {second}, although the poll listed it in pending");
    }
    if !got.contains(&second) {
        fail!("a poll did not bring the command {second} queued through the fixture");
    }
    Ok(())
}

async fn resend_lost(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let id = gw.enqueue_new().await?;
    gw.deliver(std::slice::from_ref(&id)).await?;
    // The answer that carried it "died with the connection": the gateway never saw it,
    // so its next poll neither lists it in pending nor answers it.
    let gw = Gw {
        link: Link::open(&cx.target).await?,
        ..gw
    };
    let (answer, _) = gw.poll(&idle_poll(), 3).await?;
    if !ids(&answer.commands)?.contains(&id) {
        fail!(
            "{id} was delivered, then the next poll neither listed it in pending nor answered it, and it was not sent again: a command whose answer died with its connection is lost"
        );
    }
    Ok(())
}

// ---- S11, S12: storing and acknowledging results -------------------------------------

async fn results_duplicate(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let id = gw.enqueue_new().await?;
    gw.deliver(std::slice::from_ref(&id)).await?;
    let copy = result(&id, "ok", json!({ "copy": 1 }));
    for n in ["first", "second"] {
        let (answer, _) = gw.poll(&poll_body(vec![copy.clone()], &[], 64), 0).await?;
        if !answer.acked.contains(&id) {
            fail!(
                "the {n} copy of the result for {id} was not acked; a gateway sends a result until it is acked"
            );
        }
    }
    let rows = stored(&cx, &gw.id, &id).await?;
    if rows.len() != 1 {
        fail!(
            "the same result sent twice is stored {} times; results are deduplicated by command_id",
            rows.len()
        );
    }
    Ok(())
}

async fn results_first_stays(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let id = gw.enqueue_new().await?;
    gw.deliver(std::slice::from_ref(&id)).await?;
    let first = result(&id, "ok", json!({ "copy": "first" }));
    // What a gateway that restarted before it saw the ack may send for the same id.
    let second = result(&id, "interrupted", json!({ "copy": "second" }));
    for (body, n) in [(first, "first"), (second, "second")] {
        let (answer, _) = gw.poll(&poll_body(vec![body], &[], 64), 0).await?;
        if !answer.acked.contains(&id) {
            fail!("the {n} result for {id} was not acked");
        }
    }
    let rows = stored(&cx, &gw.id, &id).await?;
    match rows.as_slice() {
        [one] if one.status == "ok" => Ok(()),
        [one] => fail!(
            "a second result for {id} (status interrupted) replaced the first (status ok): the stored status is {}; the first stored result stays",
            one.status
        ),
        [] => fail!("no result stored for {id} after two were acked"),
        many => fail!(
            "two results for {id} stored {} rows; one result per command_id",
            many.len()
        ),
    }
}

async fn results_acked_stored(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let a = gw.enqueue_new().await?;
    let b = gw.enqueue_new().await?;
    gw.deliver(&[a.clone(), b.clone()]).await?;
    let check = |acked: Vec<String>, sent: String, how: &'static str| {
        let cx = cx.clone();
        let gw_id = gw.id.clone();
        async move {
            if !acked.contains(&sent) {
                fail!("the result for {sent} sent {how} was not acked (acked: {acked:?})");
            }
            let all = cx.fixture()?.results(&gw_id).await?;
            for id in &acked {
                if !all.iter().any(|s| &s.command_id == id) {
                    fail!(
                        "{id} was acked {how}, but the fixture shows no result stored for it: ack only what is stored"
                    );
                }
            }
            Ok(())
        }
    };
    let body = poll_body(
        vec![result(&a, "ok", json!(null))],
        std::slice::from_ref(&b),
        64,
    );
    let (answer, _) = gw.poll(&body, 0).await?;
    check(answer.acked, a, "in a poll").await?;
    let (flushed, _) = gw
        .flush(&json!({ "results": [result(&b, "error", json!(null))], "events": [] }))
        .await?;
    check(flushed.acked, b, "in an early flush").await?;
    Ok(())
}

// ---- S13: the early flush -----------------------------------------------------------

async fn flush_second_stream(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let id = gw.enqueue_new().await?;
    gw.deliver(std::slice::from_ref(&id)).await?;
    let (wake, wake_cmd) = gw.command();
    let fixture = cx.fixture()?;
    let pending = vec![id.clone()];
    // Long enough for the poll to be held before the flush goes out (as in poll.wakes).
    let lead = (cx.prompt / 2).max(Duration::from_millis(500));
    let body = poll_body(vec![], &pending, 64);
    let (polled, flushed) = tokio::join!(
        async { (gw.poll(&body, 10).await, Instant::now()) },
        async {
            sleep(lead).await;
            let sent = Instant::now();
            let flushed = gw
                .flush(&json!({ "results": [result(&id, "ok", json!(null))], "events": [] }))
                .await;
            // Ends the held poll without waiting its ten seconds.
            let queued = fixture.enqueue(&gw.id, &wake_cmd).await;
            (flushed, sent, queued)
        }
    );
    let ((polled, poll_ended), (flushed, flush_sent, queued)) = (polled, flushed);
    if poll_ended <= flush_sent && polled.is_ok() {
        return Err(Verdict::Skip(
            "the poll was answered before the flush went out: the server does not hold polls (poll.held), so there is nothing to show"
                .into(),
        ));
    }
    let (answer, reply) = flushed.map_err(|v| {
        v.reworded(|why| format!("while a poll was held on the same connection: {why}"))
    })?;
    if reply.elapsed > cx.prompt {
        fail!(
            "an early flush sent while a poll was held was answered only after {}; it must not wait for the poll",
            secs(reply.elapsed)
        );
    }
    if !answer.acked.contains(&id) {
        fail!("the early flush's result for {id} was not acked");
    }
    queued?;
    let (held, _) = polled?;
    if !ids(&held.commands)?.contains(&wake) && !held.commands.is_empty() {
        fail!("the held poll ended with commands other than the one queued");
    }
    Ok(())
}

// ---- S14: unknown fields ------------------------------------------------------------

async fn unknown_fields(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let id = gw.enqueue_new().await?;
    gw.deliver(std::slice::from_ref(&id)).await?;
    let reply = match cx.encoding {
        Encoding::Json => {
            let body = json!({
                "results": [{
                    "command_id": id, "status": "ok", "payload": {"v": 1}, "duration_ms": 2,
                    "x_kit_future": {"nested": [1, 2]},
                    "items": [{"target": "lamp-1", "status": "ok", "duration_ms": 1, "x_kit_item": true}],
                }],
                "pending": [],
                "events": [{"appliance": "lamp-1", "kind": "event", "payload": {}, "x_kit_event": 1}],
                "capacity": 64,
                "x_kit_top": "from a newer gateway",
            });
            gw.poll_raw(Bytes::from(body.to_string()), 0, Auth::Token)
                .await?
        }
        Encoding::Protobuf => {
            let known: PollRequest =
                serde_json::from_value(idle_poll()).map_err(|e| e.to_string())?;
            let mut bytes = Encoding::Protobuf.encode(&known);
            let item: tether::cloud::wire::CommandResult =
                serde_json::from_value(result(&id, "ok", json!({"v": 1})))
                    .map_err(|e| e.to_string())?;
            let wrapped = ResultsRequest {
                results: vec![item],
                events: vec![],
            };
            let mut inner = wrapped
                .to_proto()
                .results
                .first()
                .map(Message::encode_to_vec)
                .unwrap_or_default();
            unknown_varint(&mut inner, 1000, 7);
            // Field 1 (results), length-delimited, then an unknown field at the top.
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut bytes);
            prost::encoding::encode_varint(inner.len() as u64, &mut bytes);
            bytes.extend_from_slice(&inner);
            unknown_varint(&mut bytes, 1001, 9);
            gw.poll_raw(Bytes::from(bytes), 0, Auth::Token).await?
        }
    };
    let answer = gw.decode::<PollResponse>("a poll with unknown fields", &reply)?;
    if !answer.acked.contains(&id) {
        fail!("a result carrying unknown fields was not acked");
    }
    let rows = stored(&cx, &gw.id, &id).await?;
    if !rows.iter().any(|r| r.status == "ok") {
        fail!("a result carrying unknown fields was acked but not stored");
    }
    Ok(())
}

fn unknown_varint(buf: &mut Vec<u8>, field: u32, value: u64) {
    prost::encoding::encode_key(field, prost::encoding::WireType::Varint, buf);
    prost::encoding::encode_varint(value, buf);
}

// ---- S15, S16: limits and bad bodies ------------------------------------------------

async fn limits_body_413(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let size = cx.max_body + 64 * 1024;
    let filler = "x".repeat(size);
    let body = json!({
        "results": [], "pending": [], "capacity": 64,
        "events": [{ "appliance": null, "kind": "event", "payload": filler }],
    });
    let bytes = Bytes::from(body.to_string());
    let len = bytes.len();
    // Time to upload it even at 1 MB/s.
    let within = cx.prompt + Duration::from_secs(10 + len as u64 / 1_000_000);
    let path = format!("/v1/gateways/{}/poll", gw.id);
    let reply = gw
        .link
        .post(&path, &gw.headers(Some(0)), Auth::Token, bytes, within)
        .await
        .map_err(|e| {
            format!(
                "a {len}-byte body (over --max-body {}) got no complete answer: {e}; answer 413 so the gateway sends less",
                cx.max_body
            )
        })?;
    if reply.status != StatusCode::PAYLOAD_TOO_LARGE {
        fail!(
            "a {len}-byte body (over --max-body {}) was answered {}, not 413",
            cx.max_body,
            reply.status
        );
    }
    gw.poll(&idle_poll(), 0).await.map_err(|v| {
        v.reworded(|why| format!("after the 413, the connection no longer serves: {why}"))
    })?;
    Ok(())
}

async fn errors_malformed_400(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let probes: Vec<(&str, Bytes)> = match cx.encoding {
        Encoding::Json => vec![
            (
                "a body that is not JSON",
                Bytes::from_static(b"{\"results\": ["),
            ),
            (
                "a body with fields of the wrong type",
                Bytes::from_static(b"{\"results\": \"none\", \"capacity\": -1}"),
            ),
        ],
        Encoding::Protobuf => vec![(
            "a body that is not protobuf",
            Bytes::from_static(&[0xff, 0xff, 0xff, 0xff]),
        )],
    };
    for (what, bytes) in probes {
        let reply = gw.poll_raw(bytes, 0, Auth::Token).await?;
        if reply.status != StatusCode::BAD_REQUEST {
            fail!("{what} was answered {}, not 400", reply.status);
        }
    }
    Ok(())
}

async fn poll_cadence(cx: Arc<Ctx>) -> Outcome {
    let gw = cx.gateway().await?;
    let (answer, _) = gw.poll(&idle_poll(), 0).await?;
    let Some(cadence) = answer.poll else {
        return Ok(());
    };
    if let Some(w) = cadence.wait_s.filter(|w| *w > 3600) {
        fail!("poll.wait_s is {w}; at most 3600");
    }
    if let Some(i) = cadence.interval_s.filter(|i| *i > 86_400) {
        fail!("poll.interval_s is {i}; at most 86400");
    }
    if let Some(p) = cadence.ping_s.filter(|p| !(10..=3600).contains(p)) {
        fail!("poll.ping_s is {p}; between 10 and 3600");
    }
    Ok(())
}

// ---- S18, S19: Protocol Buffers -----------------------------------------------------

/// Finds out whether the cloud serves protobuf: one poll, on its own gateway.
pub async fn probe_protobuf(cx: Ctx) -> Protobuf {
    let gw = match cx.gateway().await {
        Ok(gw) => gw,
        Err(Verdict::Skip(why)) => return Protobuf::Untestable(why),
        Err(Verdict::Fail(why)) => return Protobuf::Broken(why),
    };
    let reply = match gw.encode::<PollRequest>(&idle_poll()) {
        Ok(body) => gw.poll_raw(body, 0, Auth::Token).await,
        Err(_) => Err("the kit could not encode a poll".to_owned()),
    };
    let reply = match reply {
        Ok(r) => r,
        Err(why) => return Protobuf::Broken(format!("a protobuf poll: {why}")),
    };
    if matches!(reply.status.as_u16(), 400 | 406 | 415 | 422) {
        return Protobuf::Refused(reply.status);
    }
    match gw.decode::<PollResponse>("a protobuf poll", &reply) {
        Ok(_) => Protobuf::Served,
        Err(Verdict::Fail(why) | Verdict::Skip(why)) => Protobuf::Broken(why),
    }
}

async fn protobuf_encoding(cx: Arc<Ctx>) -> Outcome {
    match &cx.protobuf {
        Protobuf::Untestable(why) => Err(Verdict::Skip(why.clone())),
        Protobuf::Served => Ok(()),
        Protobuf::Refused(status) => Err(Verdict::Skip(format!(
            "the cloud refuses protobuf ({status}): a JSON-only cloud"
        ))),
        Protobuf::Broken(why) => fail!("{why}"),
    }
}

async fn protobuf_refusal(cx: Arc<Ctx>) -> Outcome {
    match &cx.protobuf {
        Protobuf::Untestable(why) => Err(Verdict::Skip(why.clone())),
        Protobuf::Served => Err(Verdict::Skip("the cloud serves protobuf".into())),
        Protobuf::Refused(s) if *s == StatusCode::UNSUPPORTED_MEDIA_TYPE => Ok(()),
        Protobuf::Refused(s) => fail!(
            "a protobuf poll was refused with {s}; 415 tells a gateway at once to speak JSON (it reads {s} so only until protobuf has once worked)"
        ),
        Protobuf::Broken(why) => fail!("{why}"),
    }
}

//! The bench's side of the devcloud: its admin API (enqueue, wait for a result, read
//! results and counters) and a stub gateway used as the latency baseline.
//!
//! The stub is the smallest honest gateway: a reqwest HTTP/2 client over TLS that polls
//! like tetherd and answers every command in its next poll, with no MQTT, router or
//! journal. Its round trip is what the devcloud, the admin API, TLS and HTTP/2 cost on
//! this machine; what tetherd adds shows as the difference.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

#[derive(Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct Stats {
    pub connections: u64,
    pub tls_handshakes: u64,
    pub polls: u64,
    pub results_posts: u64,
    pub requests_http1: u64,
    pub requests_http2: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(default)]
    pub records_in: u64,
    #[serde(default)]
    pub records_out: u64,
    #[serde(default)]
    pub pings_received: u64,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Result<Admin, String> {
        let http = reqwest::Client::builder()
            // Loopback must never go through a proxy named in the environment.
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Admin {
            http,
            base: format!("http://{addr}/admin"),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Value, String> {
        let resp = req.send().await.map_err(|e| format!("{what}: {e}"))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| format!("{what}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{what}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{what}: not JSON: {e}"))
    }

    /// Enqueues one command object or an array of them.
    pub async fn enqueue(&self, gw: &str, commands: &Value) -> Result<(), String> {
        let req = self
            .http
            .post(format!("{}/gateways/{gw}/commands", self.base))
            .body(commands.to_string());
        self.send(req, "enqueue").await.map(drop)
    }

    /// The stored result of `id` (`{"result", "deliveries", "received_ms"}`), waiting up
    /// to `wait` for it: the devcloud answers the moment it stores it.
    pub async fn wait_result(&self, gw: &str, id: &str, wait: Duration) -> Result<Value, String> {
        let url = format!(
            "{}/gateways/{gw}/results/{id}?wait_ms={}",
            self.base,
            wait.as_millis()
        );
        self.send(self.http.get(url), &format!("result of {id}"))
            .await
    }

    pub async fn results(&self, gw: &str) -> Result<Vec<Value>, String> {
        let url = format!("{}/gateways/{gw}/results", self.base);
        let v = self.send(self.http.get(url), "results").await?;
        Ok(v["results"].as_array().cloned().unwrap_or_default())
    }

    pub async fn stats(&self) -> Result<Stats, String> {
        let v = self
            .send(self.http.get(format!("{}/stats", self.base)), "stats")
            .await?;
        serde_json::from_value(v).map_err(|e| format!("stats: {e}"))
    }
}

impl Stats {
    /// Counter growth from `earlier` to `self`.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            connections: self.connections - earlier.connections,
            tls_handshakes: self.tls_handshakes - earlier.tls_handshakes,
            polls: self.polls - earlier.polls,
            results_posts: self.results_posts - earlier.results_posts,
            requests_http1: self.requests_http1 - earlier.requests_http1,
            requests_http2: self.requests_http2 - earlier.requests_http2,
            bytes_in: self.bytes_in - earlier.bytes_in,
            bytes_out: self.bytes_out - earlier.bytes_out,
            records_in: self.records_in - earlier.records_in,
            records_out: self.records_out - earlier.records_out,
            pings_received: self.pings_received - earlier.pings_received,
        }
    }
}

/// Starts the stub gateway `gw` polling `https://localhost:{port}`; abort the handle to
/// stop it. Returns once its first poll has been answered (the link is proven).
pub async fn start_stub(https: SocketAddr, ca: &Path, gw: &str) -> Result<JoinHandle<()>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(certs)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("https://localhost:{}/v1/gateways/{gw}/poll", https.port());
    // First poll with wait=0, like tetherd on a new connection.
    poll(&http, &url, 0, Vec::new()).await?;
    Ok(tokio::spawn(async move {
        let mut results = Vec::new();
        // Bounded only by the abort; a failing poll ends the stub (the rows then fail
        // with "no result", which names the problem).
        while let Ok(commands) = poll(&http, &url, 30, std::mem::take(&mut results)).await {
            results = commands
                .iter()
                .map(|c| json!({"command_id": c["id"], "status": "ok", "payload": {"echo": true}, "duration_ms": 0}))
                .collect();
        }
    }))
}

async fn poll(
    http: &reqwest::Client,
    url: &str,
    wait_s: u64,
    results: Vec<Value>,
) -> Result<Vec<Value>, String> {
    let body = json!({"results": results, "pending": [], "events": [], "capacity": 1024});
    let resp = http
        .post(url)
        .header("prefer", format!("wait={wait_s}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("stub poll: {e}"))?;
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok(v["commands"].as_array().cloned().unwrap_or_default())
}

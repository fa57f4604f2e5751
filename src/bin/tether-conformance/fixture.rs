//! The fixture contract (docs/conformance.md): how the kit queues a command for a gateway
//! and reads back what the cloud stored. Two plain HTTP requests against a base URL the
//! implementer wires up behind a test flag; the devcloud serves them on its admin API.

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use tether::cloud::client::error_chain;

pub struct Fixture {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// One stored result as the fixture reports it.
pub struct Stored {
    pub command_id: String,
    pub status: String,
}

impl Fixture {
    pub fn new(
        base: &str,
        ca_pem: Option<&[u8]>,
        token: Option<String>,
    ) -> Result<Fixture, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5));
        if let Some(pem) = ca_pem {
            let roots =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| format!("--ca: {e}"))?;
            builder = builder.tls_certs_only(roots);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the fixture client: {e}"))?;
        Ok(Fixture {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token,
        })
    }

    fn url(&self, gateway: &str, what: &str) -> String {
        format!("{}/gateways/{gateway}/{what}", self.base)
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.header(AUTHORIZATION, format!("Bearer {t}")),
            None => req,
        }
    }

    /// Queues `command` for `gateway`, as the cloud's application would.
    pub async fn enqueue(&self, gateway: &str, command: &Value) -> Result<(), String> {
        let url = self.url(gateway, "commands");
        let response = self
            .authorized(
                self.http
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(command.to_string()),
            )
            .send()
            .await
            .map_err(|e| format!("fixture: POST {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!(
                "fixture: POST {url} answered {status}: {}",
                text.chars().take(160).collect::<String>()
            ));
        }
        Ok(())
    }

    /// Every result the cloud stored for `gateway`, in the order stored.
    pub async fn results(&self, gateway: &str) -> Result<Vec<Stored>, String> {
        let url = self.url(gateway, "results");
        let response = self
            .authorized(self.http.get(&url))
            .send()
            .await
            .map_err(|e| format!("fixture: GET {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("fixture: GET {url} answered {status}"));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("fixture: GET {url}: {}", error_chain(&e)))?;
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("fixture: GET {url}: not JSON: {e}"))?;
        let Some(entries) = body.get("results").and_then(Value::as_array) else {
            return Err(format!(
                "fixture: GET {url}: expected {{\"results\": [...]}}"
            ));
        };
        entries
            .iter()
            .map(|entry| {
                // A Result, or the devcloud's {"result": Result, ...}.
                let result = match entry.get("result") {
                    Some(inner) if inner.is_object() => inner,
                    _ => entry,
                };
                let field = |name: &str| result.get(name).and_then(Value::as_str);
                match (field("command_id"), field("status")) {
                    (Some(id), Some(status)) => Ok(Stored {
                        command_id: id.to_owned(),
                        status: status.to_owned(),
                    }),
                    _ => Err(format!(
                        "fixture: GET {url}: an entry without command_id and status: {}",
                        excerpt(result)
                    )),
                }
            })
            .collect()
    }
}

fn excerpt(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 160 {
        format!("{}...", text.chars().take(160).collect::<String>())
    } else {
        text
    }
}

//! netctl's HTTP client on the agent's unix socket: the Docker Engine API at the version the
//! `api` crate speaks (`/v1.41/...`), as the docker CLI calls it.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// What the daemon answered.
pub struct Reply {
    pub body: serde_json::Value,
    /// Set when the answer came from a replica that may be stale.
    pub stale: Option<String>,
}

impl Reply {
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.body.clone())
            .map_err(|e| anyhow!("unexpected answer from the daemon: {e}"))
    }
}

pub struct Client {
    host: PathBuf,
}

impl Client {
    pub fn new(host: &Path) -> Client {
        Client {
            host: host.to_path_buf(),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Reply> {
        self.call("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> Result<Reply> {
        self.call("POST", path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Reply> {
        self.call("DELETE", path, None).await
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Reply> {
        let (bytes, stale) = self.call_bytes(method, path, body).await?;
        let body: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        Ok(Reply { body, stale })
    }

    /// A GET whose answer is not JSON (a log stream): its bytes as they came.
    pub async fn get_bytes(&self, path: &str) -> Result<Bytes> {
        Ok(self.call_bytes("GET", path, None).await?.0)
    }

    /// The request; a successful answer's body and stale header, or docker's error message.
    async fn call_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(Bytes, Option<String>)> {
        let unreachable = || {
            anyhow!(
                "Cannot connect to the netagent daemon at unix://{}. Is the netagent daemon running?",
                self.host.display()
            )
        };
        let stream = tokio::net::UnixStream::connect(&self.host)
            .await
            .map_err(|_| unreachable())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| unreachable())?;
        tokio::spawn(conn);
        let body = match body {
            Some(v) => Full::new(Bytes::from(serde_json::to_vec(&v)?)),
            None => Full::new(Bytes::new()),
        };
        let req = Request::builder()
            .method(method)
            .uri(format!("http://netagent/v{}{path}", ::api::API_VERSION))
            .header("host", "netagent")
            .header("content-type", "application/json")
            .body(body)?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| anyhow!("the daemon closed the connection: {e}"))?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let stale = header(::api::system::HEADER_STALE);
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("cannot read the daemon's answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            let msg = body
                .get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{status}: {body}"));
            return Err(anyhow!("Error response from daemon: {msg}"));
        }
        Ok((bytes, stale))
    }
}

/// Whether the daemon refused an update because the object moved on since it was read (a retry
/// reads it again).
pub fn out_of_sequence(e: &anyhow::Error) -> bool {
    e.to_string().contains("update out of sequence")
}

/// `?filters=` for docker's filters (empty when there are none).
pub fn filters_query(f: &::api::Filters) -> String {
    if f.is_empty() {
        String::new()
    } else {
        format!("filters={}", esc(&f.to_json()))
    }
}

/// Parses `--filter key=value` flags as docker's CLI does.
pub fn parse_filters(flags: &[String]) -> Result<::api::Filters> {
    let mut f = ::api::Filters::new();
    for flag in flags {
        let Some((k, v)) = flag.split_once('=') else {
            return Err(anyhow!(
                "bad format of filter (expected name=value): {flag}"
            ));
        };
        f.add(k.trim(), v);
    }
    Ok(f)
}

/// A reference (name, id, prefix) escaped for a URL path segment or query value.
pub fn esc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

//! Reading a sluice-proxy's admin listener: JSON documents and Prometheus metrics.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;

/// GETs `path` from the admin listener on `port` and decodes its JSON.
pub(super) fn admin_get(port: u16, path: &str) -> anyhow::Result<Value> {
    json_body(&admin_response(port, path)?).with_context(|| format!("GET 127.0.0.1:{port}{path}"))
}

/// GETs `path` from the admin listener on `port`: the whole response. HTTP/1.0, so the response
/// ends where the connection does and needs no framing of its own.
pub(super) fn admin_response(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to the admin listener on {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The JSON body of an HTTP response, which must be a 200.
pub(super) fn json_body(response: &str) -> anyhow::Result<Value> {
    serde_json::from_str(ok_body(response)?).context("the response body is not JSON")
}

/// The body of an HTTP response, which must be a 200.
pub(super) fn ok_body(response: &str) -> anyhow::Result<&str> {
    let (head, body) = response.split_once("\r\n\r\n").context("the response has no end of head")?;
    let status = head.lines().next().unwrap_or("");
    ensure!(status.split_whitespace().nth(1) == Some("200"), "answered {status:?}: {body}");
    Ok(body)
}

/// The value of `sample` (a metric name with its labels, as exposed: `name{k="v"}`) in a
/// Prometheus text exposition.
pub(super) fn prometheus_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bodies_and_samples() {
        let metrics = "# TYPE sluice_access_log_lines_total counter\n\
            sluice_access_log_lines_total{result=\"written\"} 123456\n\
            sluice_access_log_lines_total{result=\"dropped\"} 7\n";
        let sample = |r: &str| format!("sluice_access_log_lines_total{{result=\"{r}\"}}");
        assert_eq!(prometheus_value(metrics, &sample("written")), Some(123456.0));
        assert_eq!(prometheus_value(metrics, &sample("dropped")), Some(7.0));
        assert_eq!(prometheus_value(metrics, &sample("other")), None);
        assert_eq!(prometheus_value(metrics, "sluice_access_log_lines_total"), None);

        let response = format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n{metrics}");
        assert_eq!(ok_body(&response).unwrap(), metrics);
        assert!(json_body("HTTP/1.1 404 Not Found\r\n\r\n{}").is_err());
        assert!(json_body("HTTP/1.1 200 OK\r\n").is_err());
    }
}

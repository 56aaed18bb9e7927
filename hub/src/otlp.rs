//! An OTLP trace exporter (OTLP/HTTP with JSON bodies), on when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` names a collector (`http://host:4318`): every closed
//! span of the process goes to `<endpoint>/v1/traces` in batches (at most 512 spans or
//! one second apart), from a thread of its own, never the request path. A span whose
//! fields carry a `request_id` gets its trace id from it (the first 16 bytes of its
//! SHA-256), and its children inherit it, so the hub's and the spoke's spans of one
//! request form one trace without any header between them. The collector unreachable or
//! slow: the batch is dropped and counted, and serving goes on; at most 8,192 spans wait.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

const MAX_WAITING: usize = 8192;
const MAX_BATCH: usize = 512;
const EVERY: Duration = Duration::from_secs(1);

/// Spans dropped because the queue was full or the collector failed.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// A finished span, ready to send.
struct Finished {
    span: Open,
    name: &'static str,
    end: u64,
}

/// What the layer keeps on an open span.
struct Open {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    start: u64,
    attributes: Vec<(String, String)>,
}

/// The tracing layer; `None` when no endpoint is configured.
pub struct OtlpLayer {
    queue: SyncSender<Finished>,
}

impl OtlpLayer {
    /// From `OTEL_EXPORTER_OTLP_ENDPOINT` (and `OTEL_SERVICE_NAME`, default `nave`);
    /// `node` names this process (`service.instance.id`). An endpoint that is not
    /// `http://host:port` is reported and ignored.
    pub fn from_env(node: &str) -> Option<Self> {
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty())?;
        let Some(target) = Target::parse(&endpoint) else {
            eprintln!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: expected http://host:port (OTLP over HTTP with JSON); traces are not exported");
            return None;
        };
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "nave".into());
        let (queue, waiting) = sync_channel(MAX_WAITING);
        let node = node.to_string();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export(&target, &service, &node, &waiting))
            .ok()?;
        Some(Self { queue })
    }
}

use nave_consensus::clock::now_ns;
use nave_consensus::ids::random_bytes;

/// A trace id from a request id: the same on every node that sees the request.
pub fn trace_id_of(request_id: &str) -> [u8; 16] {
    let d = Sha256::digest(request_id.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_string(), value.to_string()));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_string(), format!("{value:?}")));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for OtlpLayer {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut attributes = Vec::new();
        attrs.record(&mut Fields(&mut attributes));
        let parent = span.parent().and_then(|p| p.extensions().get::<Open>().map(|o| (o.trace_id, o.span_id)));
        let trace_id = match attributes.iter().find(|(k, _)| k == "request_id") {
            Some((_, rid)) => trace_id_of(rid),
            None => parent.map_or_else(random_bytes, |p| p.0),
        };
        let open = Open { trace_id, span_id: random_bytes(), parent: parent.map(|p| p.1), start: now_ns(), attributes };
        span.extensions_mut().insert(open);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(open) = span.extensions_mut().get_mut::<Open>() {
                values.record(&mut Fields(&mut open.attributes));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else { return };
        let done = Finished { span: open, name: span.name(), end: now_ns() };
        if self.queue.try_send(done).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the collector listens.
struct Target {
    host: String,
    addr: SocketAddr,
    path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Option<Self> {
        let rest = endpoint.strip_prefix("http://")?;
        let (host, base) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        let addr = host.to_socket_addrs().ok()?.next()?;
        let path = format!("/{}/v1/traces", base.trim_end_matches('/')).replace("//", "/");
        Some(Self { host: host.to_string(), addr, path })
    }
}

fn export(target: &Target, service: &str, node: &str, waiting: &Receiver<Finished>) {
    let mut batch = Vec::new();
    let mut last = Instant::now();
    loop {
        match waiting.recv_timeout(EVERY) {
            Ok(span) => batch.push(span),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                flush(target, service, node, &mut batch);
                return;
            }
        }
        if batch.len() >= MAX_BATCH || (!batch.is_empty() && last.elapsed() >= EVERY) {
            flush(target, service, node, &mut batch);
            last = Instant::now();
        }
    }
}

fn flush(target: &Target, service: &str, node: &str, batch: &mut Vec<Finished>) {
    if batch.is_empty() {
        return;
    }
    let body = encode(service, node, batch).to_string();
    if let Err(e) = post(target, &body) {
        DROPPED.fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Not through tracing: that would make spans about failing to send spans.
        eprintln!("OTLP export to {} failed ({e}); {} spans dropped", target.addr, batch.len());
    }
    batch.clear();
}

/// The OTLP JSON form of `spans` (ids in hex, times as decimal strings).
fn encode(service: &str, node: &str, spans: &[Finished]) -> Value {
    let kv = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
    let spans: Vec<Value> = spans
        .iter()
        .map(|f| {
            let s = &f.span;
            let mut v = json!({
                "traceId": hex::encode(s.trace_id),
                "spanId": hex::encode(s.span_id),
                "name": f.name,
                "kind": 1,
                "startTimeUnixNano": s.start.to_string(),
                "endTimeUnixNano": f.end.to_string(),
                "attributes": s.attributes.iter().map(|(k, val)| kv(k, val)).collect::<Vec<_>>(),
            });
            if let Some(p) = s.parent {
                v["parentSpanId"] = json!(hex::encode(p));
            }
            v
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [kv("service.name", service), kv("service.instance.id", node)]},
        "scopeSpans": [{"scope": {"name": "nave", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]})
}

/// One HTTP/1.1 POST with a short deadline; the collector must answer 2xx.
fn post(target: &Target, body: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&target.addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.path,
        target.host,
        body.len()
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    if head.starts_with(b"HTTP/1.1 2") || head.starts_with(b"HTTP/1.0 2") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("the collector answered {:?}", String::from_utf8_lossy(&head))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_ids() {
        let t = Target::parse("http://127.0.0.1:4318").expect("plain endpoint");
        assert_eq!(t.path, "/v1/traces");
        let t = Target::parse("http://127.0.0.1:4318/otel/").expect("with a base path");
        assert_eq!(t.path, "/otel/v1/traces");
        assert!(Target::parse("https://127.0.0.1:4318").is_none(), "TLS to the collector is not supported");
        assert_eq!(trace_id_of("abc"), trace_id_of("abc"));
        assert_ne!(trace_id_of("abc"), trace_id_of("abd"));
        let open = Open {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            start: 5,
            attributes: vec![("request_id".into(), "r1".into())],
        };
        let spans = [Finished { span: open, name: "request", end: 9 }];
        let v = encode("nave", "h1", &spans);
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "01".repeat(16));
        assert_eq!(s["parentSpanId"], "03".repeat(8));
        assert_eq!(s["endTimeUnixNano"], "9");
        assert_eq!(s["attributes"][0]["value"]["stringValue"], "r1");
    }
}

//! Log lines on stderr for both binaries: text for people, or one JSON object per line
//! (`--log-format json`) for collectors. The JSON fields are tracing-subscriber's and stable:
//! `timestamp` (RFC 3339, UTC), `level`, `target`, `fields` (`message` and the event's own fields),
//! and, inside a span, `span` (the innermost: its `name` and fields) and `spans` (all of them,
//! outermost first). Lines about a version carry `fleet` and `version` (as fields or from their
//! span); lines about a request carry its `request_id`.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The format of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: `text` or `json`")),
        }
    }
}

/// Installs the process's subscriber: lines go to stderr, filtered by `RUST_LOG` (default
/// `info`); `extra` (an OpenTelemetry layer, say) brings its own filter, so `RUST_LOG=warn`
/// quiets the log without turning traces off. Without `extra` the filter is global, so callsites
/// it disables cost nothing on the request path.
pub fn init<L>(format: LogFormat, extra: Option<L>)
where
    L: Layer<Registry> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match extra {
        None => tracing_subscriber::registry().with(lines(format)).with(filter).init(),
        Some(extra) => {
            tracing_subscriber::registry().with(extra).with(lines(format).with_filter(filter)).init()
        }
    }
}

fn lines<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    }
}

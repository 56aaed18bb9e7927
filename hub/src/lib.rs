//! # nave-hub
//!
//! The hub: the HTTP API apps talk to, authentication, admission, routing to spokes,
//! retries and circuit breaking. (The `nave` command that starts it is the root package,
//! `src/`.)
//!
//! # Layout
//! - [`node`]: one hub process: [`run`] starts the consensus node, the spoke set, the QUIC
//!   listener and the HTTP server, and drains them on shutdown.
//! - [`hub`]: [`Hub`], the state every handler shares, and its request slots.
//! - [`api`]: the route table and the endpoints, one file per surface:
//!   [`api::openai`], [`api::ollama`], [`api::responses`], [`api::ops`] (health,
//!   readiness, metrics); [`api::types`] holds every request and response body.
//! - [`auth`]: who is calling (the bearer key); [`admission`]: the Raft write that checks
//!   a key's limits and reserves its tokens, and the settlement when the request ends.
//! - [`admin`]: the admin API (keys, tokens, spokes, hubs, status); [`train`]: fine-tuning
//!   jobs; [`join`]: spokes joining with a token (`nave-join/1` on the QUIC port);
//!   [`certs`]: node certificates renewed before they expire (`nave-renew/1`) and rotated
//!   on request.
//! - [`route`]: sending a request to a spoke, retrying before the first token.
//! - [`policy`]: routing policies behind one trait (least-loaded, session affinity,
//!   cost-aware); [`circuit`]: the per-spoke circuit breaker (pure).
//! - [`spokes`]: connections, heartbeats and circuits of every spoke.
//! - [`serve`]: the HTTP server (body limits, header timeout, graceful drain).
//! - [`metrics`], [`otlp`], [`error`]: Prometheus text; spans to an OTLP collector;
//!   OpenAI-shaped errors. [`history`]: the last hour of the hub's rates, sampled from
//!   its metrics, for the console's charts.
//! - [`console`]: the web console at `/ui` (HTML, CSS and JavaScript from `hub/ui/`,
//!   compiled into the binary), a client of the JSON API above.
//!
//! A request: [`api::router`] gives it a request id and a span, [`auth`] names the caller,
//! the handler ([`api::openai`] or [`api::ollama`]) parses the body, then
//! [`api::generate`] takes a slot ([`Hub::take_slot`]), writes the admission
//! ([`Hub::write_admission`]) and calls [`route::dispatch`], which picks a spoke with the
//! model's policy and opens a QUIC stream; the spoke's events go back as SSE, NDJSON or
//! JSON, and dropping the [`admission::Admission`] settles the tokens used.

pub mod admin;
pub mod admission;
pub mod api;
pub mod auth;
pub mod certs;
pub mod circuit;
pub mod console;
pub mod error;
pub mod history;
pub mod hub;
pub mod join;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod policy;
pub mod route;
pub mod serve;
pub mod spokes;
pub mod train;

pub use admission::Admission;
pub use api::router;
pub use auth::{ensure_admin_key, Caller};
pub use error::ApiError;
pub use hub::{raft_id, Hub, Slot};
pub use node::run;

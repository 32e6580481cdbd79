//! Harness for tidewatch's end-to-end tests: starts the local stack through
//! the project's own `deploy/local/stack.sh`, runs the real binaries as
//! processes, and stops everything it started when dropped. By concern:
//!
//! - [`process`]: workspace paths, the built binaries, [`Proc`], waits;
//! - [`stack`]: [`Stack`] (ClickHouse and the broker) and [`Shore`] (a
//!   stack with schema, PKI, ingest and a sink, from [`ShoreBuilder`]);
//! - [`pki`]: the fleet PKI through `tidewatch-collector pki`;
//! - [`sensor`]: [`SensorRun`] (builder for `tidewatch-sensor run`) and
//!   [`read_flows`];
//! - [`totals`]: flow totals expected against stored;
//! - [`http`]: a minimal HTTP client;
//! - [`fleet`], [`synth`], [`pcapgen`]: generated traffic; [`grpc`]: an
//!   independent upload client; [`linkemu`]: the link emulator; [`syslog`]:
//!   a real syslog receiver (rsyslogd).
//!
//! The binaries must be built first (`cargo build --workspace --bins`); the
//! README's test command does that.

pub mod chdb;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod linkemu;
pub mod pcapgen;
pub mod pki;
pub mod process;
pub mod sensor;
pub mod stack;
pub mod synth;
pub mod syslog;
pub mod totals;

pub use http::{http_get, http_post, metric};
pub use pki::{Pki, SensorCert};
pub use process::{
    bin, chromium, free_port, number_arg, pcaps, root, run_ok, status_kib, wait_until, Proc,
};
pub use sensor::{
    batches_acked, deliver_buffered, paced_capture, read_flows, read_flows_with, SensorRun,
    PACED_RUN,
};
pub use stack::{IngestTls, Shore, ShoreBuilder, Stack};
pub use totals::{ch_totals, expect_flows, totals, Totals};

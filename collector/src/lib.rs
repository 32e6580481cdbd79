//! tidewatch collector components.
//!
//! - [`ingest`]: mTLS gRPC endpoint -> Kafka (ack after delivery).
//! - [`sink`]: Kafka -> ClickHouse (commit after insert), dead-letter topic.
//! - [`schema`]: versioned, server-version-aware ClickHouse migrations.
//! - [`pki`] and [`identity`]: fleet certificates and how identity is read;
//!   [`signer`]: the one process holding the CA key, renewing for ingest.
//! - [`envelope`]: ingest's signature on each Kafka record, checked by the sink.
//! - [`query`]: analyst queries; [`intel`]: threat-intel feeds and the retro-hunt.
//! - [`detect`]: streaming detection into [`alerts`] (stored once, handled for the record);
//!   [`deliver`]: alerts into a SOC's syslog receiver.

pub mod alerts;
pub mod clickhouse_args;
pub mod deadletter;
pub mod deliver;
pub mod detect;
pub mod envelope;
pub mod identity;
pub mod ingest;
pub mod intel;
pub mod kafka;
pub mod maintenance;
pub mod metrics;
pub mod migrate;
pub mod pki;
pub mod query;
pub mod registry;
pub mod report;
pub mod schema;
pub mod signer;
pub mod sink;

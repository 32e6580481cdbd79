//! tidewatch collector components.
//!
//! - [`ingest`]: mTLS gRPC endpoint -> Kafka (ack after delivery).
//! - [`sink`]: Kafka -> ClickHouse (commit after insert), dead-letter topic.
//! - [`schema`]: versioned, server-version-aware ClickHouse migrations.
//! - [`pki`] and [`identity`]: fleet certificates and how identity is read.
//! - [`query`]: analyst queries.

pub mod clickhouse_args;
pub mod deadletter;
pub mod identity;
pub mod ingest;
pub mod kafka;
pub mod maintenance;
pub mod metrics;
pub mod migrate;
pub mod pki;
pub mod query;
pub mod registry;
pub mod schema;
pub mod sink;

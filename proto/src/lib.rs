//! Generated types of the tidewatch wire protocol, package `tidewatch.v1`.
//!
//! The `.proto` sources live next to this crate in `proto/tidewatch/v1/`.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Package `tidewatch.v1`.
pub mod v1 {
    tonic::include_proto!("tidewatch.v1");
}

pub mod codec;
pub mod columns;
pub mod limits;
pub mod link;
pub mod metrics;
pub mod state_file;
pub mod util;

/// Kafka topic carrying `IngestedBatch` records. The version in the name
/// follows the protobuf package: a breaking schema change gets a new topic.
pub const BATCHES_TOPIC: &str = "tidewatch.batches.v1";
/// Kafka topic for records the sink could not decode or store.
pub const DEADLETTER_TOPIC: &str = "tidewatch.deadletter.v1";

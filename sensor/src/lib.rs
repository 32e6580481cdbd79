//! tidewatch sensor: capture -> decode -> flow table -> batcher -> uplink.
//!
//! - [`capture`]: packet sources (capture files, live capture).
//! - [`decode`]: link/IP/transport header decoding.
//! - [`flow`]: the bidirectional flow table and its timeouts.
//! - [`batch`]: batches with persistent, strictly increasing sequence numbers.
//! - [`forward`]: the forwarding half: disk buffer → uplink → acks, within the budget.
//! - [`uplink`]: mTLS gRPC upload with acknowledgements and resend.
//! - [`identity`]: the sensor's key and certificate: enrollment, renewal.
//! - [`buffer`]: the disk buffer batches wait in until the collector acks them,
//!   one part per upload priority class.
//! - [`budget`]: the daily byte budget of the uplink.
//! - [`metrics`]: Prometheus metrics of a running sensor.
//! - [`output`]: the JSON form of records for local inspection.

pub mod assets;
pub mod batch;
pub mod budget;
pub mod buffer;
pub mod capture;
pub mod decode;
pub mod flow;
pub mod forward;
pub mod identity;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod prefault;
pub mod protocols;
pub mod ratelimit;
pub mod slab;
pub mod uplink;

//! A direct gRPC client for tests that need to send exactly what they want
//! (bad payloads, foreign certificates, identity claims), bypassing the sensor.

use std::path::Path;
use std::time::Duration;

use prost::Message;
use tidewatch_proto::v1::uplink_client::UplinkClient;
use tidewatch_proto::v1::{
    AckStatus, Batch, DirectionCounters, Encoding, FlowRecord, UploadAck, UploadRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A plausible flow record.
pub fn flow(i: u32) -> FlowRecord {
    FlowRecord {
        first_seen_us: 1_700_000_000_000_000 + i as i64 * 1000,
        last_seen_us: 1_700_000_000_500_000 + i as i64 * 1000,
        client_ip: vec![10, 1, 0, 5],
        server_ip: vec![10, 1, 0, 10],
        client_port: 40000 + (i % 20000),
        server_port: 502,
        ip_protocol: 6,
        c2s: Some(DirectionCounters {
            packets: 4,
            ip_bytes: 300,
            payload_bytes: 100,
            tcp_flags: 0x1b,
        }),
        s2c: Some(DirectionCounters {
            packets: 3,
            ip_bytes: 200,
            payload_bytes: 50,
            tcp_flags: 0x1b,
        }),
        app_protocol: String::new(),
        vlan: 0,
        end: 3,
        operations: Vec::new(),
        indicators: Vec::new(),
    }
}

/// A request carrying `flows` flows with the given seq and identity claim.
pub fn request(seq: u64, flows: u32, claim: &str) -> UploadRequest {
    encoded(Batch {
        seq,
        sensor_id: claim.to_string(),
        flows: (0..flows).map(flow).collect(),
        ..Batch::default()
    })
}

/// A request carrying exactly `flows` (no identity claim).
pub fn request_with(seq: u64, flows: Vec<FlowRecord>) -> UploadRequest {
    encoded(Batch {
        seq,
        flows,
        ..Batch::default()
    })
}

/// `batch` as a plain-protobuf request under its own seq.
fn encoded(batch: Batch) -> UploadRequest {
    UploadRequest {
        seq: batch.seq,
        encoding: Encoding::Protobuf as i32,
        payload: batch.encode_to_vec(),
    }
}

/// What `n` flows made by [`flow`] add up to (7 packets, 500 bytes each).
pub fn flow_totals(n: u64) -> crate::Totals {
    crate::Totals {
        flows: n,
        packets: n * 7,
        bytes: n * 500,
    }
}

/// Client identity: `None` connects without a client certificate.
#[derive(Clone, Copy)]
pub struct ClientCert<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

impl<'a> ClientCert<'a> {
    /// The identity of a sensor certificate the harness issued.
    pub fn of(c: &'a crate::SensorCert) -> Self {
        ClientCert {
            cert: &c.cert,
            key: &c.key,
        }
    }
}

/// An mTLS channel to ingest on 127.0.0.1 (server name "localhost").
pub async fn channel(
    port: u16,
    ca: &Path,
    client: Option<ClientCert<'_>>,
) -> Result<Channel, String> {
    let ca = std::fs::read(ca).map_err(|e| e.to_string())?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(c) = client {
        let cert = std::fs::read(c.cert).map_err(|e| e.to_string())?;
        let key = std::fs::read(c.key).map_err(|e| e.to_string())?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))
}

/// A one-thread runtime for a blocking helper.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens one upload stream, sends `reqs`, and collects the acks until the
/// server ends the stream. Any transport or gRPC error is returned as text.
pub fn upload(
    port: u16,
    ca: &Path,
    client: Option<ClientCert<'_>>,
    reqs: Vec<UploadRequest>,
) -> Result<Vec<UploadAck>, String> {
    runtime().block_on(async move {
        let mut client = UplinkClient::new(channel(port, ca, client).await?);
        let n = reqs.len();
        let stream = tokio_stream::iter(reqs);
        let resp = tokio::time::timeout(Duration::from_secs(30), client.upload(stream))
            .await
            .map_err(|_| "timeout opening stream".to_string())?
            .map_err(|s| format!("status: {s}"))?;
        let mut acks = Vec::new();
        let mut inbound = resp.into_inner();
        loop {
            match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
                Err(_) => return Err(format!("timeout after {} of {n} acks", acks.len())),
                Ok(Ok(Some(a))) => acks.push(a),
                Ok(Ok(None)) => return Ok(acks),
                Ok(Err(s)) => return Err(format!("status: {s} (after {} acks)", acks.len())),
            }
        }
    })
}

/// Opens one upload stream and sends `reqs` one at a time, each linked to
/// the stream's link table as the sensor links them (entries kept by the
/// batches accepted before it), waiting for its ack; returns the acks and
/// how many batches went linked. Fails if ingest offers no link table.
pub fn upload_linked(
    port: u16,
    ca: &Path,
    client: Option<ClientCert<'_>>,
    reqs: Vec<UploadRequest>,
) -> Result<(Vec<UploadAck>, usize), String> {
    use tidewatch_proto::codec;
    use tidewatch_proto::link::{self, LinkEncoder};
    runtime().block_on(async move {
        let mut client = UplinkClient::new(channel(port, ca, client).await?);
        let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(1);
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            client.upload(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .map_err(|_| "timeout opening stream".to_string())?
        .map_err(|s| format!("status: {s}"))?;
        let bytes = resp
            .metadata()
            .get(link::HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .ok_or("ingest offers no link table")?;
        let mut link = LinkEncoder::new(bytes);
        let mut inbound = resp.into_inner();
        let (mut acks, mut linked) = (Vec::new(), 0);
        for r in reqs {
            let (req, kept) = match codec::encode_linked(&r, &mut link) {
                Some((l, kept)) => {
                    linked += 1;
                    (l, Some(kept))
                }
                None => (r, None),
            };
            tx.send(req)
                .await
                .map_err(|_| "stream closed".to_string())?;
            let ack = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
                Ok(Ok(Some(a))) => a,
                other => return Err(format!("after {} acks: {other:?}", acks.len())),
            };
            if let (true, Some(kept)) = (ack.status == AckStatus::Accepted as i32, kept) {
                link.accepted(&kept);
            }
            acks.push(ack);
        }
        Ok((acks, linked))
    })
}

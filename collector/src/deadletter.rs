//! `tidewatch-collector deadletter list|show|replay`: the dead-letter topic
//! read back. `list` prints one line per letter, `show` one letter whole
//! (its records as JSON), `replay` writes the batches among them back to the
//! batches topic once their cause is fixed (a sink that could not decode
//! them upgraded, a limit raised). A replayed batch goes through the sink's
//! dedup like any other: one the ledger holds is skipped, so replaying
//! twice, or a batch stored meanwhile, counts nothing twice.
//!
//! Letters of one record (a flow with a bad address, a record whose clock
//! was impossible, a row ClickHouse refused) are listed and shown, not
//! replayed: the rest of their batch is stored, and the record itself is
//! what was wrong.

use std::time::Duration;

use anyhow::{bail, Context};
use prost::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tidewatch_proto::codec::{self, DecodeLimits};
use tidewatch_proto::util::ip_text;
use tidewatch_proto::v1::{AssetObservation, DeadLetter, FlowRecord, IngestedBatch, SensorStatus};
use tracing::info;

use crate::kafka::KafkaArgs;

#[derive(Debug, clap::Args)]
pub struct DeadLetterArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// The dead-letter topic.
    #[arg(long, env = "TIDEWATCH_DEADLETTER_TOPIC", default_value = tidewatch_proto::DEADLETTER_TOPIC)]
    pub deadletter_topic: String,
    #[command(subcommand)]
    pub cmd: DeadLetterCmd,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCmd {
    /// One line per letter: its place (partition/offset), kind, sensor,
    /// batch seq, reason.
    List,
    /// One letter whole: where it came from, why, and its records as JSON.
    Show {
        /// The letter, as PARTITION/OFFSET (from `list`).
        at: String,
    },
    /// Write the batches among the letters back to the batches topic (the
    /// sink's dedup skips any it already stored).
    Replay {
        /// Only this letter, as PARTITION/OFFSET (default: every batch letter).
        at: Option<String>,
        /// Print what would be replayed, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A letter and where it sits in the dead-letter topic.
struct Letter {
    partition: i32,
    offset: i64,
    letter: DeadLetter,
}

pub async fn run(args: DeadLetterArgs) -> anyhow::Result<()> {
    let letters = read_all(&args.kafka, &args.deadletter_topic)?;
    match args.cmd {
        DeadLetterCmd::List => {
            for l in &letters {
                let d = &l.letter;
                println!(
                    "{}/{}\t{}\t{}\t{}\t{}",
                    l.partition,
                    l.offset,
                    kind(d),
                    if d.sensor_id.is_empty() {
                        "-"
                    } else {
                        &d.sensor_id
                    },
                    d.seq,
                    d.reason
                );
            }
            println!("{} letter(s) in {}", letters.len(), args.deadletter_topic);
        }
        DeadLetterCmd::Show { at } => {
            let l = find(&letters, &at)?;
            println!("{}", serde_json::to_string_pretty(&show(l))?);
        }
        DeadLetterCmd::Replay { at, dry_run } => {
            let chosen: Vec<&Letter> = match &at {
                Some(at) => vec![find(&letters, at)?],
                None => letters.iter().collect(),
            };
            let (batches, others): (Vec<&Letter>, Vec<&Letter>) =
                chosen.into_iter().partition(|l| kind(&l.letter) == "batch");
            if at.is_some() && batches.is_empty() {
                bail!("letter {} holds one record, not a batch: it cannot be replayed (see `deadletter show`)", at.unwrap_or_default());
            }
            let producer = args.kafka.producer(30_000, 64)?;
            let mut replayed = 0u64;
            for l in &batches {
                let d = &l.letter;
                if dry_run {
                    println!(
                        "would replay {}/{} ({} bytes) to {}",
                        l.partition,
                        l.offset,
                        d.value.len(),
                        args.kafka.kafka_topic
                    );
                    continue;
                }
                let mut record = FutureRecord::to(&args.kafka.kafka_topic)
                    .key(&d.key)
                    .payload(&d.value);
                if !d.signature.is_empty() {
                    record = record.headers(OwnedHeaders::new().insert(Header {
                        key: crate::envelope::SIGNATURE_HEADER,
                        value: Some(d.signature.as_slice()),
                    }));
                }
                producer
                    .send(record, Timeout::After(Duration::from_secs(30)))
                    .await
                    .map_err(|(e, _)| {
                        anyhow::anyhow!("cannot write to {}: {e}", args.kafka.kafka_topic)
                    })?;
                replayed += 1;
                info!(partition = l.partition, offset = l.offset, sensor = %d.sensor_id, seq = d.seq, "dead letter replayed");
            }
            println!(
                "replayed {replayed} batch letter(s) to {}; {} other letter(s) (one record each, or not a letter) are not replayable",
                args.kafka.kafka_topic,
                others.len()
            );
        }
    }
    Ok(())
}

/// Every letter in `topic`, from the start of each partition to its end
/// now (nothing is committed: reading changes nothing).
fn read_all(kafka: &KafkaArgs, topic: &str) -> anyhow::Result<Vec<Letter>> {
    let consumer = kafka.reader()?;
    let timeout = Duration::from_secs(30);
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let Some(t) = md.topics().first().filter(|t| !t.partitions().is_empty()) else {
        bail!("topic {topic} not found");
    };
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for p in t.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(low))?;
            ends.push((p.id(), high));
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    let total: i64 = ends.len() as i64;
    consumer.assign(&tpl)?;
    let mut done = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while done < total {
        if std::time::Instant::now() > deadline {
            bail!("timed out reading {topic}");
        }
        let Some(m) = consumer.poll(Duration::from_secs(1)) else {
            continue;
        };
        let m = m.with_context(|| format!("reading {topic}"))?;
        // Something else written to the topic is listed, not fatal.
        let letter =
            DeadLetter::decode(m.payload().unwrap_or_default()).unwrap_or_else(|e| DeadLetter {
                kind: "not-a-letter".into(),
                reason: format!("not a tidewatch DeadLetter: {e}"),
                value: m.payload().unwrap_or_default().to_vec(),
                ..DeadLetter::default()
            });
        out.push(Letter {
            partition: m.partition(),
            offset: m.offset(),
            letter,
        });
        if ends
            .iter()
            .any(|(p, h)| *p == m.partition() && m.offset() + 1 == *h)
        {
            done += 1;
        }
    }
    out.sort_by_key(|l| (l.partition, l.offset));
    Ok(out)
}

/// What a letter holds ("batch" for letters written before kinds were).
fn kind(d: &DeadLetter) -> &str {
    if d.kind.is_empty() {
        "batch"
    } else {
        &d.kind
    }
}

fn find<'a>(letters: &'a [Letter], at: &str) -> anyhow::Result<&'a Letter> {
    let (p, o) = at
        .split_once('/')
        .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)))
        .with_context(|| {
            format!("{at:?}: give a letter as PARTITION/OFFSET, as `deadletter list` prints it")
        })?;
    letters
        .iter()
        .find(|l| l.partition == p && l.offset == o)
        .with_context(|| format!("no letter at {at}"))
}

/// A letter as JSON, its value decoded as far as it can be.
fn show(l: &Letter) -> Value {
    let d = &l.letter;
    let value = match kind(d) {
        "batch" => match IngestedBatch::decode(&d.value[..]) {
            Ok(env) => {
                let limits = DecodeLimits {
                    max_decoded_bytes: 64 * 1024 * 1024,
                    max_records: usize::MAX,
                };
                let batch = match codec::decode(env.encoding, &env.payload, limits) {
                    Ok(b) => json!({
                        "flows": b.flows.iter().map(flow_json).collect::<Vec<_>>(),
                        "assets": b.assets.iter().map(asset_json).collect::<Vec<_>>(),
                        "status": b.status.iter().map(status_json).collect::<Vec<_>>(),
                    }),
                    Err(e) => {
                        json!({ "undecodable": e.to_string(), "payload_bytes": env.payload.len() })
                    }
                };
                json!({
                    "sensor_id": env.sensor_id, "vessel": env.vessel, "seq": env.seq,
                    "received_us": env.received_us, "ingest_node": env.ingest_node, "batch": batch,
                })
            }
            Err(e) => json!({ "undecodable": e.to_string(), "bytes": d.value.len() }),
        },
        "flow" => FlowRecord::decode(&d.value[..]).map_or_else(
            |e| json!({ "undecodable": e.to_string() }),
            |f| flow_json(&f),
        ),
        "asset" => AssetObservation::decode(&d.value[..]).map_or_else(
            |e| json!({ "undecodable": e.to_string() }),
            |a| asset_json(&a),
        ),
        "status" => SensorStatus::decode(&d.value[..]).map_or_else(
            |e| json!({ "undecodable": e.to_string() }),
            |s| status_json(&s),
        ),
        _ => serde_json::from_slice(&d.value).unwrap_or_else(|_| json!({ "bytes": d.value.len() })),
    };
    json!({
        "at": format!("{}/{}", l.partition, l.offset),
        "kind": kind(d),
        "reason": d.reason,
        "from": { "topic": d.topic, "partition": d.partition, "offset": d.offset },
        "sensor_id": d.sensor_id,
        "seq": d.seq,
        "failed_us": d.failed_us,
        "value": value,
    })
}

/// An address as text, or its bytes in hex when it is not one.
fn addr(b: &[u8]) -> String {
    ip_text(b).unwrap_or_else(|| b.iter().map(|x| format!("{x:02x}")).collect())
}

fn flow_json(f: &FlowRecord) -> Value {
    json!({
        "first_seen_us": f.first_seen_us, "last_seen_us": f.last_seen_us,
        "client_ip": addr(&f.client_ip), "server_ip": addr(&f.server_ip),
        "client_port": f.client_port, "server_port": f.server_port, "ip_protocol": f.ip_protocol,
        "app_protocol": f.app_protocol, "operations": f.operations.len(), "indicators": f.indicators,
    })
}

fn asset_json(a: &AssetObservation) -> Value {
    json!({
        "mac": addr(&a.mac), "ips": a.ips.iter().map(|i| addr(i)).collect::<Vec<_>>(), "vendor": a.vendor,
        "first_seen_us": a.first_seen_us, "last_seen_us": a.last_seen_us,
        "protocols": a.protocols, "roles": a.roles,
    })
}

fn status_json(s: &SensorStatus) -> Value {
    json!({
        "observed_us": s.observed_us, "capture_packets": s.capture_packets,
        "records_dropped": s.records_dropped, "software_version": s.software_version,
    })
}

//! `tidewatch-collector detect`: the detection service.
//!
//! - **Streaming rules** ([`streaming`]: intel-contact, ot-write,
//!   zone-crossing, new-device) on each batch as it arrives: its own
//!   consumer group on the batches topic (it neither slows nor waits for
//!   the sink), the same check of ingest's signature as the sink.
//! - **Scheduled queries** ([`scheduled`]): the analysts' query pack on
//!   sliding windows, and the retro-hunt of each threat-intel load.
//!
//! What the rules compare with ([`known`]: indicators, engineering
//! stations, zones and conduits, devices) is reloaded from ClickHouse every
//! `--refresh-secs`. Severity, windows, suppressions and schedules come from
//! the rules file ([`rules`]; `--rules FILE`, checked alone with
//! `--check-rules FILE`).
//!
//! An alert's id is its rule, vessel, subject and window
//! ([`crate::alerts::alert_id`]). Per round (a chunk of records, with the
//! scheduled work then due), alerts are stored in ClickHouse (`alerts_raw`,
//! retried while it is away) and published to the alerts topic, and only
//! then are the offsets committed and the schedule moved on, so a crash
//! raises the same alerts again under the same ids, which collapse; so do
//! the alerts of two replicas or of a re-read topic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use prost::Message as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tidewatch_proto::codec;
use tidewatch_proto::util::ip_text;
use tidewatch_proto::v1::{FlowRecord, IngestedBatch};
use tracing::{debug, info, warn};

use crate::alerts::{alert_id, evidence_rank, Alert};
use crate::clickhouse_args::ClickHouseArgs;
use crate::envelope::{signature_of, VerifyArgs, VerifyKeys};
use crate::kafka::KafkaArgs;
use crate::metrics::DetectMetrics;
use known::Known;
use rules::{Rule, RulesFile};

pub mod known;
pub mod rules;
pub mod scheduled;
pub mod streaming;

/// Kafka topic the detector publishes alerts to (JSON, key = alert id).
pub const ALERTS_TOPIC: &str = "tidewatch.alerts.v1";

#[derive(Debug, clap::Args)]
pub struct DetectArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub envelope: VerifyArgs,
    /// Kafka consumer group of the detectors (apart from the sinks').
    #[arg(
        long,
        env = "TIDEWATCH_DETECT_GROUP",
        default_value = "tidewatch-detect"
    )]
    pub group: String,
    /// Topic alerts are published to.
    #[arg(long, env = "TIDEWATCH_ALERTS_TOPIC", default_value = ALERTS_TOPIC)]
    pub alerts_topic: String,
    /// The rules file (YAML: severity, window, suppressions per rule; see
    /// the README). Default: every rule on with its defaults.
    #[arg(long, env = "TIDEWATCH_DETECT_RULES", value_name = "FILE")]
    pub rules: Option<std::path::PathBuf>,
    /// Only check a rules file (errors with their line and column) and exit.
    #[arg(long, value_name = "FILE")]
    pub check_rules: Option<std::path::PathBuf>,
    /// Seconds between reloads of what the rules compare with (threat-intel
    /// indicators, engineering stations, zones and conduits, devices); new
    /// intel loads are hunted for then.
    #[arg(long, default_value_t = 60)]
    pub refresh_secs: u64,
    /// Days of stored flows hunted for the indicators of each new intel load.
    #[arg(long, default_value_t = 90)]
    pub hunt_days: u32,
    /// Seconds after an intel load before it is hunted for: flows the
    /// detector read just before it knew the load are in ClickHouse by then
    /// (longer than the sink's lag).
    #[arg(long, default_value_t = 120)]
    pub hunt_settle_secs: u64,
    /// An alert is raised once per rule, vessel and subject in a window of
    /// this many seconds (of the evidence's time).
    #[arg(long, default_value_t = 3600)]
    pub bucket_secs: u64,
    /// Milliseconds to wait for more records before handling a chunk.
    #[arg(long, default_value_t = 500)]
    pub max_wait_ms: u64,
    /// Records per chunk at most.
    #[arg(long, default_value_t = 1000)]
    pub max_records: usize,
    /// Serve Prometheus metrics (/metrics) and liveness (/healthz) over
    /// plain HTTP on this address (default: off).
    #[arg(long, env = "TIDEWATCH_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A flow's key and what identifies it, as alerts show it.
#[derive(Debug, Clone)]
pub struct FlowKey {
    pub sensor_id: String,
    pub batch_seq: u64,
    pub record_idx: u32,
    pub first_seen_us: i64,
    pub client_ip: String,
    pub server_ip: String,
    pub client_port: u32,
    pub server_port: u32,
    pub app_protocol: String,
}

impl FlowKey {
    pub fn of(env: &IngestedBatch, idx: usize, f: &FlowRecord) -> FlowKey {
        FlowKey {
            sensor_id: env.sensor_id.clone(),
            batch_seq: env.seq,
            record_idx: idx as u32,
            first_seen_us: f.first_seen_us,
            client_ip: ip_text(&f.client_ip).unwrap_or_default(),
            server_ip: ip_text(&f.server_ip).unwrap_or_default(),
            client_port: f.client_port,
            server_port: f.server_port,
            app_protocol: f.app_protocol.clone(),
        }
    }

    /// The flow's key with a rule's `detail` beside it.
    pub fn evidence(&self, detail: serde_json::Value) -> serde_json::Value {
        let mut e = serde_json::json!({
            "sensor_id": self.sensor_id, "batch_seq": self.batch_seq, "record_idx": self.record_idx,
            "first_seen_us": self.first_seen_us,
            "client_ip": self.client_ip, "server_ip": self.server_ip,
            "client_port": self.client_port, "server_port": self.server_port,
            "app_protocol": self.app_protocol,
        });
        if let (Some(e), serde_json::Value::Object(d)) = (e.as_object_mut(), detail) {
            e.extend(d);
        }
        e
    }
}

/// What a rule found: an alert once its window is known.
pub struct Finding<'a> {
    pub rule: &'a str,
    pub vessel: &'a str,
    pub sensor_id: &'a str,
    /// What it is about; the alert id's subject and what suppressions name.
    pub subject: String,
    /// When the evidence happened, microseconds.
    pub at_us: i64,
    pub summary: String,
    pub evidence: serde_json::Value,
}

/// The alerts of one round, one per id, each with its earliest evidence.
pub struct Raised {
    by_id: BTreeMap<String, Alert>,
    /// Findings a suppression held back.
    pub suppressed: u64,
    default_bucket_secs: i64,
    now: u32,
}

impl Raised {
    pub fn new(default_bucket_secs: i64) -> Self {
        Raised {
            by_id: BTreeMap::new(),
            suppressed: 0,
            default_bucket_secs,
            now: (tidewatch_proto::util::now_us() / 1_000_000).clamp(0, u32::MAX as i64) as u32,
        }
    }

    /// Raises the alert of `f` under `rule`'s severity, window and
    /// suppressions.
    pub fn raise(&mut self, rule: &Rule, f: Finding<'_>) {
        let at_s = f.at_us.div_euclid(1_000_000);
        if rule.suppressed(f.vessel, &f.subject, at_s) {
            self.suppressed += 1;
            return;
        }
        let bucket_secs = rule
            .bucket_secs
            .map_or(self.default_bucket_secs, |b| b.0 as i64);
        let bucket = at_s - at_s.rem_euclid(bucket_secs);
        let id = alert_id(f.rule, f.vessel, &f.subject, bucket);
        if self
            .by_id
            .get(&id)
            .is_some_and(|a| a.first_seen_us <= f.at_us)
        {
            return;
        }
        self.by_id.insert(
            id.clone(),
            Alert {
                id,
                rule: f.rule.into(),
                severity: rule.severity.name().into(),
                vessel: f.vessel.into(),
                sensor_id: f.sensor_id.into(),
                subject: f.subject,
                bucket_start: bucket.clamp(0, u32::MAX as i64) as u32,
                first_seen_us: f.at_us,
                summary: f.summary,
                evidence: f.evidence.to_string(),
                raised_at: self.now,
                evidence_rank: evidence_rank(f.at_us),
            },
        );
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn into_alerts(self) -> Vec<Alert> {
        self.by_id.into_values().collect()
    }
}

/// The alerts already published in this run, by id, with the time of the
/// evidence they carried: raised again with no earlier evidence, an alert
/// is neither stored nor published again. Forgotten past a bound.
#[derive(Default)]
struct Published {
    first_seen_us: HashMap<String, i64>,
}

impl Published {
    const MAX: usize = 200_000;

    fn is_news(&self, a: &Alert) -> bool {
        self.first_seen_us
            .get(&a.id)
            .is_none_or(|&t| a.first_seen_us < t)
    }

    fn add(&mut self, a: &Alert) {
        if self.first_seen_us.len() >= Self::MAX {
            self.first_seen_us.clear();
        }
        self.first_seen_us.insert(a.id.clone(), a.first_seen_us);
    }
}

/// Reads and checks a rules file.
pub fn read_rules(path: &std::path::Path) -> anyhow::Result<RulesFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read rules {}", path.display()))?;
    rules::parse(&text).map_err(|e| anyhow::anyhow!("rules {}: {e}", path.display()))
}

/// Prints what a checked rules file sets.
fn print_rules(p: &std::path::Path, r: &RulesFile, default_bucket_secs: u64) {
    let rs = &r.rules;
    let (ow, nd) = (rs.ot_write.rule(), rs.new_device.rule());
    for (name, rule) in [
        ("intel-contact", &rs.intel_contact),
        ("ot-write", &ow),
        ("zone-crossing", &rs.zone_crossing),
        ("new-device", &nd),
    ] {
        println!(
            "rules {}: {name}: {}, severity {}, window {} s, {} suppression(s)",
            p.display(),
            if rule.enabled { "on" } else { "off" },
            rule.severity.name(),
            rule.bucket_secs.map_or(default_bucket_secs, |b| b.0),
            rule.suppress.len()
        );
    }
    for s in &r.scheduled {
        println!(
            "rules {}: {}: {}, severity {}, every {} s over {} s, window {} s, {} suppression(s)",
            p.display(),
            s.rule_name(),
            if s.rule.enabled { "on" } else { "off" },
            s.rule.severity.name(),
            s.every_secs,
            s.window_secs,
            s.rule.bucket_secs.map_or(default_bucket_secs, |b| b.0),
            s.rule.suppress.len()
        );
    }
    let hosts: usize = rs.ot_write.engineering_hosts.values().map(Vec::len).sum();
    println!(
        "rules {}: valid; ot-write lists {hosts} engineering host(s); new-device watches zone(s) {}",
        p.display(),
        rs.new_device.zones.join(", ")
    );
}

/// Sets the detector up and runs it until SIGTERM/SIGINT.
pub async fn run(args: DetectArgs) -> anyhow::Result<()> {
    if let Some(p) = &args.check_rules {
        let r = read_rules(p)?;
        print_rules(p, &r, args.bucket_secs);
        return Ok(());
    }
    let rules = match &args.rules {
        Some(p) => read_rules(p)?,
        None => RulesFile::default(),
    };
    args.clickhouse.validate()?;
    anyhow::ensure!(
        args.bucket_secs > 0 && args.refresh_secs > 0 && args.max_records > 0,
        "--bucket-secs, --refresh-secs and --max-records must be at least 1"
    );
    let verify = args.envelope.keys()?;
    let producer = args.kafka.producer(30_000, 64)?;
    crate::kafka::wait_for_topic(
        &producer,
        &args.kafka.kafka_brokers,
        &args.kafka.kafka_topic,
    )
    .await?;
    crate::kafka::wait_for_topic(&producer, &args.kafka.kafka_brokers, &args.alerts_topic).await?;
    let consumer = args.kafka.consumer(&args.group)?;
    consumer
        .subscribe(&[&args.kafka.kafka_topic])
        .with_context(|| format!("subscribing to {}", args.kafka.kafka_topic))?;
    let ch = args.clickhouse.client();
    let metrics = DetectMetrics::new();
    let stop = crate::metrics::stop_on_signal("finishing the current chunk");
    let metrics_task =
        crate::metrics::start_until(args.metrics_listen, metrics.registry.clone(), stop.clone())
            .await?;
    let mut known = Known::default();
    let mut hunted: Option<BTreeSet<u64>> = None;
    let mut hunt_retry_at = i64::MIN;
    let mut loaded_at: Option<Instant> = None;
    let refresh = Duration::from_secs(args.refresh_secs);
    let mut schedule = scheduled::Schedule::new(rules.scheduled.len());
    let mut published = Published::default();
    let limits = codec::DecodeLimits {
        max_decoded_bytes: 16 * 1024 * 1024,
        max_records: 50_000,
    };
    info!(group = %args.group, topic = %args.kafka.kafka_topic, alerts_topic = %args.alerts_topic,
        scheduled = rules.scheduled.len(), "detector started");
    'rounds: while !stop.stopping() {
        let mut raised = Raised::new(args.bucket_secs as i64);
        if loaded_at.is_none_or(|t| t.elapsed() >= refresh) {
            match tokio::try_join!(Known::load(&ch), scheduled::hunted(&ch)) {
                Ok((k, h)) => {
                    if loaded_at.is_none() || k.intel.len() != known.intel.len() {
                        info!(indicators = k.intel.len(), "threat-intel indicators loaded");
                    }
                    metrics.indicators.set(k.intel.len() as f64);
                    known = k;
                    hunted = Some(h);
                    loaded_at = Some(Instant::now());
                }
                // Keep the previous sets; retried at the next round.
                Err(e) => {
                    warn!(error = %e, "cannot load what the rules compare with from ClickHouse")
                }
            }
        }
        let now_s = tidewatch_proto::util::now_us() / 1_000_000;
        // Retro-hunts of the intel loads not hunted yet.
        let mut hunts = Vec::new();
        let new_loads: Vec<(u64, u32)> = match &hunted {
            Some(h) if hunt_retry_at <= now_s => known
                .intel
                .versions
                .iter()
                // A load's version is its time, in microseconds.
                .filter(|(v, _)| {
                    !h.contains(v)
                        && (**v / 1_000_000) as i64 + args.hunt_settle_secs as i64 <= now_s
                })
                .map(|(v, n)| (*v, *n))
                .collect(),
            _ => Vec::new(),
        };
        for (version, indicators) in new_loads {
            let since = now_s - args.hunt_days as i64 * 86_400;
            let before = raised.len();
            match scheduled::hunt(
                &ch,
                version,
                since,
                now_s,
                &rules.rules.intel_contact,
                &mut raised,
            )
            .await
            {
                Ok(contacts) => {
                    info!(
                        version,
                        contacts,
                        alerts = raised.len() - before,
                        days = args.hunt_days,
                        "intel load hunted for over stored flows"
                    );
                    hunts.push(scheduled::Hunt {
                        version,
                        since: since.max(0) as u32,
                        until: now_s as u32,
                        indicators,
                        alerts: (raised.len() - before) as u32,
                        hunted_at: now_s as u32,
                    });
                }
                Err(e) => {
                    hunt_retry_at = now_s + scheduled::RETRY_SECS;
                    warn!(version, error = %format!("{e:#}"), retry_in_secs = scheduled::RETRY_SECS,
                        "retro-hunt failed");
                    break;
                }
            }
        }
        // Scheduled queries due.
        let mut ran = Vec::new();
        for (i, until) in schedule.due(&rules.scheduled, now_s) {
            let s = &rules.scheduled[i];
            match scheduled::run_query(&args.clickhouse, s, until, &mut raised).await {
                Ok(rows) => {
                    metrics.scheduled_runs.inc("ok");
                    debug!(
                        query = s.plan.query.name,
                        until, rows, "scheduled query run"
                    );
                    ran.push((i, until));
                }
                Err(e) => {
                    metrics.scheduled_runs.inc("failed");
                    schedule.failed(i, now_s);
                    warn!(query = s.plan.query.name, error = %format!("{e:#}"),
                        retry_in_secs = scheduled::RETRY_SECS, "scheduled query failed");
                }
            }
        }
        // A chunk of records.
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut records = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(args.max_wait_ms);
        while records < args.max_records {
            let m = tokio::select! {
                m = tokio::time::timeout_at(deadline, consumer.recv()) => m,
                _ = stop.wait() => break,
            };
            let m = match m {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => {
                    warn!(error = %e, "Kafka consume error");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
                Err(_) => break,
            };
            records += 1;
            metrics.kafka_records.inc();
            let e = offsets
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(m.offset());
            *e = (*e).max(m.offset());
            let Some(value) = m.payload() else { continue };
            if let Err(why) = check(verify.as_ref(), value, signature_of(&m).as_deref()) {
                metrics.envelopes_refused.inc();
                warn!(partition = m.partition(), offset = m.offset(), reason = %why, "record refused, not checked for alerts");
                continue;
            }
            let Ok(env) = IngestedBatch::decode(value) else {
                continue;
            };
            let Ok(batch) = codec::decode(env.encoding, &env.payload, limits) else {
                continue;
            };
            metrics.flows_checked.add(batch.flows.len() as u64);
            metrics.assets_checked.add(batch.assets.len() as u64);
            streaming::check_batch(&env, &batch, &mut known, &rules.rules, &mut raised);
        }
        if records == 0 && raised.is_empty() && hunts.is_empty() && ran.is_empty() {
            continue;
        }
        metrics.suppressed.add(raised.suppressed);
        let alerts: Vec<Alert> = raised
            .into_alerts()
            .into_iter()
            .filter(|a| published.is_news(a))
            .collect();
        // Stored and published before the offsets and the schedule move on.
        let mut backoff = Duration::from_millis(200);
        while let Err(e) = crate::alerts::store(&ch, &alerts).await {
            warn!(error = %e, alerts = alerts.len(), "cannot store alerts; retrying");
            if stop.stopping() {
                break 'rounds;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
        for a in &alerts {
            let json = serde_json::to_vec(a)?;
            loop {
                let rec = FutureRecord::to(&args.alerts_topic)
                    .key(&a.id)
                    .payload(&json);
                match producer
                    .send(rec, Timeout::After(Duration::from_secs(30)))
                    .await
                {
                    Ok(_) => break,
                    Err((e, _)) => {
                        warn!(error = %e, "cannot publish an alert; retrying");
                        if stop.stopping() {
                            break 'rounds;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            published.add(a);
            metrics.alerts.inc(&a.rule);
            info!(id = %a.id, rule = %a.rule, vessel = %a.vessel, sensor = %a.sensor_id, subject = %a.subject,
                summary = %a.summary, "alert raised");
        }
        if records > 0 {
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), offset) in &offsets {
                if let Err(e) =
                    tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
                {
                    warn!(error = %e, "cannot build offset list");
                }
            }
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => debug!(records, "offsets committed"),
                Err(e) => {
                    warn!(error = %e, "offset commit failed; records will be read again (alerts collapse)")
                }
            }
        }
        for (i, until) in ran {
            schedule.done(i, until);
        }
        for h in hunts {
            match scheduled::record_hunt(&ch, &h).await {
                Ok(()) => {
                    metrics.hunts.inc();
                    if let Some(set) = hunted.as_mut() {
                        set.insert(h.version);
                    }
                }
                Err(e) => {
                    warn!(version = h.version, error = %e, "cannot record the hunt; it runs again (alerts collapse)")
                }
            }
        }
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    info!(
        flows_checked = metrics.flows_checked.get(),
        "detector stopped"
    );
    Ok(())
}

/// Whether a record is ingest's (when signatures are checked).
fn check(keys: Option<&VerifyKeys>, value: &[u8], sig: Option<&[u8]>) -> Result<(), String> {
    match keys {
        Some(k) => k.verify(value, sig).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

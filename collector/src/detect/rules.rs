//! The detector's rules file (YAML), validated whole with the line and
//! column of anything wrong (`detect --check-rules FILE`):
//!
//! ```yaml
//! rules:
//!   ot-write:
//!     engineering_hosts:      # allowed to write, per vessel ("*": all)
//!       mv-aurora: [10.1.1.30]
//!     known_after_secs: 86400 # a host reported as an engineering station
//!                             # this long before a write is known
//!     learning_secs: 86400    # writes in a vessel's first day are its baseline
//!   intel-contact:
//!     enabled: true
//!     severity: high          # info, low, medium, high, critical
//!     bucket_secs: 3600       # one alert per vessel and subject per window
//!     suppress:               # known and accepted: no alert
//!       - vessel: mv-aurora
//!         subject: 203.0.113.7
//!         note: vendor's update server, ticket 4711
//!         until: 2027-01-01
//!   new-device:
//!     zones: [ot]             # zones (fleet registry) watched for new MACs
//!     learning_secs: 86400    # a vessel's first day of assets is its baseline
//!   zone-crossing:
//!     severity: high          # conduits come from the fleet registry
//! scheduled:                  # pack queries on sliding windows
//!   - query: beaconing
//!     every_secs: 3600        # windows end on multiples of this (UTC)
//!     window_secs: 86400
//!     args: [--min-count, "30"]   # its flags, as after `query beaconing`
//!     severity: medium
//! ```
//!
//! A rule left out keeps its defaults; an unknown rule or key is an error.
//! Without `scheduled`, [`DEFAULT_SCHEDULED`] run hourly over a day; the
//! queries the streaming rules already cover live (ot-writes, segmentation,
//! asset-changes) are not scheduled unless listed.

use serde::Deserialize;

/// How serious an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub rules: Rules,
    #[serde(default = "default_scheduled")]
    pub scheduled: Vec<Scheduled>,
}

impl Default for RulesFile {
    fn default() -> Self {
        RulesFile {
            rules: Rules::default(),
            scheduled: default_scheduled(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(rename = "intel-contact", default)]
    pub intel_contact: Rule,
    #[serde(rename = "ot-write", default)]
    pub ot_write: OtWrite,
    #[serde(rename = "new-device", default)]
    pub new_device: NewDevice,
    #[serde(rename = "zone-crossing", default)]
    pub zone_crossing: Rule,
}

/// Declares a rule's settings: those every rule has (`enabled`,
/// `severity`, `bucket_secs`, `suppress`; [`Rule`]) and its own, each with
/// its default, flat in the rule's YAML map.
macro_rules! rule_settings {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident: $t:ty = $d:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            pub enabled: bool,
            pub severity: Severity,
            pub bucket_secs: Option<BucketSecs>,
            pub suppress: Vec<Suppression>,
            $($(#[$fm])* pub $f: $t),*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    enabled: true,
                    severity: Severity::High,
                    bucket_secs: None,
                    suppress: Vec::new(),
                    $($f: $d),*
                }
            }
        }

        impl $name {
            /// The settings it shares with every rule.
            pub fn rule(&self) -> Rule {
                Rule {
                    enabled: self.enabled,
                    severity: self.severity,
                    bucket_secs: self.bucket_secs,
                    suppress: self.suppress.clone(),
                }
            }
        }
    };
}

rule_settings! {
    /// The `new-device` rule: a device (MAC) never seen on its vessel
    /// before, with an address in a watched zone.
    NewDevice {
        /// Zones of the fleet registry watched.
        zones: Vec<String> = vec!["ot".into()],
        /// Devices seen in a vessel's first this many seconds of asset
        /// reports are its baseline, not new.
        learning_secs: u64 = 86_400,
    }
}

rule_settings! {
    /// The `ot-write` rule: an OT write, control or program operation from
    /// a host that is not a known engineering station of its vessel.
    OtWrite {
        /// Hosts allowed to write, by vessel; "*" for every vessel.
        engineering_hosts: std::collections::BTreeMap<String, Vec<String>> = Default::default(),
        /// A host the sensors reported as an engineering station at least
        /// this many seconds before a write is known (a sensor gives the
        /// role to any host that writes, so a newcomer is not known on its
        /// first write).
        known_after_secs: u64 = 86_400,
        /// Writes in a vessel's first this many seconds of asset reports
        /// are its baseline: its stations are being learnt.
        learning_secs: u64 = 86_400,
    }
}

impl OtWrite {
    /// Whether `host` is allowed to write on `vessel` by the file.
    pub fn allowed(&self, vessel: &str, host: &str) -> bool {
        [vessel, "*"].iter().any(|v| {
            self.engineering_hosts
                .get(*v)
                .is_some_and(|hosts| hosts.iter().any(|h| h == host))
        })
    }
}

/// The pack queries run when the rules file lists none.
pub const DEFAULT_SCHEDULED: &[&str] = &[
    "new-destinations",
    "volume-spikes",
    "beaconing",
    "scans",
    "campaigns",
    "sensor-health",
];

fn default_scheduled() -> Vec<Scheduled> {
    DEFAULT_SCHEDULED
        .iter()
        .map(|q| {
            Scheduled::try_from(RawScheduled {
                query: q.to_string(),
                ..RawScheduled::default()
            })
            .expect("the default scheduled queries are valid")
        })
        .collect()
}

/// A pack query the detector runs on sliding windows: at every multiple of
/// `every_secs` (Unix time) over the `window_secs` before it, one alert per
/// row and subject (rule `query:NAME`), its window (`bucket_secs`, default
/// a day) taken from the row's time. Overlapping windows see late data
/// (a vessel offline for hours) and raise what they find again under the
/// same ids.
#[derive(Debug)]
pub struct Scheduled {
    pub rule: Rule,
    pub every_secs: u64,
    pub window_secs: u64,
    /// Its flags, checked: the query as `query NAME ARGS...` would run it.
    pub plan: crate::query::Planned,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScheduled {
    query: String,
    enabled: bool,
    severity: Option<Severity>,
    bucket_secs: Option<BucketSecs>,
    suppress: Vec<Suppression>,
    every_secs: u64,
    window_secs: u64,
    args: Vec<String>,
}

impl Default for RawScheduled {
    fn default() -> Self {
        RawScheduled {
            query: String::new(),
            enabled: true,
            severity: None,
            bucket_secs: None,
            suppress: Vec::new(),
            every_secs: 3600,
            window_secs: 86_400,
            args: Vec::new(),
        }
    }
}

impl<'de> Deserialize<'de> for Scheduled {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawScheduled::deserialize(d)?;
        Scheduled::try_from(raw).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<RawScheduled> for Scheduled {
    type Error = String;
    fn try_from(r: RawScheduled) -> Result<Self, String> {
        use clap::Parser;
        crate::query::pack::find(&r.query).map_err(|_| {
            let names: Vec<&str> = crate::query::pack::PACK.iter().map(|q| q.name).collect();
            format!("query {:?} is not one of {}", r.query, names.join(", "))
        })?;
        if r.every_secs < 60 || r.window_secs < r.every_secs {
            return Err(format!(
                "{}: every_secs must be at least 60 and window_secs at least every_secs (got {} and {})",
                r.query, r.every_secs, r.window_secs
            ));
        }
        if let Some(a) = r.args.iter().find(|a| {
            ["--since", "--until", "--format", "--print-sql"]
                .iter()
                .any(|f| a.split('=').next() == Some(*f))
        }) {
            return Err(format!(
                "{}: {a} is set by the schedule, not in args",
                r.query
            ));
        }
        let line = std::iter::once(r.query.clone()).chain(r.args.iter().cloned());
        let cmd = crate::query::QueryLine::try_parse_from(line)
            .map_err(|e| format!("{}: args: {}", r.query, e.kind()))?
            .cmd;
        let plan = cmd
            .plan()
            .map_err(|e| format!("{}: args: {e:#}", r.query))?;
        let severity = r.severity.unwrap_or(if r.query == "sensor-health" {
            Severity::Low
        } else {
            Severity::Medium
        });
        Ok(Scheduled {
            rule: Rule {
                enabled: r.enabled,
                severity,
                bucket_secs: Some(r.bucket_secs.unwrap_or(BucketSecs(86_400))),
                suppress: r.suppress,
            },
            every_secs: r.every_secs,
            window_secs: r.window_secs,
            plan,
        })
    }
}

impl Scheduled {
    /// The rule name of its alerts.
    pub fn rule_name(&self) -> String {
        format!("query:{}", self.plan.query.name)
    }
}

/// One rule's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rule {
    pub enabled: bool,
    pub severity: Severity,
    /// The alert window (default: the detector's --bucket-secs).
    pub bucket_secs: Option<BucketSecs>,
    pub suppress: Vec<Suppression>,
}

impl Default for Rule {
    fn default() -> Self {
        Rule {
            enabled: true,
            severity: Severity::High,
            bucket_secs: None,
            suppress: Vec::new(),
        }
    }
}

/// An alert window: at least a minute.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "u64")]
pub struct BucketSecs(pub u64);

impl TryFrom<u64> for BucketSecs {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        if v < 60 {
            return Err(format!("bucket_secs {v} is under a minute"));
        }
        Ok(BucketSecs(v))
    }
}

/// Alerts not raised: of a vessel, about a subject, or both, until a date.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RawSuppression")]
pub struct Suppression {
    pub vessel: Option<String>,
    pub subject: Option<String>,
    pub note: String,
    /// End (exclusive), Unix seconds; `None`: no end.
    pub until: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuppression {
    vessel: Option<String>,
    subject: Option<String>,
    note: Option<String>,
    until: Option<String>,
}

impl TryFrom<RawSuppression> for Suppression {
    type Error = String;
    fn try_from(r: RawSuppression) -> Result<Self, String> {
        if r.vessel.is_none() && r.subject.is_none() {
            return Err("a suppression names a vessel, a subject or both".into());
        }
        let note = r
            .note
            .filter(|n| !n.trim().is_empty())
            .ok_or("a suppression needs a note saying why (it is part of the record)")?;
        let until = r
            .until
            .map(|u| {
                crate::pki::parse_date(&u)
                    .map(|t| t.unix_timestamp())
                    .map_err(|_| format!("until {u:?} is not a date (YYYY-MM-DD)"))
            })
            .transpose()?;
        Ok(Suppression {
            vessel: r.vessel,
            subject: r.subject.map(|s| s.to_ascii_lowercase()),
            note,
            until,
        })
    }
}

impl Rule {
    /// Whether an alert about `subject` on `vessel` at `at_s` is suppressed.
    pub fn suppressed(&self, vessel: &str, subject: &str, at_s: i64) -> bool {
        self.suppress.iter().any(|s| {
            s.vessel.as_deref().is_none_or(|v| v == vessel)
                && s.subject
                    .as_deref()
                    .is_none_or(|x| x.eq_ignore_ascii_case(subject))
                && s.until.is_none_or(|u| at_s < u)
        })
    }
}

/// Parses a rules file; an error names the line and column.
pub fn parse(text: &str) -> Result<RulesFile, String> {
    yaml_serde::from_str(text).map_err(|e| match e.location() {
        Some(l) => format!("line {}, column {}: {e}", l.line(), l.column()),
        None => e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rules_file_is_read_with_defaults_and_refused_with_the_place_of_the_error() {
        let r = parse(
            "rules:\n  intel-contact:\n    severity: critical\n    suppress:\n      - vessel: mv-aurora\n        subject: 203.0.113.7\n        note: vendor update server\n        until: 2027-01-01\n",
        )
        .unwrap();
        let ic = &r.rules.intel_contact;
        assert!(ic.enabled);
        assert_eq!(ic.severity, Severity::Critical);
        assert!(ic.suppressed("mv-aurora", "203.0.113.7", 1_790_000_000));
        assert!(
            !ic.suppressed("mv-aurora", "203.0.113.7", 1_798_761_600),
            "past until"
        );
        assert!(!ic.suppressed("mv-borealis", "203.0.113.7", 1_790_000_000));
        assert!(
            parse("").unwrap().rules.intel_contact.enabled,
            "an empty file: defaults"
        );
        assert_eq!(parse("").unwrap().scheduled.len(), DEFAULT_SCHEDULED.len());
        assert!(parse("scheduled: []\n").unwrap().scheduled.is_empty());
        let r = parse(
            "rules:\n  new-device:\n    zones: [ot, nav]\nscheduled:\n  - query: scans\n    every_secs: 600\n    args: [--min-targets, '20', --vessel, mv-a]\n",
        )
        .unwrap();
        assert_eq!(r.rules.new_device.zones, ["ot", "nav"]);
        let s = &r.scheduled[0];
        assert_eq!(
            (s.rule_name().as_str(), s.every_secs, s.window_secs),
            ("query:scans", 600, 86_400)
        );
        assert_eq!(s.plan.common.vessel.as_deref(), Some("mv-a"));
        assert!(format!("{:?}", s.plan.extra).contains("Int(20)"));

        for (text, want) in [
            ("rules:\n  intel-contact:\n    severity: severe\n", "line 3"),
            ("rules:\n  intel-contact:\n    bucket_secs: 10\n", "under a minute"),
            ("rules:\n  old-device: {}\n", "line 2"),
            ("scheduled:\n  - query: beacons\n", "not one of"),
            ("scheduled:\n  - query: scans\n    args: [--min-targets, many]\n", "line 2"),
            ("scheduled:\n  - query: scans\n    args: [--since, 2d]\n", "set by the schedule"),
            ("scheduled:\n  - query: scans\n    every_secs: 10\n", "at least 60"),
            ("rules:\n  intel-contact:\n    enabeld: false\n", "enabeld"),
            ("rules:\n  intel-contact:\n    suppress:\n      - vessel: mv-a\n", "needs a note"),
            ("rules:\n  intel-contact:\n    suppress:\n      - note: x\n", "names a vessel"),
            ("rules:\n  intel-contact:\n    suppress:\n      - {vessel: a, note: x, until: soon}\n", "not a date"),
            ("rules: [\n", "line"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("line "), "{text:?}: no line in {e}");
        }
    }
}

//! The streaming rules, evaluated on each batch as it arrives:
//!
//! - `intel-contact`: a flow whose client or server address, or a name it
//!   carried (DNS query, TLS SNI, HTTP Host), equals a threat-intel
//!   indicator before the indicator's end of validity. Subject: the
//!   indicator.
//! - `ot-write`: a write, control or program operation from a host that is
//!   neither listed as an engineering station of its vessel in the rules
//!   file nor reported in that role by the vessel's sensors at least
//!   `known_after_secs` before, once the vessel is past its learning time
//!   (its first `learning_secs` of asset reports). Subject: the writing
//!   host.
//! - `zone-crossing`: a connection from one zone of the sensor's site to
//!   another (or to or from `outside`, the addresses in no zone) that no
//!   conduit of the fleet registry allows. Only sensors with zones, and
//!   IPv4 flows (zones are IPv4 networks); multicast and broadcast
//!   destinations in no zone stay on the client's segment and are not
//!   crossings. Subject: the client and the two zones.
//! - `new-device`: an asset observation whose MAC the vessel never showed
//!   before, with an address in a watched zone, once the vessel is past its
//!   learning time. A changed vendor on a known address is a new MAC too.
//!   Subject: the MAC.

use std::net::Ipv4Addr;

use tidewatch_proto::util::{ip_text, mac_text};
use tidewatch_proto::v1::{AssetObservation, Batch, FlowRecord, IngestedBatch, OperationClass};

use super::known::Known;
use super::rules::Rules;
use super::{Finding, FlowKey, Raised};

/// Checks one batch against every streaming rule.
pub fn check_batch(
    env: &IngestedBatch,
    batch: &Batch,
    known: &mut Known,
    rules: &Rules,
    out: &mut Raised,
) {
    let mut c = Check {
        env,
        known,
        rules,
        out,
    };
    for (idx, f) in batch.flows.iter().enumerate() {
        let key = FlowKey::of(env, idx, f);
        if rules.intel_contact.enabled {
            c.intel_contact(&key, f);
        }
        if rules.ot_write.enabled {
            c.ot_write(&key, f);
        }
        if rules.zone_crossing.enabled {
            c.zone_crossing(&key, f);
        }
    }
    for (idx, a) in batch.assets.iter().enumerate() {
        c.new_device(idx, a);
    }
}

/// One batch being checked.
struct Check<'a> {
    env: &'a IngestedBatch,
    known: &'a mut Known,
    rules: &'a Rules,
    out: &'a mut Raised,
}

/// The finding of a contact with an indicator (`[kind, value, source,
/// description]`), live or by a retro-hunt: the same alert either way.
pub fn intel_finding<'a>(
    vessel: &'a str,
    key: &'a FlowKey,
    matched: &str,
    [kind, value, source, description]: [&str; 4],
) -> Finding<'a> {
    Finding {
        rule: "intel-contact",
        vessel,
        sensor_id: &key.sensor_id,
        subject: value.to_string(),
        at_us: key.first_seen_us,
        summary: format!(
            "{} -> {}:{} contacted {kind} {value} ({source}{}{description})",
            key.client_ip,
            key.server_ip,
            key.server_port,
            if description.is_empty() { "" } else { ": " },
        ),
        evidence: key.evidence(serde_json::json!({
            "matched": matched,
            "indicator": {"source": source, "kind": kind, "value": value,
                          "description": description},
        })),
    }
}

fn v4(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

impl Check<'_> {
    fn intel_contact(&mut self, key: &FlowKey, f: &FlowRecord) {
        let (env, known, rules) = (self.env, &*self.known, self.rules);
        for (matched, i) in known.intel.contacts(key, f) {
            let finding = intel_finding(
                &env.vessel,
                key,
                &matched,
                [&i.kind, &i.value, &i.source, &i.description],
            );
            self.out.raise(&rules.intel_contact, finding);
        }
    }

    fn ot_write(&mut self, key: &FlowKey, f: &FlowRecord) {
        let (env, known, rules) = (self.env, &*self.known, self.rules);
        let rule = &rules.ot_write;
        let writes: Vec<&str> = f
            .operations
            .iter()
            .filter(|o| {
                matches!(
                    OperationClass::try_from(o.class),
                    Ok(OperationClass::Write | OperationClass::Control | OperationClass::Program)
                )
            })
            .map(|o| o.name.as_str())
            .collect();
        if writes.is_empty()
            || rule.allowed(&env.vessel, &key.client_ip)
            || !known.devices.past_learning(
                &env.vessel,
                f.first_seen_us,
                rule.learning_secs as i64 * 1_000_000,
            )
            || known.stations.known(
                &env.vessel,
                &key.client_ip,
                f.first_seen_us,
                rule.known_after_secs as i64 * 1_000_000,
            )
        {
            return;
        }
        let finding = Finding {
            rule: "ot-write",
            vessel: &env.vessel,
            sensor_id: &env.sensor_id,
            subject: key.client_ip.clone(),
            at_us: f.first_seen_us,
            summary: format!(
                "{} -> {}:{} {} {} from a host not known as an engineering station",
                key.client_ip,
                key.server_ip,
                f.server_port,
                f.app_protocol,
                writes.join(",")
            ),
            evidence: key.evidence(serde_json::json!({ "operations": writes })),
        };
        self.out.raise(&rule.rule(), finding);
    }

    fn zone_crossing(&mut self, key: &FlowKey, f: &FlowRecord) {
        let (env, known, rules) = (self.env, &*self.known, self.rules);
        let Some(site) = known.sites.of(&env.sensor_id) else {
            return;
        };
        let (Some(client), Some(server)) = (v4(&f.client_ip), v4(&f.server_ip)) else {
            return;
        };
        let (from, to) = (site.zone_of(client), site.zone_of(server));
        if from == to
            || (to == crate::registry::OUTSIDE && (server.is_multicast() || server.is_broadcast()))
            || site.allows(from, to, f.server_port as u16, &f.app_protocol)
        {
            return;
        }
        let finding = Finding {
            rule: "zone-crossing",
            vessel: &env.vessel,
            sensor_id: &env.sensor_id,
            subject: format!("{} {from}->{to}", key.client_ip),
            at_us: f.first_seen_us,
            summary: format!(
                "{} ({from}) -> {}:{} ({to}) {}: no conduit allows {from} to {to}",
                key.client_ip, key.server_ip, f.server_port, f.app_protocol
            ),
            evidence: key.evidence(serde_json::json!({ "client_zone": from, "server_zone": to })),
        };
        self.out.raise(&rules.zone_crossing, finding);
    }

    fn new_device(&mut self, idx: usize, a: &AssetObservation) {
        let (env, rules) = (self.env, self.rules);
        let rule = &rules.new_device;
        if a.mac.is_empty() {
            return;
        }
        let mac = mac_text(&a.mac);
        let new = self.known.devices.first_sighting(
            &env.vessel,
            &mac,
            a.first_seen_us,
            rule.learning_secs as i64 * 1_000_000,
        );
        if !new || !rule.enabled {
            return;
        }
        let Some(site) = self.known.sites.of(&env.sensor_id) else {
            return;
        };
        let Some((ip, zone)) = a
            .ips
            .iter()
            .filter_map(|b| v4(b))
            .map(|ip| (ip, site.zone_of(ip)))
            .find(|(_, z)| rule.zones.iter().any(|w| w == z))
        else {
            return;
        };
        let ips: Vec<String> = a.ips.iter().filter_map(|b| ip_text(b)).collect();
        let finding = Finding {
            rule: "new-device",
            vessel: &env.vessel,
            sensor_id: &env.sensor_id,
            subject: mac.clone(),
            at_us: a.first_seen_us,
            summary: format!(
                "new device {mac} ({}) at {ip} in zone {zone}",
                if a.vendor.is_empty() {
                    "unknown vendor"
                } else {
                    &a.vendor
                }
            ),
            evidence: serde_json::json!({
                "sensor_id": env.sensor_id, "batch_seq": env.seq, "record_idx": idx,
                "first_seen_us": a.first_seen_us, "mac": mac, "ips": ips, "vendor": a.vendor,
                "zone": zone, "protocols": a.protocols, "roles": a.roles,
            }),
        };
        self.out.raise(&rule.rule(), finding);
    }
}

//! Threat-intel feeds parsed into indicators the fleet's flows can be
//! matched against: STIX 2.1 bundles, MISP JSON event exports, and plain
//! lists (one indicator per line, CSV with the indicator first).
//!
//! What can match a flow is an address (the client or server IP) or a name
//! (a DNS query name, a TLS SNI or an HTTP Host the sensor recorded as the
//! flow's indicators); a URL matches by its host. Indicators of anything
//! else (file hashes, e-mail addresses, STIX patterns that are not plain
//! equalities) are counted as skipped, never guessed at. A feed with an
//! error is refused whole, with the line or object that is wrong.

use std::net::IpAddr;

use serde_json::Value;

/// What an indicator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Ip,
    Domain,
    Url,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ip => "ip",
            Kind::Domain => "domain",
            Kind::Url => "url",
        }
    }
}

/// One indicator as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indicator {
    pub kind: Kind,
    /// As the feed gives it.
    pub value: String,
    /// What a flow is matched on: the address as the sink writes addresses,
    /// a lowercase name without a trailing dot (a URL's host).
    pub matches: String,
    /// Where in the feed: a STIX or MISP id, or `line N`.
    pub reference: String,
    pub description: String,
    /// Validity, Unix seconds (0: not given).
    pub valid_from: i64,
    pub valid_until: i64,
}

/// A parsed feed.
#[derive(Debug, Default)]
pub struct Feed {
    pub format: &'static str,
    pub indicators: Vec<Indicator>,
    /// Entries of kinds that cannot match a flow, by kind.
    pub skipped: std::collections::BTreeMap<String, usize>,
}

impl Feed {
    fn skip(&mut self, what: &str) {
        *self.skipped.entry(what.to_string()).or_default() += 1;
    }
}

/// The format of a feed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Stix,
    Misp,
    Text,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{at}: {why}")]
pub struct FeedError {
    /// Where: `line L, column C`, `objects[3] (indicator--…)`, `line 12`.
    pub at: String,
    pub why: String,
}

fn err(at: impl Into<String>, why: impl Into<String>) -> FeedError {
    FeedError {
        at: at.into(),
        why: why.into(),
    }
}

/// Parses a feed, its format detected (a JSON bundle is STIX, a JSON event
/// export MISP, anything else a list) unless given.
pub fn parse(text: &str, format: Option<Format>) -> Result<Feed, FeedError> {
    let format = format.unwrap_or_else(|| detect(text));
    match format {
        Format::Text => parse_text(text),
        Format::Stix | Format::Misp => {
            let v: Value = serde_json::from_str(text).map_err(|e| {
                err(
                    format!("line {}, column {}", e.line(), e.column()),
                    format!("not JSON: {e}"),
                )
            })?;
            if format == Format::Stix {
                parse_stix(&v)
            } else {
                parse_misp(&v)
            }
        }
    }
}

fn detect(text: &str) -> Format {
    let t = text.trim_start();
    if !(t.starts_with('{') || t.starts_with('[')) {
        return Format::Text;
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v) if v.get("type").and_then(Value::as_str) == Some("bundle") => Format::Stix,
        // Anything else in JSON is taken for MISP, which says what is wrong.
        _ => {
            if t.contains("\"type\"") && t.contains("\"bundle\"") && !t.contains("\"Event\"") {
                Format::Stix
            } else {
                Format::Misp
            }
        }
    }
}

/// A domain or host name: labels of letters, digits, '-' and '_', dots
/// between; lowercased, a trailing dot dropped.
pub fn normalize_domain(s: &str) -> Option<String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then_some(d)
}

/// An address as the sink writes it (the standard text form).
pub fn normalize_ip(s: &str) -> Option<String> {
    s.trim().parse::<IpAddr>().ok().map(|ip| ip.to_string())
}

/// The host of an http(s) or ftp URL, normalized.
fn url_host(url: &str) -> Option<String> {
    let rest = url.trim().split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host.split(':').next()?
    };
    normalize_ip(host).or_else(|| normalize_domain(host))
}

/// An indicator of `kind` from `value`, or why it is not one.
fn indicator(kind: Kind, value: &str, reference: String) -> Result<Indicator, String> {
    let matches = match kind {
        Kind::Ip => normalize_ip(value).ok_or_else(|| format!("{value:?} is not an IP address"))?,
        Kind::Domain => {
            normalize_domain(value).ok_or_else(|| format!("{value:?} is not a domain name"))?
        }
        Kind::Url => {
            url_host(value).ok_or_else(|| format!("{value:?} is not a URL with a host"))?
        }
    };
    Ok(Indicator {
        kind,
        value: value.trim().to_string(),
        matches,
        reference,
        description: String::new(),
        valid_from: 0,
        valid_until: 0,
    })
}

/// Plain lists: one indicator per line (an IP, a domain, or a URL), an
/// optional description after a comma or a tab; `#` starts a comment.
fn parse_text(text: &str) -> Result<Feed, FeedError> {
    let mut feed = Feed {
        format: "text",
        ..Feed::default()
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (value, description) = match line.split_once([',', '\t']) {
            Some((v, d)) => (v.trim(), d.trim().trim_matches('"')),
            None => (line, ""),
        };
        let value = value.trim_matches('"');
        let kind = if normalize_ip(value).is_some() {
            Kind::Ip
        } else if value.contains("://") {
            Kind::Url
        } else {
            Kind::Domain
        };
        let at = format!("line {}", i + 1);
        let mut ind = indicator(kind, value, at.clone()).map_err(|why| err(at, why))?;
        ind.description = description.to_string();
        feed.indicators.push(ind);
    }
    Ok(feed)
}

/// RFC 3339 time to Unix seconds.
fn rfc3339(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// STIX 2.1: the bundle's `indicator` objects whose pattern is one or more
/// equality comparisons joined by OR on `ipv4-addr:value`,
/// `ipv6-addr:value`, `domain-name:value` or `url:value`.
fn parse_stix(v: &Value) -> Result<Feed, FeedError> {
    let mut feed = Feed {
        format: "stix",
        ..Feed::default()
    };
    if v.get("type").and_then(Value::as_str) != Some("bundle") {
        return Err(err("top level", "not a STIX bundle (\"type\": \"bundle\")"));
    }
    let objects = v
        .get("objects")
        .and_then(Value::as_array)
        .ok_or_else(|| err("top level", "the bundle has no \"objects\" array"))?;
    for (i, o) in objects.iter().enumerate() {
        let id = o.get("id").and_then(Value::as_str).unwrap_or("?");
        let at = format!("objects[{i}] ({id})");
        let ty = o
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| err(&at, "object without a \"type\""))?;
        if ty != "indicator" {
            continue;
        }
        let field = |name: &str| o.get(name).and_then(Value::as_str);
        if field("pattern_type").unwrap_or("stix") != "stix" {
            feed.skip(&format!(
                "pattern_type {}",
                field("pattern_type").unwrap_or("")
            ));
            continue;
        }
        let pattern =
            field("pattern").ok_or_else(|| err(&at, "indicator without a \"pattern\""))?;
        let valid_from = match field("valid_from") {
            Some(t) => rfc3339(t)
                .ok_or_else(|| err(&at, format!("valid_from {t:?} is not an RFC 3339 time")))?,
            None => return Err(err(&at, "indicator without \"valid_from\"")),
        };
        let valid_until = match field("valid_until") {
            Some(t) => rfc3339(t)
                .ok_or_else(|| err(&at, format!("valid_until {t:?} is not an RFC 3339 time")))?,
            None => 0,
        };
        let description = field("name")
            .or(field("description"))
            .unwrap_or("")
            .to_string();
        let Some(comparisons) = equalities(pattern).map_err(|why| err(&at, why))? else {
            feed.skip("pattern other than equalities joined by OR");
            continue;
        };
        for (object, value) in comparisons {
            let kind = match object.as_str() {
                "ipv4-addr:value" | "ipv6-addr:value" => Kind::Ip,
                "domain-name:value" => Kind::Domain,
                "url:value" => Kind::Url,
                other => {
                    feed.skip(other);
                    continue;
                }
            };
            let mut ind = indicator(kind, &value, id.to_string()).map_err(|why| err(&at, why))?;
            ind.description = description.clone();
            ind.valid_from = valid_from;
            ind.valid_until = valid_until;
            feed.indicators.push(ind);
        }
    }
    Ok(feed)
}

/// The comparisons of a STIX pattern made only of `[object:path = 'value']`
/// terms joined by OR (inside or between brackets); `None` for any other
/// pattern (AND, other operators, qualifiers); an error for one that is not
/// well formed (unbalanced brackets or quotes).
fn equalities(pattern: &str) -> Result<Option<Vec<(String, String)>>, String> {
    let mut out = Vec::new();
    let mut rest = pattern.trim();
    let mut depth = 0usize;
    let mut expect_term = true;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            depth += 1;
            rest = r.trim_start();
            continue;
        }
        if let Some(r) = rest.strip_prefix(']') {
            depth = depth
                .checked_sub(1)
                .ok_or("unbalanced ']' in the pattern")?;
            rest = r.trim_start();
            continue;
        }
        if expect_term {
            let (lhs, r) = rest
                .split_once(char::is_whitespace)
                .ok_or("pattern ends inside a comparison")?;
            let r = r.trim_start();
            let Some(r) = r.strip_prefix('=') else {
                return Ok(None);
            };
            let r = r.trim_start();
            let r = r
                .strip_prefix('\'')
                .ok_or("comparison value is not a quoted string")?;
            // STIX escapes ' and \ with a backslash.
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return Err("unterminated string in the pattern".into()),
                    },
                    Some((i, '\'')) => break i,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated string in the pattern".into()),
                }
            };
            out.push((lhs.to_string(), value));
            rest = r[end + 1..].trim_start();
            expect_term = false;
        } else if let Some(r) = rest.strip_prefix("OR") {
            rest = r.trim_start();
            expect_term = true;
        } else {
            return Ok(None);
        }
    }
    if depth != 0 {
        return Err("unbalanced '[' in the pattern".into());
    }
    if expect_term {
        return Err("pattern ends with OR or holds no comparison".into());
    }
    Ok(Some(out))
}

/// MISP: one event (`{"Event": …}`), a list of them, or a REST search
/// answer (`{"response": [{"Event": …}, …]}`); attributes of the events and
/// of their objects. Types that can match a flow: ip-src, ip-dst (and their
/// `|port` forms), domain, hostname, url, domain|ip.
fn parse_misp(v: &Value) -> Result<Feed, FeedError> {
    let mut feed = Feed {
        format: "misp",
        ..Feed::default()
    };
    let events: Vec<(String, &Value)> = match v {
        Value::Object(m) if m.contains_key("Event") => vec![("Event".into(), &m["Event"])],
        Value::Object(m) if m.get("response").is_some_and(Value::is_array) => m["response"]
            .as_array()
            .expect("checked")
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("response[{i}].Event"), e.get("Event").unwrap_or(e)))
            .collect(),
        Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("[{i}].Event"), e.get("Event").unwrap_or(e)))
            .collect(),
        _ => {
            return Err(err(
                "top level",
                "neither a STIX bundle nor a MISP export ({\"Event\": …}, {\"response\": […]} or a list of events)",
            ))
        }
    };
    for (at, e) in events {
        let info = e.get("info").and_then(Value::as_str).unwrap_or("");
        let mut attrs: Vec<(String, &Value)> = Vec::new();
        if let Some(a) = e.get("Attribute").and_then(Value::as_array) {
            attrs.extend(
                a.iter()
                    .enumerate()
                    .map(|(i, x)| (format!("{at}.Attribute[{i}]"), x)),
            );
        }
        if let Some(objs) = e.get("Object").and_then(Value::as_array) {
            for (j, o) in objs.iter().enumerate() {
                if let Some(a) = o.get("Attribute").and_then(Value::as_array) {
                    attrs.extend(
                        a.iter()
                            .enumerate()
                            .map(|(i, x)| (format!("{at}.Object[{j}].Attribute[{i}]"), x)),
                    );
                }
            }
        }
        if e.get("Attribute").is_none() && e.get("Object").is_none() {
            return Err(err(&at, "event without \"Attribute\" or \"Object\""));
        }
        for (aat, a) in attrs {
            let ty = a
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| err(&aat, "attribute without a \"type\""))?;
            let value = a
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| err(&aat, "attribute without a \"value\""))?;
            let reference = a
                .get("uuid")
                .and_then(Value::as_str)
                .map_or_else(|| aat.clone(), str::to_string);
            let parts: Vec<(Kind, &str)> = match ty {
                "ip-src" | "ip-dst" => vec![(Kind::Ip, value)],
                "ip-src|port" | "ip-dst|port" => {
                    vec![(Kind::Ip, value.rsplit_once('|').map_or(value, |(ip, _)| ip))]
                }
                "domain" | "hostname" => vec![(Kind::Domain, value)],
                "url" => vec![(Kind::Url, value)],
                "domain|ip" => match value.split_once('|') {
                    Some((d, ip)) => vec![(Kind::Domain, d), (Kind::Ip, ip)],
                    None => {
                        return Err(err(
                            &aat,
                            format!("domain|ip value {value:?} lacks the '|'"),
                        ))
                    }
                },
                other => {
                    feed.skip(other);
                    continue;
                }
            };
            let seen = |k: &str| {
                a.get(k)
                    .and_then(Value::as_str)
                    .and_then(|t| rfc3339(t).or_else(|| t.parse().ok()))
                    .unwrap_or(0)
            };
            for (kind, v) in parts {
                let mut ind =
                    indicator(kind, v, reference.clone()).map_err(|why| err(&aat, why))?;
                ind.description = a
                    .get("comment")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                    .unwrap_or(info)
                    .to_string();
                ind.valid_from = seen("first_seen");
                ind.valid_until = seen("last_seen");
                feed.indicators.push(ind);
            }
        }
    }
    Ok(feed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(f: &Feed) -> Vec<(&str, &str)> {
        f.indicators
            .iter()
            .map(|i| (i.kind.name(), i.matches.as_str()))
            .collect()
    }

    #[test]
    fn stix_equalities_are_loaded_and_the_rest_skipped() {
        let bundle = r#"{"type": "bundle", "id": "bundle--1", "objects": [
          {"type": "identity", "id": "identity--1", "name": "CERT"},
          {"type": "indicator", "id": "indicator--a", "name": "C2", "valid_from": "2026-11-01T00:00:00Z",
           "pattern_type": "stix", "pattern": "[ipv4-addr:value = '203.0.113.7'] OR [domain-name:value = 'Evil.Example.']"},
          {"type": "indicator", "id": "indicator--b", "valid_from": "2026-11-01T00:00:00Z", "valid_until": "2027-01-01T00:00:00Z",
           "pattern": "[url:value = 'https://cdn.bad.example:8443/x?y=1' OR ipv6-addr:value = '2001:DB8::1']"},
          {"type": "indicator", "id": "indicator--c", "valid_from": "2026-11-01T00:00:00Z",
           "pattern": "[file:hashes.'SHA-256' = 'aa']"},
          {"type": "indicator", "id": "indicator--d", "valid_from": "2026-11-01T00:00:00Z",
           "pattern": "[ipv4-addr:value = '198.51.100.1' AND network-traffic:dst_port = 502]"},
          {"type": "indicator", "id": "indicator--e", "valid_from": "2026-11-01T00:00:00Z",
           "pattern": "[domain-name:value = 'it\\'s.example']", "pattern_type": "sigma"}
        ]}"#;
        let f = parse(bundle, None).unwrap();
        assert_eq!(f.format, "stix");
        assert_eq!(
            matches(&f),
            vec![
                ("ip", "203.0.113.7"),
                ("domain", "evil.example"),
                ("url", "cdn.bad.example"),
                ("ip", "2001:db8::1"),
            ]
        );
        assert_eq!(f.indicators[0].description, "C2");
        assert_eq!(f.indicators[2].valid_until, 1_798_761_600);
        assert_eq!(f.skipped.values().sum::<usize>(), 3, "{:?}", f.skipped);

        // Errors name the object (or the JSON position) and load nothing.
        let bad_ip = bundle.replace("203.0.113.7", "203.0.113.777");
        assert_eq!(
            parse(&bad_ip, None).unwrap_err().at,
            "objects[1] (indicator--a)"
        );
        let unterminated = bundle.replace("'Evil.Example.'", "'Evil.Example.");
        assert!(parse(&unterminated, None)
            .unwrap_err()
            .why
            .contains("unterminated"));
        let e = parse(
            &bundle.replace("\"objects\": [", "\"objects\": [,"),
            Some(Format::Stix),
        )
        .unwrap_err();
        assert!(e.at.starts_with("line 1, column "), "{e}");
        let no_time = bundle.replace(r#""valid_from": "2026-11-01T00:00:00Z","#, "");
        assert!(parse(&no_time, None)
            .unwrap_err()
            .why
            .contains("valid_from"));
    }

    #[test]
    fn misp_exports_load_the_attributes_that_can_match_a_flow() {
        let event = r#"{"Event": {"info": "Campaign against port cranes", "uuid": "e1",
          "Attribute": [
            {"type": "ip-dst|port", "value": "192.0.2.50|4444", "uuid": "a1", "first_seen": "2026-10-01T00:00:00Z"},
            {"type": "hostname", "value": "update.crane-vendor.example", "uuid": "a2", "comment": "fake update site"},
            {"type": "md5", "value": "d41d8cd98f00b204e9800998ecf8427e", "uuid": "a3"}
          ],
          "Object": [{"name": "domain-ip", "Attribute": [
            {"type": "domain|ip", "value": "c2.example|198.51.100.9", "uuid": "a4"}]}]}}"#;
        let f = parse(event, None).unwrap();
        assert_eq!(f.format, "misp");
        assert_eq!(
            matches(&f),
            vec![
                ("ip", "192.0.2.50"),
                ("domain", "update.crane-vendor.example"),
                ("domain", "c2.example"),
                ("ip", "198.51.100.9"),
            ]
        );
        assert_eq!(f.indicators[0].description, "Campaign against port cranes");
        assert_eq!(f.indicators[1].description, "fake update site");
        assert_eq!(f.indicators[0].valid_from, 1_790_812_800);
        assert_eq!(f.skipped.get("md5"), Some(&1));
        let wrapped = format!("{{\"response\": [{event}]}}");
        assert_eq!(parse(&wrapped, None).unwrap().indicators.len(), 4);
        let bad = event.replace("c2.example|198", "c2.example/198");
        let e = parse(&bad, None).unwrap_err();
        assert_eq!(e.at, "Event.Object[0].Attribute[0]", "{e}");
    }

    #[test]
    fn text_lists_take_ips_domains_and_urls_with_line_numbers_on_error() {
        let list = "# blocklist\n203.0.113.7\nevil.example., C2 domain\n\nhttp://198.51.100.3/drop.bin\t\"dropper\"\n";
        let f = parse(list, None).unwrap();
        assert_eq!(f.format, "text");
        assert_eq!(
            matches(&f),
            vec![
                ("ip", "203.0.113.7"),
                ("domain", "evil.example"),
                ("url", "198.51.100.3")
            ]
        );
        assert_eq!(f.indicators[1].description, "C2 domain");
        assert_eq!(f.indicators[2].reference, "line 5");
        let e = parse("203.0.113.7\nnot a domain!\n", None).unwrap_err();
        assert_eq!(e.at, "line 2");
    }
}

//! What a batch may hold, in one place: the sensor never makes more (it
//! caps what it records to these), and the collector refuses a payload that
//! holds more before materialising any of it ([`check_shape`] walks the
//! protobuf wire format without allocating). Without that, a few KB of zstd
//! expand to megabytes of wire that prost would turn into gigabytes of
//! empty records, operations or strings.
//!
//! [`check_flow`] is the other half: what makes one decoded flow record
//! storable. Ingest counts (and, when no record of a batch is storable,
//! refuses) what fails it; the sink stores every other record of the batch
//! and dead-letters those alone.

use prost::encoding::{decode_key, decode_varint, WireType};

use crate::v1::FlowRecord;

/// Operations in one flow record.
pub const MAX_OPERATIONS: usize = 64;
/// Indicators (DNS names, TLS SNI, HTTP hosts, MQTT topics) in one flow.
pub const MAX_INDICATORS: usize = 16;
/// Bytes of one indicator.
pub const MAX_INDICATOR_LEN: usize = 128;
/// Addresses of one asset.
pub const MAX_ASSET_IPS: usize = 16;
/// Protocols, or roles, of one asset.
pub const MAX_ASSET_NAMES: usize = 32;
/// Bytes of a name: application protocol, operation, asset protocol or role.
pub const MAX_NAME_LEN: usize = 64;
/// Bytes of one field of a device's identity (vendor, product, firmware,
/// serial) or of one software banner.
pub const MAX_IDENTITY_LEN: usize = 128;
/// Software banners of one asset.
pub const MAX_ASSET_SOFTWARE: usize = 8;
/// Bytes of a free text: sensor id, vendor, software version, reason.
pub const MAX_TEXT_LEN: usize = 1024;
/// Bytes of an IP address (16 for IPv6) or a MAC (6).
pub const MAX_ADDRESS_LEN: usize = 16;

/// Why a payload's shape is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("{count} records exceed the limit of {max}")]
    TooManyRecords { count: usize, max: usize },
    #[error("{field}: {count} entries in one record exceed the limit of {max}")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{field}: {len} bytes exceed the limit of {max}")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("not a valid protobuf message: {0}")]
    Malformed(&'static str),
}

/// Why one flow record cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("{side} address of {len} bytes (expected 4 or 16)")]
    BadAddress { side: &'static str, len: usize },
    #[error("{side} port {port} out of range")]
    BadPort { side: &'static str, port: u32 },
}

/// Checks that a flow record can be stored: addresses of 4 or 16 bytes,
/// ports below 65536.
pub fn check_flow(f: &FlowRecord) -> Result<(), RecordError> {
    for (side, ip) in [("client", &f.client_ip), ("server", &f.server_ip)] {
        if ip.len() != 4 && ip.len() != 16 {
            return Err(RecordError::BadAddress {
                side,
                len: ip.len(),
            });
        }
    }
    for (side, port) in [("client", f.client_port), ("server", f.server_port)] {
        if port > u16::MAX as u32 {
            return Err(RecordError::BadPort { side, port });
        }
    }
    Ok(())
}

/// Checks the serialized `Batch` in `raw`: at most `max_records` records
/// (flows, assets and statuses together), and every nested list and string
/// within the limits above. Cost: one pass over the bytes, no allocation.
pub fn check_shape(raw: &[u8], max_records: usize) -> Result<(), ShapeError> {
    let mut records = 0usize;
    fields(raw, |tag, v| {
        match (tag, v) {
            (2, Value::Bytes(b)) => text("sensor_id", b, MAX_TEXT_LEN)?,
            (4..=6, Value::Bytes(b)) => {
                records += 1;
                if records > max_records {
                    return Err(ShapeError::TooManyRecords {
                        count: records,
                        max: max_records,
                    });
                }
                match tag {
                    4 => flow(b)?,
                    5 => asset(b)?,
                    _ => status(b)?,
                }
            }
            _ => {}
        }
        Ok(())
    })
}

fn flow(b: &[u8]) -> Result<(), ShapeError> {
    let (mut ops, mut indicators) = (0, 0);
    fields(b, |tag, v| {
        let Value::Bytes(b) = v else { return Ok(()) };
        match tag {
            3 => text("client_ip", b, MAX_ADDRESS_LEN),
            4 => text("server_ip", b, MAX_ADDRESS_LEN),
            10 => text("app_protocol", b, MAX_NAME_LEN),
            13 => {
                count("operations", &mut ops, MAX_OPERATIONS)?;
                fields(b, |tag, v| match (tag, v) {
                    (2, Value::Bytes(b)) => text("operation name", b, MAX_NAME_LEN),
                    _ => Ok(()),
                })
            }
            14 => {
                count("indicators", &mut indicators, MAX_INDICATORS)?;
                text("indicator", b, MAX_INDICATOR_LEN)
            }
            _ => Ok(()),
        }
    })
}

fn asset(b: &[u8]) -> Result<(), ShapeError> {
    let (mut ips, mut protocols, mut roles, mut software) = (0, 0, 0, 0);
    fields(b, |tag, v| {
        let Value::Bytes(b) = v else { return Ok(()) };
        match tag {
            1 => text("mac", b, MAX_ADDRESS_LEN),
            2 => {
                count("asset ips", &mut ips, MAX_ASSET_IPS)?;
                text("asset ip", b, MAX_ADDRESS_LEN)
            }
            3 => text("vendor", b, MAX_TEXT_LEN),
            6 => {
                count("asset protocols", &mut protocols, MAX_ASSET_NAMES)?;
                text("asset protocol", b, MAX_NAME_LEN)
            }
            7 => {
                count("asset roles", &mut roles, MAX_ASSET_NAMES)?;
                text("asset role", b, MAX_NAME_LEN)
            }
            8 => text("device_vendor", b, MAX_IDENTITY_LEN),
            9 => text("product", b, MAX_IDENTITY_LEN),
            10 => text("firmware", b, MAX_IDENTITY_LEN),
            11 => text("serial", b, MAX_IDENTITY_LEN),
            12 => text("identity_protocol", b, MAX_NAME_LEN),
            13 => {
                count("asset software", &mut software, MAX_ASSET_SOFTWARE)?;
                text("asset software", b, MAX_IDENTITY_LEN)
            }
            _ => Ok(()),
        }
    })
}

fn status(b: &[u8]) -> Result<(), ShapeError> {
    fields(b, |tag, v| match (tag, v) {
        (8, Value::Bytes(b)) => text("software_version", b, MAX_TEXT_LEN),
        (13, Value::Bytes(b)) => text("set_aside_reason", b, MAX_TEXT_LEN),
        _ => Ok(()),
    })
}

fn count(field: &'static str, n: &mut usize, max: usize) -> Result<(), ShapeError> {
    *n += 1;
    if *n > max {
        return Err(ShapeError::TooMany {
            field,
            count: *n,
            max,
        });
    }
    Ok(())
}

fn text(field: &'static str, b: &[u8], max: usize) -> Result<(), ShapeError> {
    if b.len() > max {
        return Err(ShapeError::TooLong {
            field,
            len: b.len(),
            max,
        });
    }
    Ok(())
}

/// A field's value on the wire (fixed-width values are skipped).
enum Value<'a> {
    Varint,
    Bytes(&'a [u8]),
}

/// Calls `f` with every field of the message in `buf`, in order.
fn fields<'a>(
    mut buf: &'a [u8],
    mut f: impl FnMut(u32, Value<'a>) -> Result<(), ShapeError>,
) -> Result<(), ShapeError> {
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(|_| ShapeError::Malformed("bad key"))?;
        let value = match wire {
            WireType::Varint => {
                decode_varint(&mut buf).map_err(|_| ShapeError::Malformed("bad varint"))?;
                Value::Varint
            }
            WireType::LengthDelimited => {
                let len =
                    decode_varint(&mut buf).map_err(|_| ShapeError::Malformed("bad length"))?;
                if len > buf.len() as u64 {
                    return Err(ShapeError::Malformed("length past the end"));
                }
                let (v, rest) = buf.split_at(len as usize);
                buf = rest;
                Value::Bytes(v)
            }
            WireType::ThirtyTwoBit | WireType::SixtyFourBit => {
                let n = if wire == WireType::ThirtyTwoBit { 4 } else { 8 };
                if buf.len() < n {
                    return Err(ShapeError::Malformed("fixed value past the end"));
                }
                buf = &buf[n..];
                Value::Varint
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(ShapeError::Malformed("groups are not used"))
            }
        };
        f(tag, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1::{AssetObservation, Batch, FlowRecord, Operation, SensorStatus};

    fn full_batch() -> Batch {
        let op = Operation {
            name: "x".repeat(MAX_NAME_LEN),
            ..Operation::default()
        };
        Batch {
            seq: 1,
            sensor_id: "s".repeat(MAX_TEXT_LEN),
            flows: vec![
                FlowRecord {
                    client_ip: vec![1; 16],
                    server_ip: vec![2; 4],
                    app_protocol: "modbus".into(),
                    operations: vec![op; MAX_OPERATIONS],
                    indicators: vec!["i".repeat(MAX_INDICATOR_LEN); MAX_INDICATORS],
                    ..FlowRecord::default()
                };
                3
            ],
            assets: vec![AssetObservation {
                mac: vec![0; 6],
                ips: vec![vec![10, 0, 0, 1]; MAX_ASSET_IPS],
                vendor: "v".repeat(MAX_TEXT_LEN),
                protocols: vec!["p".into(); MAX_ASSET_NAMES],
                roles: vec!["r".into(); MAX_ASSET_NAMES],
                device_vendor: "d".repeat(MAX_IDENTITY_LEN),
                firmware: "f".repeat(MAX_IDENTITY_LEN),
                software: vec!["s".repeat(MAX_IDENTITY_LEN); MAX_ASSET_SOFTWARE],
                ..AssetObservation::default()
            }],
            status: vec![SensorStatus {
                software_version: "1".into(),
                set_aside_reason: "r".repeat(MAX_TEXT_LEN),
                ..SensorStatus::default()
            }],
            ..Batch::default()
        }
    }

    #[test]
    fn a_batch_at_every_limit_passes() {
        assert_eq!(check_shape(&full_batch().encode_to_vec(), 5), Ok(()));
        assert_eq!(check_shape(&[], 0), Ok(()));
    }

    #[test]
    fn one_past_any_limit_is_refused_with_the_field() {
        let refused = |b: Batch, max_records: usize| check_shape(&b.encode_to_vec(), max_records);
        assert!(matches!(
            refused(full_batch(), 4),
            Err(ShapeError::TooManyRecords { count: 5, max: 4 })
        ));
        type Change = Box<dyn Fn(&mut Batch)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "operations",
                Box::new(|b| b.flows[1].operations.push(Operation::default())),
            ),
            (
                "indicators",
                Box::new(|b| b.flows[2].indicators.push("x".into())),
            ),
            (
                "indicator",
                Box::new(|b| b.flows[0].indicators[3].push('x')),
            ),
            ("client_ip", Box::new(|b| b.flows[0].client_ip.push(0))),
            (
                "operation name",
                Box::new(|b| b.flows[0].operations[0].name.push('x')),
            ),
            ("asset ips", Box::new(|b| b.assets[0].ips.push(vec![1]))),
            (
                "asset roles",
                Box::new(|b| b.assets[0].roles.push("r".into())),
            ),
            ("vendor", Box::new(|b| b.assets[0].vendor.push('v'))),
            (
                "device_vendor",
                Box::new(|b| b.assets[0].device_vendor.push('d')),
            ),
            ("firmware", Box::new(|b| b.assets[0].firmware.push('f'))),
            (
                "asset software",
                Box::new(|b| b.assets[0].software.push("s".into())),
            ),
            (
                "set_aside_reason",
                Box::new(|b| b.status[0].set_aside_reason.push('r')),
            ),
            ("sensor_id", Box::new(|b| b.sensor_id.push('s'))),
        ];
        for (field, change) in cases {
            let mut b = full_batch();
            change(&mut b);
            let err = refused(b, 5).unwrap_err();
            let named = match &err {
                ShapeError::TooMany { field, .. } | ShapeError::TooLong { field, .. } => *field,
                _ => "",
            };
            assert_eq!(named, field, "{err}");
        }
    }

    #[test]
    fn millions_of_empty_records_are_refused_at_the_limit() {
        // 2 bytes each on the wire (field 4, length 0).
        let wire = [0x22u8, 0x00].repeat(1_000_000);
        assert_eq!(
            check_shape(&wire, 50_000),
            Err(ShapeError::TooManyRecords {
                count: 50_001,
                max: 50_000
            })
        );
    }

    #[test]
    fn a_flow_is_storable_with_4_or_16_byte_addresses_and_16_bit_ports() {
        let ok = FlowRecord {
            client_ip: vec![10, 0, 0, 1],
            server_ip: vec![0; 16],
            client_port: 65535,
            ..FlowRecord::default()
        };
        assert_eq!(check_flow(&ok), Ok(()));
        let mut bad = ok.clone();
        bad.server_ip = vec![1, 2, 3];
        assert_eq!(
            check_flow(&bad),
            Err(RecordError::BadAddress {
                side: "server",
                len: 3
            })
        );
        let mut bad = ok.clone();
        bad.client_ip.clear();
        assert!(check_flow(&bad).is_err());
        let mut bad = ok;
        bad.server_port = 65536;
        assert_eq!(
            check_flow(&bad),
            Err(RecordError::BadPort {
                side: "server",
                port: 65536
            })
        );
    }

    #[test]
    fn truncated_or_invalid_wire_is_malformed() {
        let wire = full_batch().encode_to_vec();
        for cut in [1, 7, wire.len() / 2, wire.len() - 1] {
            // A cut inside a length-delimited field runs past the end.
            let r = check_shape(&wire[..cut], 5);
            assert!(matches!(r, Err(ShapeError::Malformed(_)) | Ok(())), "{r:?}");
        }
        assert!(matches!(
            check_shape(&[0x23], 5),
            Err(ShapeError::Malformed(_))
        ));
    }
}

//! Passive asset inventory: which devices are on the monitored network, by
//! MAC address, with their IP addresses, vendor (IEEE OUI registry), first and
//! last time seen, the application protocols they speak and the roles those
//! imply. An [`AssetObservation`] is produced when an asset appears or one of
//! these facts changes, never per packet.
//!
//! Vendor names come from the IEEE MA-L registry as shipped by Debian's
//! `ieee-data` package (`/usr/share/ieee-data/oui.csv`); another copy can be
//! given with `--oui-file`. Without it, vendors are left empty.
//!
//! Roles: the server side of Modbus, S7comm(-plus), DNP3, EtherNet/IP and
//! IEC-104 is a `controller`, of OPC UA an `opcua_server`; both sides of
//! BACnet are `bacnet_device`s; the sender of NMEA 0183 sentences is a
//! `navigation_device`; the server side of SSH, RDP, VNC and Telnet a
//! `remote_access_server`; a client issuing write, control or program
//! operations is an `engineering_station`, one that only reads an
//! `ot_client`; a MAC behind which more than [`MAX_ASSET_IPS`] addresses appear is
//! a `gateway`.
//!
//! Identity: what a device says about itself in its own replies
//! ([`DeviceIdentity`]: Modbus Read Device Identification, EtherNet/IP
//! ListIdentity, S7 SZL, BACnet, OPC UA) is kept on its asset while the
//! asset has one address (see [`AssetTable::on_identity`]), the latest value
//! of each field; a field that changes (a firmware update, or a device that
//! claims to be another) is a change like any other. Banners (SSH version
//! lines, HTTP `Server` headers, FTP greetings, OPC UA ProductUris, BACnet
//! application software versions) are kept as its software, at most
//! [`MAX_ASSET_SOFTWARE`].

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;

use tidewatch_proto::v1::{AssetObservation, OperationClass};

use crate::protocols::{AppProto, DeviceIdentity, Roles};
use tidewatch_proto::limits::MAX_ASSET_SOFTWARE;
use tidewatch_proto::util::ip_bytes;

/// Addresses kept per asset (the wire protocol's limit).
pub use tidewatch_proto::limits::MAX_ASSET_IPS;
/// Assets kept; beyond it new MACs are counted, not tracked.
pub const MAX_ASSETS: usize = 65_536;

/// MA-L prefix (24 bits) -> organisation.
#[derive(Debug, Default)]
pub struct Oui(HashMap<u32, String>);

impl Oui {
    /// Loads Debian's `oui.csv` (Registry,Assignment,Organization Name,...).
    pub fn load(path: &Path) -> std::io::Result<Oui> {
        let text = std::fs::read_to_string(path)?;
        let mut map = HashMap::with_capacity(40_000);
        for line in text.lines().skip(1) {
            let Some(rest) = line.strip_prefix("MA-L,") else {
                continue;
            };
            let Some((hex, org)) = rest.split_once(',') else {
                continue;
            };
            let Ok(prefix) = u32::from_str_radix(hex, 16) else {
                continue;
            };
            let name = if let Some(q) = org.strip_prefix('"') {
                q.split('"').next().unwrap_or("")
            } else {
                org.split(',').next().unwrap_or("")
            };
            let name = name.trim().trim_end_matches(',').trim();
            if !name.is_empty() {
                map.insert(prefix, name.to_string());
            }
        }
        Ok(Oui(map))
    }

    pub fn vendor(&self, mac: &[u8; 6]) -> Option<&str> {
        let prefix = (mac[0] as u32) << 16 | (mac[1] as u32) << 8 | mac[2] as u32;
        self.0.get(&prefix).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Asset {
    ips: BTreeSet<IpAddr>,
    first_us: i64,
    last_us: i64,
    protocols: BTreeSet<&'static str>,
    roles: BTreeSet<&'static str>,
    /// Boxed: most assets never say who they are.
    identity: Option<Box<Identity>>,
    changed: bool,
}

/// What an asset said about itself, the latest of each field.
#[derive(Debug, Clone, Default)]
struct Identity {
    vendor: String,
    /// `vendor` is a number for the maker ([`DeviceIdentity::vendor_id`]),
    /// which a name replaces.
    vendor_is_id: bool,
    product: String,
    firmware: String,
    serial: String,
    /// The protocol the latest of vendor, product, firmware or serial
    /// came from.
    protocol: &'static str,
    software: BTreeSet<String>,
}

/// One side of a finished flow, as seen by the inventory.
pub struct FlowSide<'a> {
    pub mac: Option<[u8; 6]>,
    pub ip: &'a [u8],
}

pub struct AssetTable {
    oui: Oui,
    assets: HashMap<[u8; 6], Asset>,
    /// New MACs not tracked because the table was full.
    pub overflow: u64,
}

fn unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 0x01 == 0 && *mac != [0; 6]
}

impl AssetTable {
    pub fn new(oui: Oui) -> Self {
        AssetTable {
            oui,
            assets: HashMap::new(),
            overflow: 0,
        }
    }

    fn asset(&mut self, mac: [u8; 6], ts: i64) -> Option<&mut Asset> {
        if !unicast(&mac) {
            return None;
        }
        if !self.assets.contains_key(&mac) && self.assets.len() >= MAX_ASSETS {
            self.overflow += 1;
            return None;
        }
        let a = self.assets.entry(mac).or_insert_with(|| Asset {
            ips: BTreeSet::new(),
            first_us: ts,
            last_us: ts,
            protocols: BTreeSet::new(),
            roles: BTreeSet::new(),
            identity: None,
            changed: true,
        });
        a.first_us = a.first_us.min(ts);
        a.last_us = a.last_us.max(ts);
        Some(a)
    }

    /// A frame sent by `mac` from `ip` (IP packets and ARP senders).
    pub fn on_address(&mut self, mac: [u8; 6], ip: IpAddr, ts: i64) {
        let usable = match ip {
            IpAddr::V4(v) => !(v.is_unspecified() || v.is_broadcast() || v.is_multicast()),
            IpAddr::V6(v) => !(v.is_unspecified() || v.is_multicast()),
        };
        let Some(a) = self.asset(mac, ts) else { return };
        if !usable || a.ips.contains(&ip) {
            return;
        }
        if a.ips.len() < MAX_ASSET_IPS {
            a.ips.insert(ip);
            a.changed = true;
            // A second address: what was said may have come from a device
            // beyond this MAC (see `on_identity`).
            if a.ips.len() > 1 {
                a.identity = None;
            }
        } else if a.roles.insert("gateway") {
            a.changed = true;
        }
    }

    /// Protocols and roles from a finished flow.
    pub fn on_flow(
        &mut self,
        client: FlowSide<'_>,
        server: FlowSide<'_>,
        app: Option<AppProto>,
        client_classes: &[OperationClass],
        ts: i64,
    ) {
        let Some(app) = app else { return };
        let name = app.name();
        let (client_role, server_role) = match app.protocol().roles {
            Roles::None => (None, None),
            Roles::Controller => {
                let writes = client_classes.iter().any(|c| {
                    matches!(
                        c,
                        OperationClass::Write | OperationClass::Control | OperationClass::Program
                    )
                });
                (
                    Some(if writes {
                        "engineering_station"
                    } else {
                        "ot_client"
                    }),
                    Some("controller"),
                )
            }
            Roles::Fixed { client, server } => (client, server),
        };
        for (side, role) in [(client, client_role), (server, server_role)] {
            let Some(mac) = side.mac else { continue };
            let _ = side.ip;
            if let Some(a) = self.asset(mac, ts) {
                if a.protocols.insert(name) {
                    a.changed = true;
                }
                if let Some(r) = role {
                    if a.roles.insert(r) {
                        a.changed = true;
                    }
                }
            }
        }
    }

    /// What the device behind `mac` said about itself, from `ip`, in a
    /// payload of `protocol`. Kept only while `ip` is the asset's one
    /// address (and forgotten when a second appears): behind a MAC with
    /// several (a router, a gateway) the replies come from the devices
    /// beyond it, whose identities are not its own.
    pub fn on_identity(
        &mut self,
        mac: [u8; 6],
        ip: IpAddr,
        protocol: &'static str,
        said: DeviceIdentity,
        ts: i64,
    ) {
        let Some(a) = self.asset(mac, ts) else { return };
        if a.ips.iter().any(|known| *known != ip) || a.roles.contains("gateway") {
            return;
        }
        let id = a.identity.get_or_insert_with(Default::default);
        let mut changed = false;
        let mut described = false;
        if !said.vendor.is_empty() {
            id.vendor_is_id = false;
        } else if !said.vendor_id.is_empty() && (id.vendor.is_empty() || id.vendor_is_id) {
            id.vendor_is_id = true;
            if id.vendor != said.vendor_id {
                id.vendor = said.vendor_id;
                changed = true;
            }
            described = true;
        }
        for (field, value) in [
            (&mut id.vendor, said.vendor),
            (&mut id.product, said.product),
            (&mut id.firmware, said.firmware),
            (&mut id.serial, said.serial),
        ] {
            if !value.is_empty() {
                described = true;
                if *field != value {
                    *field = value;
                    changed = true;
                }
            }
        }
        if described && id.protocol != protocol {
            id.protocol = protocol;
            changed = true;
        }
        if !said.software.is_empty()
            && id.software.len() < MAX_ASSET_SOFTWARE
            && id.software.insert(said.software)
        {
            changed = true;
        }
        a.changed |= changed;
    }

    fn observation(&self, mac: &[u8; 6], a: &Asset) -> AssetObservation {
        let id = a.identity.as_deref().cloned().unwrap_or_default();
        AssetObservation {
            mac: mac.to_vec(),
            ips: a.ips.iter().map(|ip| ip_bytes(*ip)).collect(),
            vendor: self.oui.vendor(mac).unwrap_or_default().to_string(),
            first_seen_us: a.first_us,
            last_seen_us: a.last_us,
            protocols: a.protocols.iter().map(|s| s.to_string()).collect(),
            roles: a.roles.iter().map(|s| s.to_string()).collect(),
            device_vendor: id.vendor,
            product: id.product,
            firmware: id.firmware,
            serial: id.serial,
            identity_protocol: id.protocol.to_string(),
            software: id.software.into_iter().collect(),
        }
    }

    /// Assets that appeared or changed since the last call.
    pub fn take_changed(&mut self) -> Vec<AssetObservation> {
        let mut macs: Vec<[u8; 6]> = self
            .assets
            .iter()
            .filter(|(_, a)| a.changed)
            .map(|(m, _)| *m)
            .collect();
        macs.sort();
        let out = macs
            .iter()
            .map(|m| self.observation(m, &self.assets[m]))
            .collect();
        for m in &macs {
            if let Some(a) = self.assets.get_mut(m) {
                a.changed = false;
            }
        }
        out
    }

    /// The whole inventory, sorted by MAC.
    pub fn all(&self) -> Vec<AssetObservation> {
        let mut macs: Vec<&[u8; 6]> = self.assets.keys().collect();
        macs.sort();
        macs.into_iter()
            .map(|m| self.observation(m, &self.assets[m]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_only_when_facts_change() {
        let mut t = AssetTable::new(Oui::default());
        let m = [0, 0x0e, 0x8c, 1, 2, 3];
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        t.on_address(m, ip, 1);
        assert_eq!(t.take_changed().len(), 1);
        t.on_address(m, ip, 2);
        assert!(
            t.take_changed().is_empty(),
            "a repeat sighting is not a change"
        );
        t.on_flow(
            FlowSide { mac: None, ip: &[] },
            FlowSide {
                mac: Some(m),
                ip: &[],
            },
            AppProto::by_name("modbus"),
            &[],
            3,
        );
        let c = t.take_changed();
        assert_eq!(c[0].roles, vec!["controller"]);
        assert_eq!(c[0].protocols, vec!["modbus"]);
        assert_eq!(c[0].last_seen_us, 3);
        t.on_address([0xff; 6], ip, 4);
        assert_eq!(t.all().len(), 1, "broadcast MAC is no asset");
    }

    #[test]
    fn identity_is_kept_changes_are_changes_and_a_second_address_forgets_it() {
        let mut t = AssetTable::new(Oui::default());
        let (m, ip) = ([0, 0x0e, 0x8c, 1, 2, 3], "10.0.0.5".parse().unwrap());
        let said = |vendor: &str, vendor_id: &str, firmware: &str, software: &str| DeviceIdentity {
            vendor: vendor.into(),
            vendor_id: vendor_id.into(),
            firmware: firmware.into(),
            software: software.into(),
            ..DeviceIdentity::default()
        };
        t.on_address(m, ip, 1);
        t.on_identity(m, ip, "bacnet", said("", "BACnet vendor 42", "", ""), 2);
        assert_eq!(t.take_changed()[0].device_vendor, "BACnet vendor 42");
        t.on_identity(m, ip, "bacnet", said("Lithonia", "", "2.62", ""), 3);
        t.on_identity(m, ip, "bacnet", said("", "BACnet vendor 42", "", ""), 4);
        let c = t.take_changed();
        assert_eq!(
            (c[0].device_vendor.as_str(), c[0].firmware.as_str()),
            ("Lithonia", "2.62")
        );
        t.on_identity(m, ip, "bacnet", said("Lithonia", "", "2.62", ""), 5);
        assert!(
            t.take_changed().is_empty(),
            "the same identity again is no change"
        );
        t.on_identity(m, ip, "bacnet", said("", "", "2.70", ""), 6);
        assert_eq!(t.take_changed()[0].firmware, "2.70");
        for i in 0..20 {
            t.on_identity(m, ip, "ssh", said("", "", "", &format!("SSH-2.0-x{i}")), 7);
        }
        let c = t.take_changed();
        assert_eq!(c[0].software.len(), MAX_ASSET_SOFTWARE);
        assert_eq!(
            c[0].identity_protocol, "bacnet",
            "banners do not name the source"
        );
        // Another address behind the MAC: nothing it says is the MAC's.
        let other = "10.0.0.6".parse().unwrap();
        t.on_identity(m, other, "modbus", said("Other", "", "", ""), 8);
        assert_eq!(t.all()[0].device_vendor, "Lithonia");
        t.on_address(m, other, 9);
        assert!(t.all()[0].device_vendor.is_empty() && t.all()[0].software.is_empty());
    }

    #[test]
    fn oui_csv_with_quoted_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("oui.csv");
        std::fs::write(&p, "Registry,Assignment,Organization Name,Organization Address\nMA-L,001B1B,\"Siemens AG,\",Karlsruhe DE\nMA-L,000E8C,Siemens AG,Regensburg\n").unwrap();
        let o = Oui::load(&p).unwrap();
        assert_eq!(o.vendor(&[0, 0x1b, 0x1b, 9, 9, 9]), Some("Siemens AG"));
        assert_eq!(o.len(), 2);
    }
}

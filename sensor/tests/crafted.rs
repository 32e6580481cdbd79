//! Crafted captures for the cases the reference corpus lacks: 802.1Q/QinQ,
//! IPv6, IPv4 fragments, Linux cooked capture (SLL and SLL2), TCP without a
//! handshake, idle timeouts and the flow-table cap; and the corpus itself
//! with every OT protocol moved to unusual ports (identification must not
//! depend on ports).

use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tidewatch_sensor::capture::PcapReader;

mod common;

fn read(pcap: &Path, args: &[&str]) -> Vec<Value> {
    common::read_json(pcap, args)
}

/// Classic pcap writer (microsecond timestamps).
struct Pcap(Vec<u8>);

impl Pcap {
    fn new(linktype: u32) -> Pcap {
        let mut v = Vec::new();
        v.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
        v.extend_from_slice(&2u16.to_le_bytes());
        v.extend_from_slice(&4u16.to_le_bytes());
        for x in [0u32, 0, 65535, linktype] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        Pcap(v)
    }
    fn add(&mut self, ts_us: u64, frame: &[u8]) {
        for x in [
            (ts_us / 1_000_000) as u32,
            (ts_us % 1_000_000) as u32,
            frame.len() as u32,
            frame.len() as u32,
        ] {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
        self.0.extend_from_slice(frame);
    }
    fn write(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&self.0)
            .unwrap();
        p
    }
}

fn eth(vlans: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x00, 0x1b, 0x1b, 0, 0, 1, 0x00, 0x0e, 0x8c, 0, 0, 2];
    for (i, v) in vlans.iter().enumerate() {
        f.extend_from_slice(
            &(if i == 0 && vlans.len() > 1 {
                0x88a8u16
            } else {
                0x8100
            })
            .to_be_bytes(),
        );
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    id: u16,
    frag: u16,
    l4: &[u8],
    total_l4: usize,
) -> Vec<u8> {
    let total = (20 + total_l4) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    // The header's total length describes this fragment only.
    let frag_len = (20 + l4.len()) as u16;
    h[2..4].copy_from_slice(&frag_len.to_be_bytes());
    let _ = total;
    h.extend_from_slice(l4);
    h
}

fn udp(sp: u16, dp: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sp.to_be_bytes());
    u.extend_from_slice(&dp.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// An Ethernet frame of one unfragmented IPv4 UDP datagram (`l4`: header
/// and payload, from [`udp`]).
fn eth_udp4(src: [u8; 4], dst: [u8; 4], id: u16, l4: &[u8]) -> Vec<u8> {
    eth(&[], 0x0800, &ipv4(src, dst, 17, id, 0, l4, l4.len()))
}

fn tcp(sp: u16, dp: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sp.to_be_bytes());
    t.extend_from_slice(&dp.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

const MODBUS_REQ: [u8; 12] = [0, 1, 0, 0, 0, 6, 1, 6, 0, 1, 0, 9];
const GGA: &[u8] = b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76\r\n";

#[test]
fn vlan_ipv6_fragments_and_tcp_without_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    let (c, s) = ([10, 0, 0, 9], [10, 0, 0, 1]);
    // QinQ-tagged Modbus write, no handshake, first packet from the client.
    let l4 = tcp(40001, 502, 0x18, &MODBUS_REQ);
    p.add(
        1_000_000,
        &eth(&[100, 7], 0x0800, &ipv4(c, s, 6, 1, 0, &l4, l4.len())),
    );
    // IPv6 NMEA over UDP.
    let mut a6 = [0u8; 16];
    a6[0] = 0xfd;
    a6[15] = 5;
    let mut b6 = a6;
    b6[15] = 6;
    let u6 = udp(50000, 10110, GGA);
    p.add(1_100_000, &eth(&[], 0x86dd, &ipv6(a6, b6, 17, &u6)));
    // A UDP datagram in two IPv4 fragments: the second carries no ports.
    let big = udp(40500, 47808, &[0x55; 100]);
    let (first, second) = big.split_at(48);
    p.add(
        1_200_000,
        &eth(&[], 0x0800, &ipv4(c, s, 17, 77, 0x2000, first, big.len())),
    );
    p.add(
        1_200_100,
        &eth(&[], 0x0800, &ipv4(c, s, 17, 77, 6, second, big.len())),
    );
    // An ARP frame: counted as non-IP, no flow.
    p.add(1_300_000, &eth(&[], 0x0806, &[0u8; 28]));
    let f = read(&p.write(dir.path(), "crafted.pcap"), &[]);
    assert_eq!(f.len(), 3, "{f:#?}");
    let modbus = f.iter().find(|x| x["server_port"] == 502).unwrap();
    assert_eq!(modbus["vlan"], 100, "outer VLAN id kept");
    assert_eq!(modbus["client_ip"], "10.0.0.9");
    assert_eq!(modbus["app_protocol"], "modbus");
    assert_eq!(modbus["operations"][0]["name"], "write_single_register");
    let v6 = f
        .iter()
        .find(|x| x["transport"] == "udp" && x["server_port"] == 10110)
        .unwrap();
    assert_eq!(v6["client_ip"], "fd00::5");
    assert_eq!(v6["app_protocol"], "nmea0183");
    assert_eq!(v6["c2s_bytes"], 40 + u6.len() as u64);
    let frag = f.iter().find(|x| x["server_port"] == 47808).unwrap();
    assert_eq!(
        frag["c2s_packets"], 2,
        "both fragments counted against their flow"
    );
    assert_eq!(
        frag["c2s_bytes"],
        (20 + first.len() + 20 + second.len()) as u64
    );
}

#[test]
fn linux_cooked_capture_sll_and_sll2() {
    let dir = tempfile::tempdir().unwrap();
    let l4 = udp(50000, 10110, GGA);
    let ip = ipv4([192, 168, 1, 2], [192, 168, 1, 3], 17, 1, 0, &l4, l4.len());
    let mut sll = Pcap::new(113);
    let mut f = vec![0, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0];
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    sll.add(5, &f);
    let mut sll2 = Pcap::new(276);
    let mut f2 = 0x0800u16.to_be_bytes().to_vec();
    f2.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0]);
    f2.extend_from_slice(&ip);
    sll2.add(5, &f2);
    for (name, cap) in [("sll.pcap", sll), ("sll2.pcap", sll2)] {
        let flows = read(&cap.write(dir.path(), name), &[]);
        assert_eq!(flows.len(), 1, "{name}");
        assert_eq!(flows[0]["app_protocol"], "nmea0183", "{name}");
        assert_eq!(flows[0]["c2s_bytes"], ip.len() as u64, "{name}");
    }
}

#[test]
fn idle_timeout_and_flow_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    // One conversation with a 90 s gap: two flows at --idle-timeout 60.
    for t in [0u64, 10, 100] {
        p.add(
            t * 1_000_000,
            &eth_udp4(
                [10, 1, 1, 1],
                [10, 1, 1, 255],
                1,
                &udp(40000, 47808, &[0x81, 0x0b, 0, 8, 1, 0, 0x10, 8]),
            ),
        );
    }
    // 500 distinct flows within a second.
    for i in 0..500u16 {
        p.add(
            200_000_000 + i as u64,
            &eth_udp4([10, 2, 0, 1], [10, 2, 0, 2], i, &udp(20000 + i, 5000, b"x")),
        );
    }
    let path = p.write(dir.path(), "timeouts.pcap");
    let f = read(&path, &["--idle-timeout", "60"]);
    let bac: Vec<&Value> = f.iter().filter(|x| x["server_port"] == 47808).collect();
    assert_eq!(bac.len(), 2);
    assert_eq!(
        bac[0]["c2s_packets"].as_u64().unwrap() + bac[1]["c2s_packets"].as_u64().unwrap(),
        3
    );
    assert_eq!(bac[0]["end"], "idle_timeout");
    assert_eq!(bac[0]["app_protocol"], "bacnet");
    // With a cap of 100 concurrent flows nothing is lost: evicted flows are
    // reported as such and every packet is still counted.
    let f = read(&path, &["--max-flows", "100"]);
    let packets: u64 = f
        .iter()
        .map(|x| x["c2s_packets"].as_u64().unwrap() + x["s2c_packets"].as_u64().unwrap())
        .sum();
    assert_eq!(packets, 503);
    assert!(f.iter().filter(|x| x["end"] == "evicted").count() >= 400);
}

/// Where the IP header starts in a frame of `linktype`, and whether it is
/// IPv4 (`Some(4)`) or IPv6 (`Some(6)`), for every link type the sensor
/// decodes: Ethernet (with VLAN/QinQ tags), Linux cooked (SLL, SLL2), BSD
/// loopback (host or network order) and raw IP.
fn ip_start(linktype: u32, d: &[u8]) -> Option<(usize, u8)> {
    let by_ethertype = |et: u16, at: usize| match et {
        0x0800 => Some((at, 4)),
        0x86dd => Some((at, 6)),
        _ => None,
    };
    let be16 = |at: usize| Some(u16::from_be_bytes([*d.get(at)?, *d.get(at + 1)?]));
    match linktype {
        1 => {
            let mut at = 12;
            let mut et = be16(at)?;
            while matches!(et, 0x8100 | 0x88a8) {
                at += 4;
                et = be16(at)?;
            }
            by_ethertype(et, at + 2)
        }
        113 => by_ethertype(be16(14)?, 16),
        276 => by_ethertype(be16(0)?, 20),
        0 | 108 => {
            let fam = d.get(..4)?;
            let fam = if linktype == 0 {
                u32::from_le_bytes(fam.try_into().ok()?)
            } else {
                u32::from_be_bytes(fam.try_into().ok()?)
            };
            match fam {
                2 => Some((4, 4)),
                24 | 28 | 30 => Some((4, 6)),
                _ => None,
            }
        }
        12 | 14 | 101 | 228 | 229 => match d.first()? >> 4 {
            4 => Some((0, 4)),
            6 => Some((0, 6)),
            _ => None,
        },
        _ => None,
    }
}

/// Rewrites the TCP/UDP ports in a capture of any link type the sensor
/// decodes; returns how many port fields it changed.
fn move_ports(src: &Path, dst: &Path, map: &dyn Fn(u16) -> u16) -> u64 {
    let mut r = PcapReader::open(src).unwrap();
    let mut out: Option<Pcap> = None;
    let mut changed = 0;
    while let Some(pkt) = r.next_packet().unwrap() {
        let w = out.get_or_insert_with(|| Pcap::new(pkt.linktype));
        let mut d = pkt.data.to_vec();
        let l4 = match ip_start(pkt.linktype, &d) {
            Some((ip, 4))
                if d.len() > ip + 20
                    && u16::from_be_bytes([d[ip + 6], d[ip + 7]]) & 0x1fff == 0 =>
            {
                Some((d[ip + 9], ip + ((d[ip] & 0x0f) as usize) * 4))
            }
            Some((ip, 6)) if d.len() > ip + 40 => Some((d[ip + 6], ip + 40)),
            _ => None,
        };
        if let Some((6 | 17, l4)) = l4 {
            if d.len() >= l4 + 4 {
                for off in [l4, l4 + 2] {
                    let port = u16::from_be_bytes([d[off], d[off + 1]]);
                    let moved = map(port);
                    changed += u64::from(moved != port);
                    d[off..off + 2].copy_from_slice(&moved.to_be_bytes());
                }
            }
        }
        w.add((pkt.ts_ns / 1000) as u64, &d);
    }
    std::fs::write(dst, &out.unwrap().0).unwrap();
    changed
}

#[test]
fn identification_survives_unusual_ports() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps");
    let dir = tempfile::tempdir().unwrap();
    let known = [
        502u16, 20000, 102, 44818, 2222, 47808, 2404, 4840, 48010, 10110, 1027, 2000, 8000, 3100,
    ];
    let map = |p: u16| {
        known
            .iter()
            .position(|k| *k == p)
            .map(|i| 31000 + i as u16 * 7)
            .unwrap_or(p)
    };
    let mut compared = 0;
    for sub in [
        "modbus", "dnp3", "s7comm", "enip", "bacnet", "iec104", "opcua", "nmea0183",
    ] {
        for e in std::fs::read_dir(corpus.join(sub)).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if !(name.ends_with(".pcap") || name.ends_with(".pcapng")) {
                continue;
            }
            let moved = dir.path().join(format!("{name}.moved.pcap"));
            let changed = move_ports(&path, &moved, &map);
            assert!(
                changed > 0,
                "{name}: no port moved (link type not handled?)"
            );
            let apps = |flows: Vec<Value>| {
                let mut v: Vec<String> = flows
                    .iter()
                    .map(|f| f["app_protocol"].to_string())
                    .collect();
                v.sort();
                v
            };
            let before = apps(read(
                &path,
                &["--idle-timeout", "1e9", "--active-timeout", "1e9"],
            ));
            let after = apps(read(
                &moved,
                &["--idle-timeout", "1e9", "--active-timeout", "1e9"],
            ));
            assert_eq!(
                before, after,
                "{name}: identification changed when ports moved"
            );
            assert!(
                before.iter().any(|a| a != "null"),
                "{name}: nothing identified"
            );
            compared += 1;
        }
    }
    assert!(compared >= 30, "only {compared} captures compared");
}

#[test]
fn asset_inventory_from_a_real_capture() {
    // snap7.pcap: an engineering station uploading blocks from a Siemens PLC.
    let pcap = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps/s7comm/snap7.pcap");
    let oui = Path::new("/usr/share/ieee-data/oui.csv");
    assert!(
        oui.exists(),
        "Debian's ieee-data is required (deploy/local/stack.sh install installs it)"
    );
    let assets = read(&pcap, &["--assets"]);
    assert_eq!(assets.len(), 2, "{assets:#?}");
    let plc = assets
        .iter()
        .find(|a| a["ips"][0] == "134.217.61.211")
        .unwrap();
    assert_eq!(plc["mac"], "00:0e:8c:d0:f9:cb");
    assert_eq!(plc["vendor"], "Siemens AG");
    assert_eq!(plc["roles"], serde_json::json!(["controller"]));
    assert_eq!(plc["protocols"], serde_json::json!(["s7comm"]));
    let es = assets
        .iter()
        .find(|a| a["ips"][0] == "134.217.61.131")
        .unwrap();
    assert_eq!(es["roles"], serde_json::json!(["engineering_station"]));
    // NMEA talker.
    let pcap =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps/nmea0183/second.pcapng");
    let assets = read(&pcap, &["--assets"]);
    assert!(
        assets
            .iter()
            .any(|a| a["roles"] == serde_json::json!(["navigation_device"])),
        "{assets:#?}"
    );
}

/// A copy of an Ethernet capture whose source MACs are made from the
/// source IPv4 address's last two bytes and the source TCP/UDP port
/// (02:a:b:0:hi:lo): loopback captures carry all-zero MACs, which are no
/// asset.
fn macs_from_ports(src: &Path, dst: &Path) {
    let mut r = PcapReader::open(src).unwrap();
    let mut out: Option<Pcap> = None;
    while let Some(pkt) = r.next_packet().unwrap() {
        assert_eq!(pkt.linktype, 1, "Ethernet captures only");
        let w = out.get_or_insert_with(|| Pcap::new(pkt.linktype));
        let mut d = pkt.data.to_vec();
        if let Some((ip, 4)) = ip_start(1, &d) {
            let l4 = ip + ((d[ip] & 0x0f) as usize) * 4;
            if d.len() >= l4 + 2 {
                let (a, b) = (d[ip + 14], d[ip + 15]);
                let (hi, lo) = (d[l4], d[l4 + 1]);
                d[6..12].copy_from_slice(&[2, a, b, 0, hi, lo]);
            }
        }
        w.add((pkt.ts_ns / 1000) as u64, &d);
    }
    std::fs::write(dst, &out.unwrap().0).unwrap();
}

#[test]
fn devices_identify_themselves_as_tshark_decodes_them() {
    // Expected values are tshark 4.0's fields on the same packets
    // (modbus.object_str_value; enip.lir.*; s7comm.szl.0011/001c.*).
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps");
    let dir = tempfile::tempdir().unwrap();
    let identity = |pcap: &Path, ip: &str, mac: Option<&str>| -> Value {
        let assets = read(pcap, &["--assets"]);
        let a = assets
            .iter()
            .find(|a| {
                a["ips"].as_array().unwrap().iter().any(|i| i == ip)
                    && mac.is_none_or(|m| a["mac"] == m)
            })
            .unwrap_or_else(|| panic!("no asset {ip} in {assets:#?}"));
        a["identity"].clone()
    };
    // Modbus Read Device Identification (43/14), objects 0-2, from the
    // server (127.0.0.1 port 502, so 02:00:01:00:01:f6 once MACs follow
    // addresses and ports).
    let modbus = dir.path().join("modbus.pcap");
    macs_from_ports(&corpus.join("modbus/modbus_example.pcap"), &modbus);
    assert_eq!(
        identity(&modbus, "127.0.0.1", Some("02:00:01:00:01:f6")),
        serde_json::json!({
            "vendor": "Zeek Modbus Test",
            "product": "Protocol Parsing is fun!",
            "firmware": "1.2.3.6",
            "serial": "",
            "protocol": "modbus",
        })
    );
    // EtherNet/IP ListIdentity: vendor 0x0001, revision 1027 (4.3), serial
    // 0x00524d8e, product name 1756-ENBT/A.
    assert_eq!(
        identity(
            &corpus.join("enip/enip_cip_example.pcap"),
            "10.1.1.164",
            None
        ),
        serde_json::json!({
            "vendor": "CIP vendor 1",
            "product": "1756-ENBT/A",
            "firmware": "4.3",
            "serial": "0x00524d8e",
            "protocol": "enip",
        })
    );
    // S7 Read SZL 0x0011 (MlfB; basic firmware Ausbg 22019 = 'V' 3 2,
    // Ausbe 519 = 7) and 0x001C (Serialn), from the CPU.
    assert_eq!(
        identity(&corpus.join("s7comm/snap7.pcap"), "134.217.61.211", None),
        serde_json::json!({
            "vendor": "Siemens",
            "product": "6ES7 315-2EH14-0AB0",
            "firmware": "V3.2.7",
            "serial": "S C-B1U393142011",
            "protocol": "s7comm",
        })
    );
    let s7ident = dir.path().join("s7ident.pcap");
    macs_from_ports(&corpus.join("s7comm/s7ident.pcap"), &s7ident);
    assert_eq!(
        identity(&s7ident, "172.17.0.2", Some("02:00:02:00:00:66"))["firmware"],
        "V3.2.6"
    );
    // BACnet: ReadProperty-ACKs of vendor-name, vendor-identifier (42),
    // model-name, firmware-revision and application-software-version from
    // 192.168.0.24; the name wins over the id. An I-Am gives the id alone.
    let bacnet = corpus.join("bacnet/bacnet_services.pcap");
    assert_eq!(
        identity(&bacnet, "192.168.0.24", None),
        serde_json::json!({
            "vendor": "Lithonia Lighting, Inc.",
            "product": "SYSC MLX",
            "firmware": "2.62",
            "serial": "",
            "protocol": "bacnet",
        })
    );
    let assets = read(&bacnet, &["--assets"]);
    let lighting = assets
        .iter()
        .find(|a| a["ips"][0] == "192.168.0.24")
        .unwrap();
    assert_eq!(
        lighting["software"],
        serde_json::json!(["application-software-version 16-Dec-2004"])
    );
    assert_eq!(
        identity(&bacnet, "192.168.0.50", None)["vendor"],
        "BACnet vendor 42"
    );
    // Behind a router's MAC (bacnet_example.pcap: one MAC, many devices'
    // I-Ams) nothing is attributed to the router.
    let routed = read(&corpus.join("bacnet/bacnet_example.pcap"), &["--assets"]);
    let router = routed
        .iter()
        .find(|a| a["mac"] == "d4:6a:6a:56:98:17")
        .unwrap();
    assert!(router["identity"].is_null(), "{router}");
    // OPC UA GetEndpoints response: ApplicationName and ProductUri (every
    // host of this capture shares one MAC, so MACs follow ports here too).
    let opcua = dir.path().join("opcua.pcap");
    macs_from_ports(
        &corpus.join("opcua/opcua_with-gap_with-handshake.pcap"),
        &opcua,
    );
    let server = "02:e0:66:00:12:e8"; // 192.168.224.102, port 4840
    assert_eq!(
        identity(&opcua, "192.168.224.102", Some(server))["product"],
        "open62541-based OPC UA Application"
    );
    let assets = read(&opcua, &["--assets"]);
    let a = assets.iter().find(|a| a["mac"] == server).unwrap();
    assert_eq!(
        a["software"],
        serde_json::json!(["ProductUri http://open62541.org"])
    );
    // The engineering station that asked says nothing about itself.
    assert!(identity(&corpus.join("s7comm/snap7.pcap"), "134.217.61.131", None).is_null());
}

/// A 61162-450 sentence datagram: `UdPbC`, a TAG block (`s:` source,
/// `n:` line count; its checksum right, or wrong when `bad_tag`) and the
/// sentence `body` with its checksum, as the reference corpus's
/// iec450-nmea.pcap carries them.
fn udpbc(sfi: &str, n: u32, bad_tag: bool, body: &str) -> Vec<u8> {
    let xor = |s: &str| s.bytes().fold(0u8, |a, b| a ^ b);
    let fields = format!("s:{sfi},n:{n}");
    let tag_cs = xor(&fields) ^ if bad_tag { 0x5a } else { 0 };
    format!(
        "UdPbC\0\\{fields}*{tag_cs:02X}\\${body}*{:02X}\r\n",
        xor(body)
    )
    .into_bytes()
}

#[test]
fn the_iec_61162_450_framing_of_each_flow_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    let navd = [239, 192, 0, 4];
    let gga = "GPGGA,120658.28,5412.5114,N,01203.8768,E,1,08,1.0,10.0,M,40.0,M,,";
    let vdm = "AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0";
    let mut t = 1_700_000_000_000_000u64;
    let mut id = 0;
    let mut send = |p: &mut Pcap, src: [u8; 4], dst: [u8; 4], port: u16, payload: &[u8]| {
        t += 100_000;
        id += 1;
        p.add(t, &eth_udp4(src, dst, id, &udp(port, port, payload)));
    };
    // The GNSS: three good TAG blocks, two bad.
    for (n, bad) in [(1, false), (2, true), (3, false), (4, true), (5, false)] {
        send(
            &mut p,
            [172, 16, 0, 10],
            navd,
            60004,
            &udpbc("GP0001", n, bad, gga),
        );
    }
    // Another node with the GNSS's SFI; the AIS into NAVD; a node outside
    // 172.16.0.0/12.
    send(
        &mut p,
        [172, 16, 0, 99],
        navd,
        60004,
        &udpbc("GP0001", 1, false, gga),
    );
    send(
        &mut p,
        [172, 16, 0, 20],
        navd,
        60004,
        &udpbc("AI0001", 1, false, vdm),
    );
    send(
        &mut p,
        [10, 0, 4, 77],
        navd,
        60004,
        &udpbc("II0077", 1, false, gga),
    );
    // Not 61162-450, into the reserved range; a binary image transfer.
    send(
        &mut p,
        [172, 16, 0, 50],
        [239, 192, 0, 9],
        60009,
        &[0x42; 200],
    );
    let mut image = b"RaUdP\0".to_vec();
    image.resize(1_000, 7);
    send(&mut p, [172, 16, 0, 30], [239, 192, 0, 5], 60005, &image);
    let flows = read(&p.write(dir.path(), "iec450.pcap"), &[]);
    let ops = |client: &str| -> Vec<(String, u64, u64)> {
        let f = flows
            .iter()
            .find(|f| f["client_ip"] == client)
            .unwrap_or_else(|| panic!("no flow from {client}: {flows:#?}"));
        f["operations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["name"].as_str().unwrap().to_string(),
                    o["count"].as_u64().unwrap(),
                    o["errors"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let has = |client: &str, want: (&str, u64, u64)| {
        let got = ops(client);
        assert!(
            got.contains(&(want.0.to_string(), want.1, want.2)),
            "{client}: {want:?} not in {got:?}"
        );
    };
    has("172.16.0.10", ("udpbc", 5, 0));
    has("172.16.0.10", ("tag_block", 3, 2));
    has("172.16.0.10", ("source:GP0001", 5, 0));
    has("172.16.0.10", ("GPGGA", 5, 0));
    has("172.16.0.99", ("source:GP0001", 1, 0));
    has("172.16.0.20", ("AIVDM", 1, 0));
    has("10.0.4.77", ("udpbc", 1, 0));
    has("172.16.0.30", ("binary_image_RaUdP", 1, 0));
    for f in &flows {
        let expect = if f["client_ip"] == "172.16.0.50" {
            None
        } else {
            Some("nmea0183")
        };
        assert_eq!(f["app_protocol"].as_str(), expect, "{f}");
    }
    assert!(ops("172.16.0.50").is_empty());
}

#[test]
fn arp_feeds_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend_from_slice(&[0x00, 0x0e, 0x8c, 0xaa, 0xbb, 0xcc, 192, 168, 5, 7]);
    arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 168, 5, 1]);
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x00, 0x0e, 0x8c, 0xaa, 0xbb, 0xcc, 0x08, 0x06]);
    f.extend_from_slice(&arp);
    p.add(1_000_000, &f);
    let assets = read(&p.write(dir.path(), "arp.pcap"), &["--assets"]);
    assert_eq!(assets.len(), 1);
    assert_eq!(assets[0]["ips"], serde_json::json!(["192.168.5.7"]));
    assert_eq!(assets[0]["vendor"], "Siemens AG");
}

#[test]
fn replay_at_capture_speed_takes_the_capture_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    // Three packets spanning 2 s of capture time.
    for t in [0u64, 1_000_000, 2_000_000] {
        p.add(
            1_000_000_000 + t,
            &eth_udp4([10, 3, 0, 1], [10, 3, 0, 2], 1, &udp(50000, 10110, GGA)),
        );
    }
    let path = p.write(dir.path(), "paced.pcap");
    let started = std::time::Instant::now();
    let f = read(&path, &["--replay-speed", "4"]);
    // At 4x, 2 s of capture take at least 0.5 s (a lower bound: pacing sleeps).
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["c2s_packets"], 3);
    let bad = Command::new(env!("CARGO_BIN_EXE_tidewatch-sensor"))
        .args(["read", "--replay-speed", "0"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--replay-speed must be a positive number")
    );
}

#[test]
fn estimate_reports_link_bytes_per_flow() {
    let pcap =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps/bacnet/bacnet_example.pcap");
    let run = |extra: &[&str]| -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_tidewatch-sensor"))
            .arg("estimate")
            .args(extra)
            .arg(&pcap)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let z = run(&[]);
    let raw = run(&["--no-compress"]);
    let flows = read(&pcap, &[]).len() as u64;
    assert_eq!(z["flows"].as_u64().unwrap(), flows);
    assert_eq!(raw["flows"], z["flows"]);
    assert!(
        z["bytes"].as_u64().unwrap() * 2 < raw["bytes"].as_u64().unwrap(),
        "zstd should at least halve {raw} vs {z}"
    );
    let small = run(&["--batch-flows", "10"]);
    assert!(small["batches"].as_u64().unwrap() >= flows / 10);
    // Both layouts; the columnar one (the default) is the smaller here,
    // and --by-field accounts for every group of fields.
    assert_eq!(z["layout"], "columns");
    let pb = run(&["--batch-layout", "protobuf", "--by-field"]);
    assert_eq!(pb["layout"], "protobuf");
    assert_eq!(pb["flows"], z["flows"]);
    assert!(
        z["bytes"].as_u64().unwrap() < pb["bytes"].as_u64().unwrap(),
        "{z} vs {pb}"
    );
    let groups = pb["by_field_bytes_per_flow"].as_object().unwrap();
    for g in [
        "addresses",
        "ports",
        "times",
        "counters",
        "protocol_and_operations",
        "indicators",
        "framing",
    ] {
        assert!(groups.contains_key(g), "{pb}");
    }
    assert!(groups["times"].as_f64().unwrap() > 0.0 && groups["framing"].as_f64().unwrap() > 0.0);
    assert!(z["seal_us_per_flow"].as_f64().unwrap() > 0.0);
    // Sealed every second of capture time: more, smaller batches.
    let timed = run(&["--flush-interval", "1"]);
    assert_eq!(timed["flows"], z["flows"]);
    assert!(
        timed["batches"].as_u64().unwrap() > z["batches"].as_u64().unwrap(),
        "{timed} vs {z}"
    );
}

/// A capture cut short (a killed tcpdump) or with a corrupt record header:
/// every packet before the bad record is metered and printed, then `read`
/// fails, naming the byte offset. Also when the bad record falls inside a
/// batch of packets read together.
#[test]
fn a_cut_or_corrupt_capture_prints_every_flow_before_the_bad_record_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    for i in 0..10u16 {
        p.add(
            1_000_000 + i as u64,
            &eth_udp4(
                [10, 3, 0, 1],
                [10, 3, 0, 2],
                i,
                &udp(30000 + i, 502, b"abcd"),
            ),
        );
    }
    let good = p.0.len();
    // Each record: 16-byte header + the frame; after the 24-byte file header.
    let record = (good - 24) / 10;
    let whole = p.write(dir.path(), "whole.pcap");
    assert_eq!(read(&whole, &[]).len(), 10);

    // Cut in the middle of the last record's data.
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &p.0[..good - 5]).unwrap();
    // A record header claiming 1 GiB after the ten good records.
    let mut bad = p.0.clone();
    for x in [2u32, 0, 1 << 30, 1 << 30] {
        bad.extend_from_slice(&x.to_le_bytes());
    }
    bad.extend_from_slice(&[0; 64]);
    let corrupt = dir.path().join("corrupt.pcap");
    std::fs::write(&corrupt, &bad).unwrap();

    for (path, flows, offset) in [(&cut, 9, good - record), (&corrupt, 10, good)] {
        let out = Command::new(env!("CARGO_BIN_EXE_tidewatch-sensor"))
            .arg("read")
            .arg(path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let printed: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(printed.len(), flows, "{}: {stderr}", path.display());
        assert!(
            printed
                .iter()
                .all(|f| f["c2s_packets"] == 1 && f["end"] == "end_of_input"),
            "{printed:?}"
        );
        assert!(
            stderr.contains(&format!("corrupt capture at byte {offset}"))
                && stderr.contains(&format!("their {flows} flows printed")),
            "{}: {stderr}",
            path.display()
        );
    }
}

/// A TLS ClientHello carrying `sni` (record, handshake, version, random,
/// no session, one cipher suite, null compression, the server_name
/// extension).
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut ext = Vec::new();
    ext.extend_from_slice(&[0, 0]); // server_name
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0); // host_name
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x11; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // cipher suites
    body.extend_from_slice(&[1, 0]); // compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// A TCP segment (PSH ACK) between client 10.NET.0.C and server 10.NET.1.1,
/// from the client or from the server.
fn service_segment(net: u8, c: u8, sp: u16, dp: u16, from_client: bool, payload: &[u8]) -> Vec<u8> {
    let (src, dst, s, d) = if from_client {
        ([10, net, 0, c], [10, net, 1, 1], sp, dp)
    } else {
        ([10, net, 1, 1], [10, net, 0, c], dp, sp)
    };
    let l4 = tcp(s, d, 0x18, payload);
    eth(
        &[],
        0x0800,
        &ipv4(src, dst, 6, 1, 0, &l4, 20 + payload.len()),
    )
}

#[test]
fn tls_http_and_mqtt_are_named_by_payload_with_their_indicators() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    let seg = |c, sp, dp, from_client, payload: &[u8]| {
        service_segment(3, c, sp, dp, from_client, payload)
    };
    // Every service on a port that says nothing about it.
    p.add(
        1_000_000,
        &seg(1, 40001, 7001, true, &client_hello("updates.example.com")),
    );
    p.add(
        1_000_100,
        &seg(
            2,
            40002,
            7002,
            true,
            b"GET /firmware.bin HTTP/1.1\r\nHost: plc-vendor.example.net\r\nUser-Agent: t\r\n\r\n",
        ),
    );
    p.add(
        1_000_200,
        &seg(
            2,
            40002,
            7002,
            false,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
    );
    let connect = [
        0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 4, b'c', b'r', b'n', b'1',
    ];
    p.add(1_000_300, &seg(3, 40003, 7003, true, &connect));
    p.add(1_000_400, &seg(3, 40003, 7003, false, &[0x20, 0x02, 0, 0]));
    let publish = [0x30, 0x07, 0, 3, b'a', b'/', b'b', b'4', b'2'];
    p.add(1_000_500, &seg(3, 40003, 7003, true, &publish));
    let path = p.write(dir.path(), "it.pcap");
    let flows = read(&path, &[]);
    let by_port = |port: u64| {
        flows
            .iter()
            .find(|f| f["server_port"] == port)
            .unwrap_or_else(|| panic!("no flow to {port} in {flows:#?}"))
    };
    let tls = by_port(7001);
    assert_eq!(tls["app_protocol"], "tls");
    assert_eq!(
        tls["indicators"],
        serde_json::json!(["updates.example.com"])
    );
    let http = by_port(7002);
    assert_eq!(http["app_protocol"], "http");
    assert_eq!(
        http["indicators"],
        serde_json::json!(["plc-vendor.example.net"])
    );
    let mqtt = by_port(7003);
    assert_eq!(mqtt["app_protocol"], "mqtt");
    let ops: Vec<&str> = mqtt["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        ops.contains(&"connect") && ops.contains(&"publish"),
        "{ops:?}"
    );
}

/// Peak RSS (kB) and stderr of `tidewatch-sensor read ARGS PCAP`, stdout
/// discarded (measured by Python's getrusage of its child).
fn read_rss(pcap: &Path, args: &[&str]) -> (u64, String) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import resource, subprocess, sys\n\
             r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n\
             sys.stderr.buffer.write(r.stderr)\n\
             print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
             sys.exit(r.returncode)",
            env!("CARGO_BIN_EXE_tidewatch-sensor"),
            "read",
        ])
        .args(args)
        .arg(pcap)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let rss = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (rss, stderr)
}

/// A flood of first fragments with distinct ids (8 sources × 65,536 ids,
/// within one second, so none ages out): the fragment map stops at
/// `--max-fragments`, the rest is counted, metering goes on, and memory
/// stays bounded where an uncapped map would grow by tens of MB.
#[test]
fn a_fragment_flood_is_capped_counted_and_metered() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    let udp_head = udp(40000, 5353, &[0x42; 8]);
    let mut n = 0u64;
    for src in 1..=8u8 {
        for id in 0..=u16::MAX {
            // More fragments follow (MF), offset 0: a first fragment.
            let ip = ipv4(
                [10, 9, 0, src],
                [10, 9, 1, 1],
                17,
                id,
                0x2000,
                &udp_head,
                1400,
            );
            p.add(1_000_000 + n, &eth(&[], 0x0800, &ip));
            n += 1;
        }
    }
    let path = p.write(dir.path(), "fragments.pcap");
    let (capped, log) = read_rss(&path, &[]);
    let overflow = n - 65_536;
    assert!(
        log.contains(&format!("fragments_overflow={overflow}")),
        "{log}"
    );
    assert!(log.contains("flows=8"), "{log}");
    let (uncapped, _) = read_rss(&path, &["--max-fragments", "100000000"]);
    eprintln!("peak RSS: capped {capped} kB, uncapped {uncapped} kB");
    assert!(
        capped + 15_000 < uncapped,
        "capped {capped} kB vs uncapped {uncapped} kB: the cap bounds nothing"
    );
}

#[test]
fn remote_access_is_named_by_payload_on_any_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Pcap::new(1);
    let seg = |c, sp, dp, from_client, payload: &[u8]| {
        service_segment(4, c, sp, dp, from_client, payload)
    };
    let tpkt = |code: u8, body: &[u8]| {
        let len = 11 + body.len();
        let mut t = vec![3, 0, 0, len as u8, (len - 5) as u8, code, 0, 0, 0, 0, 0];
        t.extend_from_slice(body);
        t
    };
    // SSH on 443, RDP on 8080, VNC on 80: ports that say something else.
    p.add(
        1_000_000,
        &seg(1, 40001, 443, false, b"SSH-2.0-OpenSSH_8.4p1 Debian-5\r\n"),
    );
    p.add(
        1_000_100,
        &seg(1, 40001, 443, true, b"SSH-2.0-PuTTY_Release_0.78\r\n"),
    );
    let neg = [1, 0, 8, 0, 3, 0, 0, 0];
    let cr = tpkt(
        0xe0,
        &[b"Cookie: mstshash=vendor\r\n".as_slice(), &neg].concat(),
    );
    p.add(1_000_200, &seg(2, 40002, 8080, true, &cr));
    p.add(
        1_000_300,
        &seg(
            2,
            40002,
            8080,
            false,
            &tpkt(0xd0, &[2, 0, 8, 0, 1, 0, 0, 0]),
        ),
    );
    p.add(1_000_400, &seg(3, 40003, 80, false, b"RFB 003.008\n"));
    p.add(1_000_500, &seg(3, 40003, 80, true, b"RFB 003.008\n"));
    // S7comm's connection request on RDP's port is not RDP.
    let s7 = tpkt(0xe0, &[0xc1, 2, 1, 0, 0xc2, 2, 1, 2, 0xc0, 1, 0x0a]);
    p.add(1_000_600, &seg(4, 40004, 3389, true, &s7));
    // Telnet's option negotiation on 2323; an FTP server's greeting (on
    // 21: without a handshake in the capture, its well-known port is what
    // orients a flow whose server speaks first) and a client storing a file.
    p.add(
        1_000_700,
        &seg(5, 40005, 2323, true, &[0xff, 0xfb, 24, 0xff, 0xfc, 32]),
    );
    p.add(
        1_000_800,
        &seg(
            5,
            40005,
            2323,
            false,
            &[0xff, 0xfd, 24, 0xff, 0xfd, 32, 0xff, 0xfb, 1],
        ),
    );
    p.add(
        1_000_900,
        &seg(6, 40006, 21, false, b"220 (vsFTPd 3.0.3)\r\n"),
    );
    p.add(1_001_000, &seg(6, 40006, 21, true, b"USER plc\r\n"));
    p.add(
        1_001_100,
        &seg(6, 40006, 21, true, b"STOR firmware.bin\r\n"),
    );
    let path = p.write(dir.path(), "remote.pcap");
    let flows = read(&path, &[]);
    let named = |c: &str| {
        let f = flows
            .iter()
            .find(|f| f["client_ip"] == format!("10.4.0.{c}"))
            .unwrap_or_else(|| panic!("no flow of 10.4.0.{c} in {flows:#?}"));
        let ops: Vec<String> = f["operations"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect();
        (f["app_protocol"].as_str().unwrap_or("").to_string(), ops)
    };
    assert_eq!(
        named("1"),
        ("ssh".into(), vec!["version_exchange".to_string()])
    );
    assert_eq!(
        named("2"),
        (
            "rdp".into(),
            vec![
                "connection_confirm".to_string(),
                "connection_request".to_string()
            ]
        )
    );
    assert_eq!(
        named("3"),
        ("vnc".into(), vec!["protocol_version".to_string()])
    );
    assert_eq!(named("4").0, "");
    assert_eq!(
        named("5"),
        ("telnet".into(), vec!["option_negotiation".to_string()])
    );
    assert_eq!(
        named("6"),
        ("ftp".into(), vec!["user".to_string(), "stor".to_string()])
    );
    // The banners: each side's SSH version line and the FTP greeting, on
    // assets of their own once MACs follow addresses and ports.
    let own_macs = dir.path().join("remote-macs.pcap");
    macs_from_ports(&path, &own_macs);
    let assets = read(&own_macs, &["--assets"]);
    let software = |mac: &str| {
        let a = assets.iter().find(|a| a["mac"] == mac);
        a.unwrap_or_else(|| panic!("no {mac} in {assets:#?}"))["software"].clone()
    };
    assert_eq!(
        software("02:01:01:00:01:bb"),
        serde_json::json!(["SSH-2.0-OpenSSH_8.4p1 Debian-5"])
    );
    assert_eq!(
        software("02:00:01:00:9c:41"),
        serde_json::json!(["SSH-2.0-PuTTY_Release_0.78"])
    );
    assert_eq!(
        software("02:01:01:00:00:15"),
        serde_json::json!(["220 (vsFTPd 3.0.3)"])
    );
}

#[test]
fn bad_values_of_the_batching_flags_are_refused_clearly() {
    let pcap =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/pcaps/bacnet/bacnet_example.pcap");
    let refused = |args: &[&str], why: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_tidewatch-sensor"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    let p = pcap.to_str().unwrap();
    refused(
        &["estimate", "--batch-layout", "csv", p],
        "invalid value 'csv'",
    );
    for v in ["0", "-1", "NaN"] {
        refused(
            &["estimate", &format!("--flush-interval={v}"), p],
            "--flush-interval must be a positive number of seconds",
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_str().unwrap();
    for v in ["0", "inf"] {
        refused(
            &[
                "run",
                "--pcap",
                p,
                "--state-dir",
                state,
                "--collector",
                "https://127.0.0.1:1",
                "--ca",
                "x",
                "--cert",
                "x",
                "--key",
                "x",
                "--max-batch-age",
                v,
            ],
            "--max-batch-age must be a positive number of seconds",
        );
    }
}

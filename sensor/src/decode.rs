//! Link, network and transport header decoding: from a captured frame to the
//! few fields the flow table needs. Never panics on malformed input; every
//! frame is accounted for as decoded or as one of the [`Undecoded`] causes.

use std::net::IpAddr;

use crate::capture::{linktype, RawPacket};

/// The fields of one IP packet that flow metering uses.
#[derive(Debug, Clone)]
pub struct PacketInfo<'a> {
    pub ts_us: i64,
    /// Outer 802.1Q VLAN id, 0 when untagged.
    pub vlan: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ip_protocol: u8,
    /// 0 for protocols without ports (and for non-first IPv4 fragments until
    /// the flow table maps them to their datagram).
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    /// IP header + IP payload as announced by the header (IPFIX octetDeltaCount).
    pub ip_bytes: u32,
    /// Transport payload length as announced by the headers.
    pub payload_len: u32,
    /// The captured part of the transport payload.
    pub payload: &'a [u8],
    /// IPv4 fragment information, if this packet is a fragment.
    pub fragment: Option<Fragment>,
    /// Source MAC address (Ethernet and Linux cooked captures).
    pub src_mac: Option<[u8; 6]>,
}

/// Identifies the datagram an IPv4/IPv6 fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fragment {
    pub id: u32,
    /// True for the fragment at offset 0 (the one carrying the ports).
    pub first: bool,
}

/// Why a frame produced no [`PacketInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undecoded {
    /// ARP frame (sender/target addresses for the asset inventory).
    Arp,
    /// Another non-IP ethertype or link protocol.
    NonIp,
    /// Link type this sensor does not decode.
    UnsupportedLink,
    /// Headers cut short or inconsistent.
    Malformed,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const ETH_ARP: u16 = 0x0806;
const ETH_VLAN: u16 = 0x8100;
const ETH_QINQ: u16 = 0x88a8;
const ETH_QINQ_OLD: u16 = 0x9100;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Decodes one frame.
pub fn decode<'a>(pkt: &RawPacket<'a>) -> Result<PacketInfo<'a>, Undecoded> {
    let data = pkt.data;
    let ts_us = pkt.ts_ns.div_euclid(1000);
    let (ethertype, rest, vlan) = match pkt.linktype {
        linktype::ETHERNET => {
            let et = be16(data, 12).ok_or(Undecoded::Malformed)?;
            strip_vlans(et, &data[14..])?
        }
        linktype::LINUX_SLL => {
            // 16-byte header, protocol at 14.
            let et = be16(data, 14).ok_or(Undecoded::Malformed)?;
            strip_vlans(et, &data[16..])?
        }
        linktype::LINUX_SLL2 => {
            // 20-byte header, protocol at 0.
            let et = be16(data, 0).ok_or(Undecoded::Malformed)?;
            if data.len() < 20 {
                return Err(Undecoded::Malformed);
            }
            strip_vlans(et, &data[20..])?
        }
        linktype::RAW | linktype::RAW_ALT_12 | linktype::RAW_ALT_14 => {
            match data.first().map(|b| b >> 4) {
                Some(4) => (ETH_IPV4, data, 0),
                Some(6) => (ETH_IPV6, data, 0),
                _ => return Err(Undecoded::Malformed),
            }
        }
        linktype::IPV4 => (ETH_IPV4, data, 0),
        linktype::IPV6 => (ETH_IPV6, data, 0),
        linktype::NULL | linktype::LOOP => {
            if data.len() < 4 {
                return Err(Undecoded::Malformed);
            }
            // Address family in host (NULL) or network (LOOP) order; check both.
            let le = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            let be = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
            let af = if le < 256 { le } else { be };
            match af {
                2 => (ETH_IPV4, &data[4..], 0),
                10 | 24 | 28 | 30 => (ETH_IPV6, &data[4..], 0),
                _ => return Err(Undecoded::NonIp),
            }
        }
        _ => return Err(Undecoded::UnsupportedLink),
    };
    let mut info = match ethertype {
        ETH_IPV4 => decode_ipv4(rest, ts_us, vlan),
        ETH_IPV6 => decode_ipv6(rest, ts_us, vlan),
        ETH_ARP => Err(Undecoded::Arp),
        _ => Err(Undecoded::NonIp),
    }?;
    info.src_mac = src_mac(pkt);
    Ok(info)
}

/// The sender's MAC address of a frame, where the link layer carries one.
#[inline]
pub fn src_mac(pkt: &RawPacket<'_>) -> Option<[u8; 6]> {
    let d = pkt.data;
    let at = match pkt.linktype {
        linktype::ETHERNET => 6,
        // SLL: packet type(2) ARPHRD(2) address length(2) address(8)
        linktype::LINUX_SLL if be16(d, 4) == Some(6) => 6,
        // SLL2: protocol(2) reserved(2) ifindex(4) ARPHRD(2) type(1) len(1) address(8)
        linktype::LINUX_SLL2 if d.get(11) == Some(&6) => 12,
        _ => return None,
    };
    d.get(at..at + 6).map(|m| m.try_into().expect("6 bytes"))
}

/// Sender hardware and protocol address of an Ethernet/IPv4 ARP frame.
pub fn arp_sender(pkt: &RawPacket<'_>) -> Option<([u8; 6], std::net::Ipv4Addr)> {
    let d = pkt.data;
    let at = match pkt.linktype {
        linktype::ETHERNET => {
            let (et, rest, _) = strip_vlans(be16(d, 12)?, d.get(14..)?).ok()?;
            (et == ETH_ARP).then(|| d.len() - rest.len())?
        }
        linktype::LINUX_SLL if be16(d, 14) == Some(ETH_ARP) => 16,
        linktype::LINUX_SLL2 if be16(d, 0) == Some(ETH_ARP) => 20,
        _ => return None,
    };
    let a = d.get(at..at + 28)?;
    // Ethernet (1), IPv4 (0x0800), hlen 6, plen 4.
    if be16(a, 0)? != 1 || be16(a, 2)? != ETH_IPV4 || a[4] != 6 || a[5] != 4 {
        return None;
    }
    let mac: [u8; 6] = a[8..14].try_into().ok()?;
    let ip = std::net::Ipv4Addr::new(a[14], a[15], a[16], a[17]);
    Some((mac, ip))
}

/// Skips 802.1Q / 802.1ad tags, returning the inner ethertype, the rest of the
/// frame and the outer VLAN id.
#[inline(always)]
fn strip_vlans(mut et: u16, mut rest: &[u8]) -> Result<(u16, &[u8], u16), Undecoded> {
    let mut outer = None;
    let mut depth = 0;
    while matches!(et, ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD) {
        let tci = be16(rest, 0).ok_or(Undecoded::Malformed)?;
        et = be16(rest, 2).ok_or(Undecoded::Malformed)?;
        outer.get_or_insert(tci & 0x0fff);
        rest = &rest[4..];
        depth += 1;
        if depth > 4 {
            return Err(Undecoded::Malformed);
        }
    }
    Ok((et, rest, outer.unwrap_or(0)))
}

#[inline(always)]
fn decode_ipv4(b: &[u8], ts_us: i64, vlan: u16) -> Result<PacketInfo<'_>, Undecoded> {
    if b.len() < 20 || b[0] >> 4 != 4 {
        return Err(Undecoded::Malformed);
    }
    let ihl = ((b[0] & 0x0f) as usize) * 4;
    let total = be16(b, 2).ok_or(Undecoded::Malformed)? as usize;
    if ihl < 20 || b.len() < ihl || total < ihl {
        return Err(Undecoded::Malformed);
    }
    let id = be16(b, 4).ok_or(Undecoded::Malformed)?;
    let frag = be16(b, 6).ok_or(Undecoded::Malformed)?;
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    let proto = b[9];
    let word = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let src = IpAddr::V4(word(12).into());
    let dst = IpAddr::V4(word(16).into());
    let fragment = (more_fragments || frag_offset != 0).then_some(Fragment {
        id: id as u32,
        first: frag_offset == 0,
    });
    let l4_len = total - ihl;
    let captured_end = b.len().min(total);
    let l4 = &b[ihl..captured_end];
    let mut info = PacketInfo {
        ts_us,
        vlan,
        src,
        dst,
        ip_protocol: proto,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        ip_bytes: total as u32,
        payload_len: l4_len as u32,
        payload: l4,
        fragment,
        src_mac: None,
    };
    if frag_offset == 0 {
        decode_l4(&mut info, l4, l4_len);
    }
    Ok(info)
}

fn decode_ipv6(b: &[u8], ts_us: i64, vlan: u16) -> Result<PacketInfo<'_>, Undecoded> {
    if b.len() < 40 || b[0] >> 4 != 6 {
        return Err(Undecoded::Malformed);
    }
    let plen = be16(b, 4).ok_or(Undecoded::Malformed)? as usize;
    let mut next = b[6];
    let mut s = [0u8; 16];
    s.copy_from_slice(&b[8..24]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&b[24..40]);
    let captured_end = b.len().min(40 + plen);
    let mut off = 40usize;
    let mut fragment = None;
    let mut first_fragment = true;
    // Extension headers: hop-by-hop, routing, fragment, destination options.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let hdr = b.get(off..off + 2).ok_or(Undecoded::Malformed)?;
                next = hdr[0];
                off += (hdr[1] as usize + 1) * 8;
            }
            44 => {
                let hdr = b.get(off..off + 8).ok_or(Undecoded::Malformed)?;
                next = hdr[0];
                let fo = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
                let id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                first_fragment = fo == 0;
                fragment = Some(Fragment {
                    id,
                    first: first_fragment,
                });
                off += 8;
            }
            _ => break,
        }
    }
    if off > 40 + plen {
        return Err(Undecoded::Malformed);
    }
    let l4_len = 40 + plen - off;
    let l4 = b.get(off..captured_end).unwrap_or(&[]);
    let mut info = PacketInfo {
        ts_us,
        vlan,
        src: IpAddr::from(s),
        dst: IpAddr::from(d),
        ip_protocol: next,
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        ip_bytes: (40 + plen) as u32,
        payload_len: l4_len as u32,
        payload: l4,
        fragment,
        src_mac: None,
    };
    if first_fragment {
        decode_l4(&mut info, l4, l4_len);
    }
    Ok(info)
}

/// Fills ports, flags and payload from a TCP or UDP header. A header cut short
/// by the snap length leaves the ports at 0 rather than failing the packet.
#[inline(always)]
fn decode_l4<'a>(info: &mut PacketInfo<'a>, l4: &'a [u8], l4_len: usize) {
    match info.ip_protocol {
        6 if l4.len() >= 20 => {
            info.src_port = u16::from_be_bytes([l4[0], l4[1]]);
            info.dst_port = u16::from_be_bytes([l4[2], l4[3]]);
            let doff = ((l4[12] >> 4) as usize) * 4;
            info.tcp_flags = l4[13];
            let doff = doff.clamp(20, l4_len.max(20));
            info.payload_len = l4_len.saturating_sub(doff) as u32;
            info.payload = l4.get(doff..).unwrap_or(&[]);
        }
        17 if l4.len() >= 8 => {
            info.src_port = u16::from_be_bytes([l4[0], l4[1]]);
            info.dst_port = u16::from_be_bytes([l4[2], l4[3]]);
            info.payload_len = l4_len.saturating_sub(8) as u32;
            info.payload = &l4[8..];
        }
        6 | 17 => {
            info.payload_len = 0;
            info.payload = &[];
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth_ipv4_udp(vlans: &[u16], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for v in vlans {
            f.extend_from_slice(&ETH_VLAN.to_be_bytes());
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&ETH_IPV4.to_be_bytes());
        let total = 20 + 8 + payload.len();
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&1234u16.to_be_bytes());
        f.extend_from_slice(&10110u16.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn decodes_udp_in_qinq() {
        let f = eth_ipv4_udp(&[100, 200], b"$GPGGA");
        let p = RawPacket {
            ts_ns: 1_500,
            linktype: linktype::ETHERNET,
            orig_len: f.len() as u32,
            data: &f,
        };
        let i = decode(&p).unwrap();
        assert_eq!(i.vlan, 100);
        assert_eq!(i.ip_protocol, 17);
        assert_eq!((i.src_port, i.dst_port), (1234, 10110));
        assert_eq!(i.ip_bytes, 34);
        assert_eq!(i.payload_len, 6);
        assert_eq!(i.payload, b"$GPGGA");
        assert_eq!(i.ts_us, 1);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        for len in 0..200 {
            let mut f = Vec::with_capacity(len);
            for _ in 0..len {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                f.push((seed >> 16) as u8);
            }
            for lt in [1, 113, 276, 101, 0, 228, 229] {
                let p = RawPacket {
                    ts_ns: 0,
                    linktype: lt,
                    orig_len: 0,
                    data: &f,
                };
                let _ = decode(&p);
            }
        }
    }
}

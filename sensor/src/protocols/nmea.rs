//! NMEA 0183 sentences over UDP (or TCP): plain `$`/`!` sentences with an
//! address field (talker + sentence type, or a proprietary `P...`), optional
//! `*hh` checksum and CRLF; optionally behind an IEC 61162-450 `UdPbC\0`
//! header and `\...\` TAG blocks; and 61162-450 binary image transfer
//! datagrams (`RaUdP`, `RrUdP`, `RpUdP`).
//!
//! What the bridge network's checks need from each flow is counted as
//! operations beside the sentences (whose names are upper case): `udpbc`
//! (61162-450 sentence datagrams), `tag_block` (TAG blocks; a bad or missing
//! checksum is an error), `source:SFI` (each source identifier a TAG block's
//! `s:` names) and `binary_image_RaUdP` etc. The shore's `bridge-450` query
//! turns them, with the flows' addresses and ports, into findings.

use tidewatch_proto::v1::OperationClass as C;

use super::{find_byte, Observer, Ops, Protocol, Roles};

/// NMEA 0183 sentences over TCP or UDP (10110), and IEC 61162-450 `UdPbC`
/// datagrams (1027 is a common default; the multicast groups' ports start
/// around 60001). The talker is a `navigation_device`.
pub const PROTOCOL: Protocol = Protocol {
    name: "nmea0183",
    tcp: Some(detect),
    udp: Some(detect),
    server_ports: &[10110, 1027, 60001],
    observe: Observer::Operations(|p, ops| observe(p.data, ops)),
    roles: Roles::Fixed {
        client: Some("navigation_device"),
        server: None,
    },
    identify: None,
};

/// Operation codes of the 61162-450 counts (high bit set: sentence codes,
/// hashes of their addresses, never have it).
pub const UDPBC: u32 = 0x8000_0000;
pub const TAG_BLOCK: u32 = 0x8000_0001;
pub const SOURCE: u32 = 0x8000_0002;
pub const BINARY_IMAGE: u32 = 0x8000_0010;

/// The binary image transfer headers of 61162-450, with their operation
/// names: the datagrams carry images or files (radar, VDR data) in blocks.
const BINARY_IMAGES: [(&[u8; 6], &str); 3] = [
    (b"RaUdP\0", "binary_image_RaUdP"),
    (b"RrUdP\0", "binary_image_RrUdP"),
    (b"RpUdP\0", "binary_image_RpUdP"),
];

/// The longest source identifier (SFI) kept.
const MAX_SFI: usize = 16;

/// Which binary image transfer header `p` starts with.
fn binary_image(p: &[u8]) -> Option<usize> {
    if p.len() < 32 {
        return None;
    }
    BINARY_IMAGES.iter().position(|(h, _)| p.starts_with(*h))
}

/// Whether the `*hh` ending `s` is the XOR of everything before it
/// (`None`: no `*`; a `*` not followed by exactly two hex digits is wrong).
fn checksum(s: &[u8]) -> Option<bool> {
    let star = s.iter().rposition(|b| *b == b'*')?;
    if s.len() != star + 3 {
        return Some(false);
    }
    let cs = s[..star].iter().fold(0u8, |a, b| a ^ b);
    Some(
        std::str::from_utf8(&s[star + 1..])
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            == Some(cs),
    )
}

/// The TAG blocks (`\fields*hh\`) of a line's tags: (fields, checksum
/// valid).
fn tag_blocks(line: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = line;
    std::iter::from_fn(move || {
        if rest.first() != Some(&b'\\') {
            return None;
        }
        let end = rest[1..].iter().position(|b| *b == b'\\')? + 1;
        let block = &rest[1..end];
        rest = &rest[end + 1..];
        // A TAG block's checksum is required.
        let valid = checksum(block) == Some(true);
        let fields = match block.iter().rposition(|b| *b == b'*') {
            Some(star) => &block[..star],
            None => block,
        };
        Some((fields, valid))
    })
    .take(8)
}

/// The parts of `p` between line feeds (as `split` on `\n` would give).
fn lines(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(p);
    std::iter::from_fn(move || {
        let r = rest?;
        match find_byte(r, b'\n') {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// One line of a payload: the TAG blocks leading it (`\\...\\` each) and
/// its sentence when well formed: (address, checksum valid or absent).
struct Line<'a> {
    tags: &'a [u8],
    sentence: Option<(&'a [u8], bool)>,
}

/// The lines of a payload (after a 61162-450 `UdPbC` header), each split
/// once into its TAG blocks and its sentence.
fn parsed(p: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let body = p.strip_prefix(b"UdPbC\0").unwrap_or(p);
    lines(body).map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (tags, rest) = split_tags(line);
        Line {
            tags,
            sentence: sentence(rest),
        }
    })
}

/// The complete TAG blocks leading a line, and what follows them (an
/// unterminated block stays in what follows, which is then no sentence).
fn split_tags(line: &[u8]) -> (&[u8], &[u8]) {
    let mut at = 0;
    while line.get(at) == Some(&b'\\') {
        match line[at + 1..].iter().position(|b| *b == b'\\') {
            Some(end) => at += end + 2,
            None => break,
        }
    }
    line.split_at(at)
}

/// A sentence (`$` or `!`, address, fields, optional `*hh`): its address
/// and whether its checksum is valid or absent; `None` when malformed.
fn sentence(s: &[u8]) -> Option<(&[u8], bool)> {
    if !matches!(s.first(), Some(b'$' | b'!')) {
        return None;
    }
    let s = &s[1..];
    let comma = s.iter().position(|b| *b == b',')?;
    let addr = &s[..comma];
    let addr_ok = (addr.len() == 5
        && addr
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
        || (addr.first() == Some(&b'P')
            && (2..=8).contains(&addr.len())
            && addr.iter().all(u8::is_ascii_alphanumeric));
    if !addr_ok || s.len() > 120 {
        return None;
    }
    // Printable characters only, as a branch-free fold over the sentence,
    // which the compiler turns into vector code; then the checksum.
    let unprintable = s
        .iter()
        .fold(false, |bad, &b| bad | !(0x20..0x7f).contains(&b));
    if unprintable {
        return None;
    }
    // A sentence's checksum is optional.
    Some((addr, checksum(s) != Some(false)))
}

/// A sentence's operation code: a hash of its address (high bit clear, so
/// never one of the 61162-450 codes).
pub fn sentence_code(addr: &[u8]) -> u32 {
    addr.iter()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(*b as u32))
        & 0x7fff_ffff
}

/// At least one well-formed sentence and no sentence with a bad checksum,
/// or a 61162-450 binary image transfer datagram.
pub fn detect(p: &[u8]) -> bool {
    if binary_image(p).is_some() {
        return true;
    }
    if p.len() < 8 || !(p.starts_with(b"UdPbC\0") || matches!(p[0], b'$' | b'!' | b'\\')) {
        return false;
    }
    let mut good = 0;
    for (_, valid) in parsed(p).filter_map(|l| l.sentence) {
        if !valid {
            return false;
        }
        good += 1;
    }
    good > 0
}

/// Counts sentences by talker + type (e.g. "GPGGA", "AIVDM"); a sentence
/// with a wrong checksum counts as an error of its type. Counts the
/// 61162-450 framing too (see the module docs).
pub fn observe(p: &[u8], ops: &mut Ops) {
    if let Some(i) = binary_image(p) {
        ops.add(BINARY_IMAGE + i as u32, BINARY_IMAGES[i].1, C::Other);
        return;
    }
    let udpbc = p.starts_with(b"UdPbC\0");
    if udpbc {
        ops.add(UDPBC, "udpbc", C::Other);
    }
    for line in parsed(p) {
        if udpbc {
            count_tags(line.tags, ops);
        }
        // Addresses are checked ASCII alphanumerics.
        if let Some((addr, valid)) = line.sentence {
            if let Ok(name) = std::str::from_utf8(addr) {
                ops.count_named(sentence_code(addr), name, C::Other, valid);
            }
        }
    }
}

/// Counts a line's TAG blocks (a bad or missing checksum as an error) and
/// the source identifiers (`s:`) they name.
fn count_tags(tags: &[u8], ops: &mut Ops) {
    for (fields, valid) in tag_blocks(tags) {
        if valid {
            ops.add(TAG_BLOCK, "tag_block", C::Other);
        } else {
            ops.error(TAG_BLOCK, "tag_block", C::Other);
        }
        for sfi in fields
            .split(|b| *b == b',')
            .filter_map(|f| f.strip_prefix(b"s:"))
        {
            if sfi.is_empty() || sfi.len() > MAX_SFI || !sfi.iter().all(u8::is_ascii_alphanumeric) {
                continue;
            }
            let mut name = [0u8; 7 + MAX_SFI];
            name[..7].copy_from_slice(b"source:");
            name[7..7 + sfi.len()].copy_from_slice(sfi);
            if let Ok(name) = std::str::from_utf8(&name[..7 + sfi.len()]) {
                ops.count_named(SOURCE, name, C::Other, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_iec450() {
        let gga = b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76\r\n";
        assert!(detect(gga));
        let mut bad = gga.to_vec();
        bad[10] = b'9';
        assert!(!detect(&bad));
        let mut iec = b"UdPbC\0\\s:GP0001,n:1*0A\\".to_vec();
        iec.extend_from_slice(gga);
        assert!(detect(&iec));
        let mut ops = Ops::default();
        observe(&iec, &mut ops);
        observe(
            b"!AIVDM,1,1,,A,13aEOK?P00PD2wVMdLDRhgvL289?,0*26\r\n",
            &mut ops,
        );
        let names: Vec<String> = ops.to_proto().into_iter().map(|o| o.name).collect();
        assert!(
            names.contains(&"GPGGA".to_string()) && names.contains(&"AIVDM".to_string()),
            "{names:?}"
        );
        assert!(!detect(b"hello world, not nmea"));
    }

    #[test]
    fn iec450_framing_is_counted() {
        let gga = b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76\r\n";
        let mut ops = Ops::default();
        // A good TAG block (s:GP0001,n:1*0A... checksum computed), a bad one
        // and one without a checksum.
        let fields = b"s:GP0001,n:1";
        let cs = fields.iter().fold(0u8, |a, b| a ^ b);
        for tag in [
            format!("\\s:GP0001,n:1*{cs:02X}\\"),
            "\\s:GP0002,n:2*00\\".to_string(),
            "\\s:GP0001,n:3\\".to_string(),
        ] {
            let mut d = b"UdPbC\0".to_vec();
            d.extend_from_slice(tag.as_bytes());
            d.extend_from_slice(gga);
            assert!(detect(&d));
            observe(&d, &mut ops);
        }
        let mut image = b"RaUdP\0".to_vec();
        image.resize(64, 0);
        assert!(detect(&image));
        observe(&image, &mut ops);
        let got: Vec<(String, u64, u64)> = ops
            .to_proto()
            .into_iter()
            .map(|o| (o.name, o.count, o.errors))
            .collect();
        for want in [
            ("udpbc".to_string(), 3, 0),
            ("tag_block".to_string(), 1, 2),
            ("source:GP0001".to_string(), 2, 0),
            ("source:GP0002".to_string(), 1, 0),
            ("binary_image_RaUdP".to_string(), 1, 0),
            ("GPGGA".to_string(), 3, 0),
        ] {
            assert!(got.contains(&want), "{want:?} not in {got:?}");
        }
    }
}

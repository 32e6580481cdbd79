#!/usr/bin/env python3
"""A capture of realistic shape for the wire benchmark: one vessel's mirror
port over a couple of hours, written as a classic pcap (microseconds).

  deploy/local/gen-traffic.py OUT.pcap [--packets 2000000] [--seed 1]

Unlike the round-robin captures of the speed benchmarks, flows here arrive
over time and differ from each other the way a real network's do:

- flow arrivals are Poisson processes, one per kind of traffic, and packets
  within a flow are spaced by exponential gaps (a flow's packets interleave
  with every other flow's);
- flow lengths are heavy-tailed (Pareto, shape 1.1-1.3): most TLS and bulk
  transfers are a handful of packets, a few are tens of thousands;
- TCP flows have real handshakes (SYN with MSS/SACK/window-scale options,
  timestamps on Linux hosts' segments), sequence numbers that follow the
  bytes sent, and FIN or RST closes; client ports are ephemeral, random on
  Linux hosts, sequential on Windows hosts;
- DNS queries, TLS ClientHello SNI and HTTP Host names are drawn (Zipf)
  from a vocabulary of a few thousand names, a fifth of them per-request
  CDN or tracking names that rarely repeat;
- OT traffic: Modbus/TCP polls from two HMIs to 24 PLCs (persistent
  connections and a connect-per-poll SCADA, reads with occasional writes),
  S7comm engineering sessions, IEC 61162-450 navigation multicast
  (`UdPbC` TAG blocks, GGA/VTG/HDT/ZDA/AIS sentences at 1-10 Hz);
- broadcasts and link-local multicast (NetBIOS, SSDP, mDNS, DHCP), NTP and
  ICMP monitoring pings;
- every segment tagged with its VLAN (OT 10, IT 20, navigation 30).

The same seed always writes the same file. Speed: about 60k packets/s.
"""
import argparse
import heapq
import random
import struct

BASE_US = 1_764_000_000_000_000  # 2025-11-24T16:00:00Z

VLAN_OT, VLAN_IT, VLAN_NAV = 10, 20, 30


def ip(s):
    return bytes(int(x) for x in s.split("."))


def mac_of(addr):
    # Locally administered MACs derived from the address, except a few
    # vendor OUIs on the OT side (Schneider, Siemens, Furuno).
    if addr[0] == 10 and addr[2] == 1:
        oui = b"\x00\x80\xf4" if addr[3] % 2 else b"\x00\x1b\x1b"
    elif addr[0] == 172:
        oui = b"\x00\x0c\x8e"
    else:
        oui = b"\x02\x00\x5e"
    return oui + addr[1:]


GATEWAY_MAC = b"\x00\x1a\x8c\x10\x00\x01"


def multicast_mac(addr):
    return b"\x01\x00\x5e" + bytes([addr[1] & 0x7F, addr[2], addr[3]])


def frame(vlan, src, dst, proto, l4, dst_mac=None, src_mac=None):
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, src, dst)
    dm = dst_mac or (multicast_mac(dst) if 224 <= dst[0] <= 239 else
                     b"\xff" * 6 if dst[3] == 255 else
                     mac_of(dst) if dst[0] in (10, 172) else GATEWAY_MAC)
    sm = src_mac or (mac_of(src) if src[0] in (10, 172) else GATEWAY_MAC)
    return dm + sm + struct.pack("!HHH", 0x8100, vlan, 0x0800) + iph + l4


def udp(sp, dp, payload):
    return struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload


class Tcp:
    """One TCP connection's two directions: sequence numbers follow the
    bytes sent, Linux ends add the timestamps option to every segment."""

    def __init__(self, rng, vlan, c, s, cport, sport, linux):
        self.rng, self.vlan, self.linux = rng, vlan, linux
        self.ends = {True: (c, s, cport, sport), False: (s, c, sport, cport)}
        self.seq = {True: rng.getrandbits(32), False: rng.getrandbits(32)}
        self.ts = rng.getrandbits(31)

    def seg(self, c2s, flags, payload=b"", syn_opts=False):
        src, dst, sp, dp = self.ends[c2s]
        if syn_opts:
            opts = b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + struct.pack("!II", self.ts, 0) + b"\x01\x03\x03\x07"
        elif self.linux:
            self.ts += 1
            opts = b"\x01\x01\x08\x0a" + struct.pack("!II", self.ts, self.ts - 7)
        else:
            opts = b""
        ack = self.seq[not c2s] if flags & 0x10 else 0
        hdr = struct.pack("!HHIIBBHHH", sp, dp, self.seq[c2s], ack, (5 + len(opts) // 4) << 4, flags,
                          502 if flags & 0x02 else 2053, 0, 0) + opts
        self.seq[c2s] = (self.seq[c2s] + len(payload) + (1 if flags & 0x03 else 0)) & 0xFFFFFFFF
        return frame(self.vlan, src, dst, 6, hdr + payload)

    def open(self):
        return [(True, self.seg(True, 0x02, syn_opts=True)), (False, self.seg(False, 0x12, syn_opts=True)),
                (True, self.seg(True, 0x10))]

    def close(self, by_client=True):
        if self.rng.random() < 0.08:
            return [(by_client, self.seg(by_client, 0x14))]  # RST
        return [(by_client, self.seg(by_client, 0x11)), (not by_client, self.seg(not by_client, 0x11)),
                (by_client, self.seg(by_client, 0x10))]


def pareto(rng, shape, low, cap):
    return min(cap, int(low / (1.0 - rng.random()) ** (1.0 / shape)))


class Names:
    """DNS/SNI/Host names: a Zipf-popular vocabulary, plus per-request names
    (CDN shards, trackers) that rarely repeat."""

    WORDS = ("mail sync api cdn update telemetry weather chart ais vessel port crew portal login static img "
             "media news video cloud store backup office time ntp vpn remote support fleet maint docs").split()
    TLDS = ("com", "net", "org", "io", "no", "de", "co.uk", "sg", "gr", "nl")

    def __init__(self, rng, n=3000):
        self.rng = rng
        self.vocab = []
        for _ in range(n):
            parts = [rng.choice(self.WORDS) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
            domain = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(4, 11)))
            self.vocab.append(".".join(parts + [domain, rng.choice(self.TLDS)]))
        self.weights = [1.0 / (i + 1) ** 1.1 for i in range(n)]
        self.cum = []
        acc = 0.0
        for w in self.weights:
            acc += w
            self.cum.append(acc)

    def pick(self):
        if self.rng.random() < 0.2:
            shard = "%08x" % self.rng.getrandbits(32)
            return f"{shard}.{self.rng.choice(('edge', 'px', 'r'))}.{self.vocab[self.rng.randrange(50)]}"
        x = self.rng.random() * self.cum[-1]
        lo, hi = 0, len(self.cum) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cum[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return self.vocab[lo]


def dns_name(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"


def client_hello(rng, sni):
    name = sni.encode()
    sni_ext = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    exts = sni_ext + b"\x00\x0b\x00\x02\x01\x00" + b"\x00\x0a\x00\x04\x00\x02\x00\x1d" + b"\x00\x2b\x00\x03\x02\x03\x04"
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + b"\x00\x04\x13\x01\x13\x02"
            + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def server_hello(rng):
    body = b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + b"\x13\x01\x00" + b"\x00\x06\x00\x2b\x00\x02\x03\x04"
    hs = b"\x02" + struct.pack("!I", len(body))[1:] + body
    rec = b"\x16\x03\x03" + struct.pack("!H", len(hs)) + hs
    return rec + b"\x17\x03\x03" + struct.pack("!H", 1200) + rng.randbytes(1200)


def nmea(sentence):
    cs = 0
    for b in sentence.encode():
        cs ^= b
    return f"${sentence}*{cs:02X}\r\n".encode()


def tag_block(body):
    cs = 0
    for b in body.encode():
        cs ^= b
    return f"\\{body}*{cs:02X}\\".encode()


class Vessel:
    def __init__(self, seed):
        self.rng = rng = random.Random(seed)
        self.names = Names(rng)
        self.noise = rng.randbytes(1 << 16)
        self.it_hosts = [ip(f"10.20.0.{i}") for i in range(20, 60)]
        self.linux = {h: rng.random() < 0.4 for h in self.it_hosts}
        self.next_port = {h: rng.randint(49152, 60000) for h in self.it_hosts}
        self.servers = [bytes([rng.choice((13, 20, 34, 52, 104, 142, 151, 172, 185, 216)), rng.randrange(256),
                               rng.randrange(256), rng.randrange(1, 255)]) for _ in range(1500)]
        self.server_of = {}
        self.plcs = [ip(f"10.10.1.{100 + i}") for i in range(24)]
        self.hmis = [ip("10.10.1.10"), ip("10.10.1.11")]
        self.eng = ip("10.10.1.20")
        self.resolver = ip("10.20.0.1")
        self.ntp = ip("10.20.0.2")
        self.monitor = ip("10.20.0.5")
        self.heap = []
        self.order = 0
        self.t_tid = 0

    # -- helpers ---------------------------------------------------------
    def payload(self, n):
        at = self.rng.randrange(len(self.noise) - n)
        return self.noise[at:at + n]

    def cport(self, host):
        if self.linux.get(host, True):
            return self.rng.randint(32768, 60999)
        p = self.next_port[host]
        self.next_port[host] = 49152 if p >= 65535 else p + 1
        return p

    def server_for(self, name):
        s = self.server_of.get(name)
        if s is None:
            s = self.server_of[name] = self.rng.choice(self.servers)
        return s

    def gap(self, mean_s):
        return max(1, int(self.rng.expovariate(1.0 / mean_s) * 1e6))

    def start(self, t_us, gen):
        """Schedules a flow: gen yields (delay_us, frame) pairs, each delay
        from the flow's previous frame."""
        self.order += 1
        for delay, f in gen:
            heapq.heappush(self.heap, (t_us + delay, self.order, gen, f))
            break

    # -- kinds of flow (each a generator of (delay_us, frame)) ----------
    def dns(self):
        c = self.rng.choice(self.it_hosts)
        name = self.names.pick()
        q = struct.pack("!HHHHHH", self.rng.getrandbits(16), 0x0100, 1, 0, 0, 0) + dns_name(name) + struct.pack("!HH", 1, 1)
        sp = self.rng.randint(32768, 60999)
        yield 0, frame(VLAN_IT, c, self.resolver, 17, udp(sp, 53, q))
        answers = self.rng.randint(1, 4)
        r = q[:2] + b"\x81\x80" + q[4:6] + struct.pack("!H", answers) + q[8:] + b"".join(
            b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, self.rng.choice((60, 300, 3600)), 4) + self.server_for(name)
            for _ in range(answers))
        yield self.gap(0.02), frame(VLAN_IT, self.resolver, c, 17, udp(53, sp, r))

    def tls(self, port=443):
        c = self.rng.choice(self.it_hosts)
        name = self.names.pick()
        t = Tcp(self.rng, VLAN_IT, c, self.server_for(name), self.cport(c), port, self.linux[c])
        rtt = self.rng.choice((0.04, 0.25, 0.6))  # shore servers over 4G, GEO VSAT, LEO
        for c2s, f in t.open():
            yield self.gap(rtt / 2), f
        yield 200, t.seg(True, 0x18, client_hello(self.rng, name))
        yield self.gap(rtt), t.seg(False, 0x18, server_hello(self.rng))
        down = self.rng.random() < 0.8
        for i in range(pareto(self.rng, 1.15, 3, 20000)):
            if i % 2 == 0:
                yield self.gap(rtt / 4), t.seg(not down, 0x18 if i % 8 == 0 else 0x10, self.payload(1448 if i else 517))
            else:
                yield self.gap(0.002), t.seg(down, 0x10)
        for c2s, f in t.close(self.rng.random() < 0.5):
            yield self.gap(rtt / 2), f

    def http(self):
        c = self.rng.choice(self.it_hosts)
        name = self.names.pick()
        t = Tcp(self.rng, VLAN_IT, c, self.server_for(name), self.cport(c), 80, self.linux[c])
        for c2s, f in t.open():
            yield self.gap(0.1), f
        req = f"GET /{self.rng.getrandbits(40):x} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: Mozilla/5.0\r\n\r\n".encode()
        yield 300, t.seg(True, 0x18, req)
        size = pareto(self.rng, 1.3, 1, 3000) * 1448
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\r\n".encode()
        body = head + self.payload(1448 - len(head))
        for i in range(size // 1448):
            yield self.gap(0.05), t.seg(False, 0x10, body if i == 0 else self.payload(1448))
        yield self.gap(0.05), t.seg(True, 0x10)
        for c2s, f in t.close(False):
            yield self.gap(0.1), f

    def bulk(self):
        # Internal transfers: SMB to the file server, backups, updates.
        c = self.rng.choice(self.it_hosts)
        s, port = self.rng.choice(((ip("10.20.0.3"), 445), (ip("10.20.0.4"), 8443), (ip("10.20.0.3"), 139)))
        t = Tcp(self.rng, VLAN_IT, c, s, self.cport(c), port, self.linux[c])
        for c2s, f in t.open():
            yield self.gap(0.0005), f
        for i in range(pareto(self.rng, 1.1, 2, 40000)):
            c2s = self.rng.random() < 0.3
            yield self.gap(0.001), t.seg(c2s, 0x18, self.payload(self.rng.choice((1448, 1448, 1448, 612, 96))))
        for c2s, f in t.close():
            yield self.gap(0.0005), f

    def modbus_read(self, t, unit):
        self.t_tid = (self.t_tid + 1) & 0xFFFF
        if self.rng.random() < 0.01:
            fc, pdu, resp = 6, struct.pack("!BHH", 6, self.rng.randrange(100), self.rng.randrange(1000)), None
            resp = pdu
        else:
            fc = self.rng.choice((3, 3, 3, 4, 1))
            n = self.rng.choice((10, 20, 32))
            pdu = struct.pack("!BHH", fc, self.rng.choice((0, 100, 400)), n)
            body = self.payload(2 * n) if fc != 1 else self.payload((n + 7) // 8)
            resp = struct.pack("!BB", fc, len(body)) + body
        q = struct.pack("!HHHB", self.t_tid, 0, len(pdu) + 1, unit) + pdu
        r = struct.pack("!HHHB", self.t_tid, 0, len(resp) + 1, unit) + resp
        return q, r

    def modbus_session(self, hmi, plc, polls, every_s):
        t = Tcp(self.rng, VLAN_OT, hmi, plc, self.cport(hmi), 502, False)
        for c2s, f in t.open():
            yield self.gap(0.001), f
        for i in range(polls):
            q, r = self.modbus_read(t, 1)
            yield (self.gap(every_s) if i else 500), t.seg(True, 0x18, q)
            yield self.gap(0.008), t.seg(False, 0x18, r)
        for c2s, f in t.close():
            yield self.gap(0.001), f

    def s7(self):
        plc = self.rng.choice(self.plcs[:8])
        t = Tcp(self.rng, VLAN_OT, self.eng, plc, self.cport(self.eng), 102, False)
        for c2s, f in t.open():
            yield self.gap(0.001), f
        cr = b"\x03\x00\x00\x16\x11\xe0\x00\x00\x00\x01\x00\xc1\x02\x01\x00\xc2\x02\x01\x02\xc0\x01\x0a"
        yield 400, t.seg(True, 0x18, cr)
        yield self.gap(0.005), t.seg(False, 0x18, cr[:5] + b"\xd0" + cr[6:])
        setup = b"\x03\x00\x00\x19\x02\xf0\x80\x32\x01\x00\x00\x00\x00\x00\x08\x00\x00\xf0\x00\x00\x01\x00\x01\x01\xe0"
        yield self.gap(0.005), t.seg(True, 0x18, setup)
        yield self.gap(0.005), t.seg(False, 0x18, setup[:8] + b"\x03" + setup[9:17] + b"\x00\x00" + setup[17:])
        for i in range(pareto(self.rng, 1.3, 2, 500)):
            read = (b"\x03\x00\x00\x1f\x02\xf0\x80\x32\x01\x00\x00" + struct.pack("!H", i & 0xFFFF)
                    + b"\x00\x0e\x00\x00\x04\x01\x12\x0a\x10\x02\x00\x10\x00\x01\x84\x00\x00\x00")
            yield self.gap(0.5), t.seg(True, 0x18, read)
            data = self.payload(16)
            resp = (b"\x03\x00\x00\x29\x02\xf0\x80\x32\x03\x00\x00" + struct.pack("!H", i & 0xFFFF)
                    + b"\x00\x02\x00\x14\x00\x00\x04\x01\xff\x04\x00\x80" + data)
            yield self.gap(0.01), t.seg(False, 0x18, resp)
        for c2s, f in t.close():
            yield self.gap(0.001), f

    def nav_talker(self, src, group, sfi, sentences, hz, until_us):
        # One IEC 61162-450 talker on its transmission group: a flow as long
        # as the capture (split by the sensor's active timeout).
        port = 60000 + group
        dst = bytes([239, 192, 0, group])
        line = 0
        t = 0
        while t < until_us:
            line += 1
            body = b""
            for s in sentences:
                text = s(self.rng)
                body += tag_block(f"s:{sfi},n:{line}") + nmea(text)
            d = self.gap(1.0 / hz)
            t += d
            yield d, frame(VLAN_NAV, src, dst, 17, udp(port, port, b"UdPbC\0" + body))

    def broadcast(self):
        kind = self.rng.random()
        c = self.rng.choice(self.it_hosts)
        if kind < 0.4:
            name = self.rng.getrandbits(64).to_bytes(8, "big").hex()[:15].upper().ljust(16)
            q = struct.pack("!HHHHHH", self.rng.getrandbits(16), 0x0110, 1, 0, 0, 0) + b"\x20" + name.encode() * 2 + b"\x00\x00\x20\x00\x01"
            for i in range(3):
                yield (self.gap(0.75) if i else 0), frame(VLAN_IT, c, ip("10.20.0.255"), 17, udp(137, 137, q))
        elif kind < 0.7:
            m = b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: ssdp:all\r\n\r\n"
            sp = self.cport(c)
            for i in range(self.rng.randint(1, 4)):
                yield (self.gap(0.1) if i else 0), frame(VLAN_IT, c, ip("239.255.255.250"), 17, udp(sp, 1900, m))
        elif kind < 0.9:
            q = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + dns_name(f"_{self.rng.choice(('airplay', 'googlecast', 'ipp', 'spotify-connect'))}._tcp.local") + b"\x00\x0c\x00\x01"
            yield 0, frame(VLAN_IT, c, ip("224.0.0.251"), 17, udp(5353, 5353, q))
        else:
            dhcp = b"\x01\x01\x06\x00" + self.rng.randbytes(4) + b"\x00" * 20 + mac_of(c) + b"\x00" * 202 + b"\x63\x82\x53\x63\x35\x01\x03\xff"
            yield 0, frame(VLAN_IT, b"\x00" * 4, b"\xff" * 4, 17, udp(68, 67, dhcp), src_mac=mac_of(c))

    def ntp_query(self):
        c = self.rng.choice(self.it_hosts + self.plcs[:6])
        vlan = VLAN_OT if c[2] == 1 else VLAN_IT
        sp = 123 if self.rng.random() < 0.5 else self.rng.randint(32768, 60999)
        q = b"\x23" + b"\x00" * 39 + self.rng.randbytes(8)
        yield 0, frame(vlan, c, self.ntp, 17, udp(sp, 123, q))
        yield self.gap(0.001), frame(vlan, self.ntp, c, 17, udp(123, sp, b"\x24\x02" + self.rng.randbytes(46)))

    def ping(self):
        dst = self.rng.choice(self.plcs + self.it_hosts + self.hmis)
        vlan = VLAN_OT if dst[2] == 1 else VLAN_IT
        ident = self.rng.getrandbits(16)
        for i in range(self.rng.choice((1, 1, 4))):
            echo = struct.pack("!BBHHH", 8, 0, 0, ident, i) + self.payload(56)
            yield (self.gap(1.0) if i else 0), frame(vlan, self.monitor, dst, 1, echo)
            yield self.gap(0.0008), frame(vlan, dst, self.monitor, 1, b"\x00" + echo[1:])

    # -- the scenario ----------------------------------------------------
    def run(self, packets, out):
        rng = self.rng
        kinds = [  # (flows per second, flow generator)
            (9.0, self.dns), (4.0, self.tls), (0.6, lambda: self.tls(8443)), (0.8, self.http),
            (0.5, self.bulk), (1.2, self.broadcast), (0.4, self.ntp_query), (2.0, self.ping),
            (0.02, self.s7),
            # A SCADA that connects for each poll of a PLC.
            (1.2, lambda: self.modbus_session(self.hmis[1], rng.choice(self.plcs[12:]), rng.randint(1, 3), 0.2)),
        ]
        next_arrival = [(rng.expovariate(rate) * 1e6, k) for k, (rate, _) in enumerate(kinds)]
        horizon = 4 * 3600 * 1_000_000
        # Persistent HMI polls (1 s) and navigation talkers, all capture long.
        for plc in self.plcs[:12]:
            self.start(rng.randrange(1_000_000), self.modbus_session(self.hmis[0], plc, 10 ** 7, 1.0))
        nav = [
            (1, "GP0001", [lambda r: f"GPGGA,{r.randint(0, 235959):06d}.00,5321.{r.randint(0, 9999):04d},N,00630.{r.randint(0, 9999):04d},W,1,08,1.0,12.0,M,50.0,M,,"], 1),
            (1, "GP0001", [lambda r: f"GPVTG,{r.randint(0, 359)}.0,T,,M,{r.randint(0, 20)}.{r.randint(0, 9)},N,,K,A"], 1),
            (3, "HE0002", [lambda r: f"HEHDT,{r.randint(0, 3599) / 10:.1f},T"], 10),
            (7, "ZA0003", [lambda r: f"ZAZDA,{r.randint(0, 235959):06d}.00,24,11,2025,00,00"], 1),
            (4, "AI0004", [lambda r: "AIVDM,1,1,,A," + "".join(r.choice("0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVW`abcdefghijklmnopqrstuvw") for _ in range(28)) + ",0"], 5),
            (2, "RA0005", [lambda r: f"RATTM,{r.randint(1, 99):02d},{r.randint(0, 12)}.{r.randint(0, 99)},{r.randint(0, 359)},T,{r.randint(0, 30)},{r.randint(0, 359)},T,,,N,,T,,,A"], 2),
        ]
        for k, (group, sfi, sentences, hz) in enumerate(nav):
            src = ip(f"172.16.1.{10 + k}")
            self.start(rng.randrange(1_000_000), self.nav_talker(src, group, sfi, sentences, hz, horizon))
        written = 0
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        while written < packets:
            # Start every flow that arrives before the next packet is due.
            t_next = self.heap[0][0] if self.heap else horizon
            for k, (t_a, kind) in enumerate(next_arrival):
                while t_a <= t_next:
                    self.start(int(t_a), kinds[kind][1]())
                    t_a += rng.expovariate(kinds[kind][0]) * 1e6
                next_arrival[k] = (t_a, kind)
            t, order, gen, f = heapq.heappop(self.heap)
            ts = BASE_US + t
            out.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(f), len(f)))
            out.write(f)
            written += 1
            for delay, f in gen:
                heapq.heappush(self.heap, (t + delay, order, gen, f))
                break
        return written, t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="pcap file to write")
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets to write (default 2,000,000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    a = ap.parse_args()
    if a.packets < 1:
        ap.error("--packets must be at least 1")
    with open(a.out, "wb") as out:
        n, t_us = Vessel(a.seed).run(a.packets, out)
    print(f"{a.out}: {n} packets over {t_us / 1e6:.0f} s of capture time")


if __name__ == "__main__":
    main()

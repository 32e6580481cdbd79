#!/usr/bin/env python3
"""Live capture benchmark: packets the sensor meters and the kernel drops on
a veth pair, side by side with tcpdump and softflowd on the same replay.

  deploy/local/bench-live.py [--packets 500000] [--flows 20000] [--rates 100,200,500,1000,top]
                             [--tools tidewatch,tcpdump,softflowd] [--parallel 1]

Builds a realistic capture (mixed sizes averaging ~370 bytes: Modbus/TCP
polls, NMEA 0183 over UDP, bulk TCP segments; FLOWS concurrent flows), creates
two network namespaces joined by a veth pair, and for each rate (Mbps, or
`top` for tcpreplay's top speed) replays it with `tcpreplay --mbps` from one
namespace while one tool listens on the other end: `tidewatch-sensor read
--interface`, then `tcpdump -w /dev/null`, then `softflowd -i` (its libpcap
counters, read with softflowctl). Prints, per rate and tool, the packets
seen, the kernel drops and the CPU seconds used. Removes what it created.
Needs root, iproute2, tcpreplay, tcpdump, softflowd (Debian packages) and a
release build of tidewatch-sensor. TIDEWATCH_* variables reach the sensor
(e.g. TIDEWATCH_CAPTURE_BUFFER_MIB=8).
"""
import argparse
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from frames import eth_ip, tcp, udp

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
# The NMEA sentence of the live capture (its sizes are the figures').
NMEA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"


def build(path, packets, flows):
    """`packets` frames over `flows` concurrent flows, 1 µs apart."""
    rnd = random.Random(7)
    bulk = bytes(rnd.getrandbits(8) for _ in range(1460))
    total = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for n in range(packets):
            i = rnd.randrange(flows)
            c = bytes([10, 1, (i >> 8) & 0xFF, i & 0xFF])
            s = bytes([10, 2, 0, 1 + i % 200])
            cport = 1024 + i % 60000
            kind = i % 10
            to_server = rnd.random() < (0.6 if kind >= 7 else 0.5)
            src, dst = (c, s) if to_server else (s, c)
            if kind < 4:  # Modbus/TCP polls: small
                pdu = b"\x01\x03\x00\x00\x00\x0a" if to_server else b"\x01\x03\x14" + b"\x00" * 20
                mb = struct.pack("!HHH", n & 0xFFFF, 0, len(pdu)) + pdu
                l4 = tcp(cport, 502, 0x18, mb) if to_server else tcp(502, cport, 0x18, mb)
                frame = eth_ip(src, dst, 6, l4)
            elif kind < 7:  # NMEA over UDP: medium
                body = NMEA * 4 if to_server else b"ack"
                l4 = udp(cport, 10110, body) if to_server else udp(10110, cport, body)
                frame = eth_ip(src, dst, 17, l4)
            else:  # bulk TCP: full-size segments one way, ACKs back
                l4 = tcp(cport, 8443, 0x10, bulk) if to_server else tcp(8443, cport, 0x10, b"")
                frame = eth_ip(src, dst, 6, l4)
            t_us = n
            f.write(struct.pack("<IIII", 1_700_000_000 + t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame)))
            f.write(frame)
            total += len(frame)
    return total / packets


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def cpu_seconds(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


class Net:
    def __init__(self):
        tag = str(os.getpid())
        self.a, self.b = f"twbla{tag}", f"twblb{tag}"
        self.ia, self.ib = f"tbla{tag}"[:15], f"tblb{tag}"[:15]

    def __enter__(self):
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", self.ia, "netns", self.a, "type", "veth", "peer", "name", self.ib, "netns", self.b)
        for ns, i in ((self.a, self.ia), (self.b, self.ib)):
            sh("ip", "-n", ns, "link", "set", i, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def __exit__(self, *exc):
        for ns in (self.a, self.b):
            sh("ip", "netns", "del", ns, check=False)


def replay(net, cap, rate, parallel):
    """`parallel` tcpreplay processes each replay `cap` (each at rate/parallel
    Mbps); returns (packets sent, seconds of the longest)."""
    args = ["--topspeed"] if rate == "top" else [f"--mbps={float(rate) / parallel:g}"]
    procs = [subprocess.Popen(["ip", "netns", "exec", net.a, "tcpreplay", "-q", "-i", net.ia, *args, cap],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(parallel)]
    sent, secs = 0, 0.0
    for p in procs:
        out = p.communicate()[0]
        m = re.search(r"Actual: (\d+) packets .* in ([\d.]+) seconds", out.replace("\n", " "))
        if m:
            sent += int(m.group(1))
            secs = max(secs, float(m.group(2)))
    return sent, secs


def measure(net, cap, rate, tool, parallel):
    """Starts `tool` listening in namespace b, replays, stops it; returns
    (packets sent, seconds, packets seen, kernel drops, CPU seconds)."""
    sensor = os.path.join(ROOT, "target", "release", "tidewatch-sensor")
    if tool == "tidewatch":
        cmd = [sensor, "read", "--interface", net.ib]
        ready = "live capture started"
    elif tool == "tcpdump":
        cmd = ["tcpdump", "-i", net.ib, "-w", "/dev/null", "-B", "8192"]
        ready = "listening on"
    else:
        ctl = os.path.join(tempfile.gettempdir(), f"tidewatch-bench-softflowd-{os.getpid()}.ctl")
        cmd = ["softflowd", "-d", "-i", net.ib, "-n", "127.0.0.1:9", "-c", ctl, "-m", "100000"]
        ready = "starting data collection"
    err = tempfile.TemporaryFile("w+")
    p = subprocess.Popen(["ip", "netns", "exec", net.b, *cmd], stdout=subprocess.DEVNULL, stderr=err,
                         env={**os.environ, "RUST_LOG": "info"})
    deadline = time.time() + 10
    while time.time() < deadline:
        err.seek(0)
        if ready in err.read():
            break
        time.sleep(0.05)
    time.sleep(0.5)
    cpu0 = cpu_seconds(p.pid)
    sent, secs = replay(net, cap, rate, parallel)
    time.sleep(1.0)
    cpu = cpu_seconds(p.pid) - cpu0
    if tool == "softflowd":
        # Its libpcap counters, before it goes.
        stats = sh("ip", "netns", "exec", net.b, "softflowctl", "-c", ctl, "statistics", check=False).stdout
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    err.seek(0)
    text = err.read()
    seen = drops = None
    if tool == "tidewatch":
        m = re.search(r"live capture stopped.*?frames=(\d+) kernel_drops=(\d+)", text)
        if m:
            seen, drops = int(m.group(1)), int(m.group(2))
    elif tool == "tcpdump":
        a = re.search(r"(\d+) packets captured", text)
        d = re.search(r"(\d+) packets dropped by kernel", text)
        if a and d:
            seen, drops = int(a.group(1)), int(d.group(1))
    else:
        r = re.search(r"received by libpcap: (\d+)", stats)
        d = re.search(r"dropped by libpcap: (\d+)", stats)
        i = re.search(r"dropped by interface: (\d+)", stats)
        if r and d and i:
            seen, drops = int(r.group(1)), int(d.group(1)) + int(i.group(1))
    return sent, secs, seen, drops, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=500_000)
    ap.add_argument("--flows", type=int, default=20_000)
    ap.add_argument("--rates", default="100,200,500,1000,top")
    ap.add_argument("--tools", default="tidewatch,tcpdump,softflowd")
    ap.add_argument("--parallel", type=int, default=1,
                    help="tcpreplay processes at once (to go past one's top speed)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-live.py creates network namespaces: run it as root")
    for t in ("ip", "tcpreplay", "tcpdump", "softflowd", "softflowctl"):
        if not shutil.which(t):
            sys.exit(f"{t} not found: apt-get install iproute2 tcpreplay tcpdump softflowd")
    if not os.path.exists(os.path.join(ROOT, "target", "release", "tidewatch-sensor")):
        sys.exit("build tidewatch-sensor first: cargo build --release -p tidewatch-sensor")
    with tempfile.TemporaryDirectory() as d:
        cap = os.path.join(d, "live.pcap")
        avg = build(cap, a.packets, a.flows)
        print(f"capture: {a.packets} packets, {a.flows} flows, {avg:.0f} bytes on average")
        print(f"{'rate':>6} {'tool':>10} {'sent':>8} {'pps':>8} {'seen':>8} {'drops':>8} {'drop %':>7} {'CPU s':>6}")
        with Net() as net:
            for rate in a.rates.split(","):
                for tool in a.tools.split(","):
                    sent, secs, seen, drops, cpu = measure(net, cap, rate, tool, max(1, a.parallel))
                    pps = sent / secs if secs else 0
                    pct = f"{100 * drops / sent:.1f}" if drops is not None and sent else "-"
                    print(f"{rate:>6} {tool:>10} {sent:>8} {pps:>8.0f} {seen if seen is not None else '-':>8} "
                          f"{drops if drops is not None else '-':>8} {pct:>7} {cpu:>6.2f}", flush=True)


if __name__ == "__main__":
    main()

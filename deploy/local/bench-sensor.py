#!/usr/bin/env python3
"""Sensor metering benchmark: packets/s of `tidewatch-sensor read` side by side
with `softflowd -r` on the same capture, and peak RSS with many concurrent flows.

  deploy/local/bench-sensor.py [--flows 100000] [--packets-per-flow 10] [--repeat 7]

Builds a capture of FLOWS concurrent flows (interleaved round-robin, so all
are open at once: Modbus/TCP polls, NMEA 0183 over UDP and opaque TCP), then
runs both tools on it (output discarded) and prints the figures. Needs a
release build (`cargo build --release -p tidewatch-sensor`) and softflowd
(Debian package).
"""
import argparse
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

from frames import GGA, eth_ip, tcp, udp

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def build(path, flows, per_flow):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        n = 0
        for j in range(per_flow):
            for i in range(flows):
                c = bytes([10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF])
                s = bytes([10, 200, 0, 1 + i % 200])
                cport = 1024 + i % 60000
                kind = i % 3
                to_server = j % 2 == 0
                src, dst = (c, s) if to_server else (s, c)
                if kind == 0:
                    tid = j & 0xFFFF
                    pdu = b"\x01\x03\x00\x00\x00\x0a" if to_server else b"\x01\x03\x14" + b"\x00" * 20
                    mb = struct.pack("!HHH", tid, 0, len(pdu)) + pdu
                    l4 = tcp(cport, 502, 0x18, mb) if to_server else tcp(502, cport, 0x18, mb)
                    frame = eth_ip(src, dst, 6, l4)
                elif kind == 1:
                    l4 = udp(cport, 10110, GGA) if to_server else udp(10110, cport, b"ack")
                    frame = eth_ip(src, dst, 17, l4)
                else:
                    l4 = tcp(cport, 8443, 0x10, os.urandom(64)) if to_server else tcp(8443, cport, 0x10, b"")
                    frame = eth_ip(src, dst, 6, l4)
                t_us = j * 1_000_000 + i * 5
                f.write(struct.pack("<IIII", 1_700_000_000 + t_us // 1_000_000, t_us % 1_000_000, len(frame), len(frame)))
                f.write(frame)
                n += 1
    return n


def run(cmd):
    """Wall time, CPU time and peak RSS (KiB) of one run of cmd."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {err.decode()[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--packets-per-flow", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7, help="runs of each tool (medians are reported)")
    a = ap.parse_args()
    sensor = os.path.join(ROOT, "target", "release", "tidewatch-sensor")
    if not os.path.exists(sensor):
        sys.exit("build first: cargo build --release -p tidewatch-sensor")
    softflowd = shutil.which("softflowd") or "/usr/sbin/softflowd"
    if not os.path.exists(softflowd):
        sys.exit("softflowd not found: apt-get install softflowd")
    with tempfile.TemporaryDirectory() as d:
        pcap = os.path.join(d, "bench.pcap")
        n = build(pcap, a.flows, a.packets_per_flow)
        size = os.path.getsize(pcap)
        print(f"capture: {n} packets, {a.flows} concurrent flows, {size / 1e6:.1f} MB")
        # Warm the page cache so both tools read from memory.
        with open(pcap, "rb") as f:
            while f.read(1 << 20):
                pass
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        tws, sfs = [], []
        # Interleaved, so a slow spell of a shared machine hits both tools.
        for _ in range(a.repeat):
            tws.append(run([sensor, "read", pcap]))
            sfs.append(run([softflowd, "-r", pcap, "-n", f"127.0.0.1:{port}", "-v", "10", "-m", str(a.flows * 2)]))
        s.close()
        tw = [median([r[i] for r in tws]) for i in range(3)]
        sf = [median([r[i] for r in sfs]) for i in range(3)]
        ratios = sorted(f[0] / t[0] for t, f in zip(tws, sfs))
        print(f"{a.repeat} runs of each, interleaved; medians:")
        print(f"tidewatch-sensor read: {tw[0]:.3f} s wall, {tw[1]:.3f} s CPU = {n / tw[0]:,.0f} packets/s; "
              f"peak RSS {max(r[2] for r in tws) / 1024:.1f} MiB (largest of the runs)")
        print(f"softflowd -r:          {sf[0]:.3f} s wall, {sf[1]:.3f} s CPU = {n / sf[0]:,.0f} packets/s")
        print(f"ratio: tidewatch is {sf[0] / tw[0]:.2f}x softflowd (median wall times, same capture; "
              f"per pair {ratios[0]:.2f}x to {ratios[-1]:.2f}x)")
        print(f"       {sf[1] / tw[1]:.2f}x in CPU time (read uses helper threads for file input and JSON output)")

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Bytes per flow record on the wire: tidewatch's batches (as `run` sends
them: batch layout + zstd, gRPC framing) against softflowd's IPFIX export of
the same captures.

  deploy/local/bench-wire.py [--packets N] [CAPTURE...]

Without captures it measures two sets apart: a capture of realistic shape
from deploy/local/gen-traffic.py (N packets, default 2,000,000; Poisson flow
arrivals, heavy-tailed lengths, varying names, OT polls, VLANs), and every
capture of ../shared/pcaps (small captures, dominated by per-batch costs).
For each: bytes per flow in both batch layouts (columns, the default, and
protobuf, the original) with full batches (as when the link or the budget
is the limit), and columns linked to one upload stream's table (what `run`
sends to an ingest that keeps one), their ratio to IPFIX, what each group of fields costs in the
columnar layout, the sensor's sealing time per flow and the peak RSS of
`estimate` (metering and sealing the capture); for the generated capture
also with batches sealed every 10 s of capture time (a link that keeps up).

softflowd runs with `-r FILE -n 127.0.0.1:PORT -v 10 -b -m 100000` (bidirectional
flows, IPFIX); its datagrams are collected on a local UDP port and its data
records counted by parsing the IPFIX templates. tidewatch's side comes from
`tidewatch-sensor estimate`. Needs softflowd (Debian package) and a build of
tidewatch-sensor (release or debug).
"""
import argparse
import glob
import json
import resource
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def sensor_bin():
    for profile in ("release", "debug"):
        p = os.path.join(ROOT, "target", profile, "tidewatch-sensor")
        if os.path.exists(p):
            return p
    sys.exit("build tidewatch-sensor first (cargo build --release -p tidewatch-sensor)")


def ipfix_records(datagrams):
    """Data records in IPFIX messages (templates parsed for record sizes)."""
    templates = {}
    records = 0
    for d in datagrams:
        if len(d) < 16 or struct.unpack("!H", d[:2])[0] != 10:
            continue
        at = 16
        while at + 4 <= len(d):
            set_id, set_len = struct.unpack("!HH", d[at:at + 4])
            if set_len < 4:
                break
            body = d[at + 4:at + set_len]
            if set_id == 2:
                i = 0
                while i + 4 <= len(body):
                    tid, count = struct.unpack("!HH", body[i:i + 4])
                    i += 4
                    size = 0
                    for _ in range(count):
                        fid, flen = struct.unpack("!HH", body[i:i + 4])
                        i += 4
                        if fid & 0x8000:
                            i += 4
                        size += flen
                    templates[tid] = size
            elif set_id >= 256 and templates.get(set_id):
                records += len(body) // templates[set_id]
            at += set_len
    return records


def softflowd(cap):
    sf = shutil.which("softflowd") or "/usr/sbin/softflowd"
    if not os.path.exists(sf):
        sys.exit("softflowd not found: apt-get install softflowd")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # A large receive buffer: softflowd sends faster than this loop reads
    # when the machine is busy, and datagrams dropped here would be missing
    # from the count (not from the bytes per flow, but still).
    try:
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 64 << 20)  # root
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.3)
    port = s.getsockname()[1]
    p = subprocess.Popen([sf, "-r", cap, "-n", f"127.0.0.1:{port}", "-v", "10", "-b", "-m", "100000"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    grams = []
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            grams.append(s.recv(65535))
        except socket.timeout:
            if p.poll() is not None:
                break
    p.wait()
    s.close()
    return sum(len(g) for g in grams), ipfix_records(grams)


def estimate(sensor, cap, layout, by_field, flush=None):
    """`tidewatch-sensor estimate` of one capture (its peak RSS shows in
    this process's RUSAGE_CHILDREN)."""
    cmd = [sensor, "estimate", "--batch-layout", layout] + (["--by-field"] if by_field else []) \
        + (["--flush-interval", str(flush)] if flush else []) + [cap]
    p = subprocess.run(cmd, capture_output=True)
    if p.returncode != 0:
        sys.exit(f"estimate {cap} failed: {p.stderr.decode()[-2000:]}")
    return json.loads(p.stdout)


def measure(title, caps, sensor, timed=False):
    totals = {}
    rss = {}
    fields = {}
    for layout in ("columns", "protobuf"):
        t = totals[layout] = {"bytes": 0, "flows": 0, "seal_us": 0.0, "link_bytes": 0, "link_us": 0.0,
                              "ingest_us": 0.0}
        rss[layout] = 0
        for cap in caps:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            e = estimate(sensor, cap, layout, layout == "columns")
            rss[layout] = max(rss[layout], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
            t["bytes"] += e["bytes"]
            t["flows"] += e["flows"]
            t["seal_us"] += e["seal_us_per_flow"] * e["flows"]
            t["link_bytes"] += e["link_bytes"]
            t["link_us"] += e["link_us_per_flow"] * e["flows"]
            t["ingest_us"] += e["ingest_link_us_per_flow"] * e["flows"]
            for k, v in e.get("by_field_bytes_per_flow", {}).items():
                fields[k] = fields.get(k, 0.0) + v * e["flows"]
    sf_bytes = sf_flows = 0
    for cap in caps:
        b, n = softflowd(cap)
        sf_bytes += b
        sf_flows += n
    ipfix = sf_bytes / max(sf_flows, 1)
    print(f"== {title}: {len(caps)} capture(s)")
    print(f"softflowd IPFIX (bidirectional): {sf_flows} flow records, {sf_bytes} bytes = {ipfix:.1f} bytes/flow (UDP payload)")
    for layout, t in totals.items():
        per = t["bytes"] / max(t["flows"], 1)
        print(f"tidewatch {layout:8}: {t['flows']} flow records, {t['bytes']} bytes = {per:.2f} bytes/flow = "
              f"{per / ipfix:.2f}x IPFIX; sealing {t['seal_us'] / max(t['flows'], 1):.2f} us/flow; "
              f"estimate peak RSS {rss[layout] // 1024} MiB")
    t = totals["columns"]
    flows = max(t["flows"], 1)
    per = t["link_bytes"] / flows
    print(f"tidewatch columns linked (one upload stream to an ingest with a link table): {per:.2f} bytes/flow = "
          f"{per / ipfix:.3f}x IPFIX; linking {t['link_us'] / flows:.2f} us/flow on the sensor, "
          f"{t['ingest_us'] / flows:.2f} us/flow at ingest (read and stored self-contained)")
    print("columns, bytes/flow each group of fields costs (left out alone; framing: all left out):")
    print("  " + ", ".join(f"{k} {v / flows:.2f}" for k, v in fields.items()))
    if timed:
        # As `run` seals on a link that keeps up: every 10 s of capture time.
        for layout in ("columns", "protobuf"):
            b = n = linked = 0
            for cap in caps:
                e = estimate(sensor, cap, layout, False, flush=10)
                b += e["bytes"]
                n += e["flows"]
                linked += e["link_bytes"]
            per = b / max(n, 1)
            print(f"tidewatch {layout:8}, sealed every 10 s (a link that keeps up): {per:.2f} bytes/flow = {per / ipfix:.2f}x IPFIX")
            if layout == "columns":
                per = linked / max(n, 1)
                print(f"tidewatch columns linked, sealed every 10 s: {per:.2f} bytes/flow = {per / ipfix:.2f}x IPFIX")
    print("(gRPC framing counted; TLS adds ~1.5%)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=2_000_000, help="packets of the generated capture")
    ap.add_argument("captures", nargs="*", help="captures to measure instead of the two default sets")
    a = ap.parse_args()
    sensor = sensor_bin()
    if a.captures:
        measure("given captures", a.captures, sensor)
        return
    with tempfile.TemporaryDirectory() as d:
        cap = os.path.join(d, "realistic.pcap")
        subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "local", "gen-traffic.py"), cap,
                        "--packets", str(a.packets)], check=True, stdout=subprocess.DEVNULL)
        measure(f"realistic generator ({a.packets} packets, seed 1)", [cap], sensor, timed=True)
    print()
    caps = sorted(glob.glob(os.path.join(ROOT, "..", "shared", "pcaps", "*", "*.pcap*")))
    measure("reference corpus", caps, sensor)


if __name__ == "__main__":
    main()

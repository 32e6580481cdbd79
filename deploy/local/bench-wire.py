#!/usr/bin/env python3
"""Bytes per flow record on the wire: tidewatch's batches (as `run` sends
them: protobuf + zstd, gRPC framing) against softflowd's IPFIX export of the
same captures.

  deploy/local/bench-wire.py [CAPTURE...]      (default: every capture in ../shared/pcaps)

softflowd runs with `-r FILE -n 127.0.0.1:PORT -v 10 -b -m 100000` (bidirectional
flows, IPFIX); its datagrams are collected on a local UDP port and its data
records counted by parsing the IPFIX templates. tidewatch's side comes from
`tidewatch-sensor estimate`. Needs softflowd (Debian package) and a build of
tidewatch-sensor (release or debug).
"""
import glob
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
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


def main():
    caps = sys.argv[1:] or sorted(glob.glob(os.path.join(ROOT, "..", "shared", "pcaps", "*", "*.pcap*")))
    sensor = sensor_bin()
    tw_bytes = tw_flows = sf_bytes = sf_flows = 0
    for cap in caps:
        out = subprocess.run([sensor, "estimate", cap], capture_output=True, text=True, check=True).stdout
        e = json.loads(out)
        b, n = softflowd(cap)
        tw_bytes += e["bytes"]
        tw_flows += e["flows"]
        sf_bytes += b
        sf_flows += n
    print(f"captures: {len(caps)}")
    print(f"tidewatch: {tw_flows} flow records, {tw_bytes} bytes = {tw_bytes / max(tw_flows, 1):.1f} bytes/flow "
          "(protobuf + zstd per batch, gRPC framing; TLS adds ~1.5%)")
    print(f"softflowd IPFIX: {sf_flows} flow records, {sf_bytes} bytes = {sf_bytes / max(sf_flows, 1):.1f} bytes/flow (UDP payload)")
    if sf_flows and tw_flows:
        print(f"ratio: {(tw_bytes / tw_flows) / (sf_bytes / sf_flows):.2f}x IPFIX")


if __name__ == "__main__":
    main()

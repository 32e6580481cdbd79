#!/usr/bin/env python3
"""Independent gRPC client for tidewatch interop tests.

Uses Python grpcio (C-core, its own TLS stack) and stubs generated at run time
from the project's .proto files with grpcio-tools, so nothing is shared with
the Rust implementation but the .proto source.

  upload.py --port P --ca CA --cert CERT --key KEY [--mode MODE] [--seq N]

Modes:
  batch    upload one batch with three flows and print the ack as JSON
  garbage  send bytes that are not an UploadRequest; print the gRPC status
Prints one JSON object to stdout; exits 0 if the exchange completed.
"""
import argparse
import atexit
import importlib
import json
import os
import shutil
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def load_stubs():
    out = tempfile.mkdtemp(prefix="tidewatch-pystubs-")
    # The stubs are imported once, at start: the directory goes at exit.
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    files = [f"tidewatch/v1/{n}.proto" for n in ("records", "uplink", "kafka")]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}",
                      f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    records = importlib.import_module("tidewatch.v1.records_pb2")
    uplink = importlib.import_module("tidewatch.v1.uplink_pb2")
    uplink_grpc = importlib.import_module("tidewatch.v1.uplink_pb2_grpc")
    return records, uplink, uplink_grpc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--seq", type=int, default=1)
    ap.add_argument("--mode", choices=["batch", "garbage"], default="batch")
    a = ap.parse_args()
    records, uplink, uplink_grpc = load_stubs()

    creds = grpc.ssl_channel_credentials(
        root_certificates=open(a.ca, "rb").read(),
        private_key=open(a.key, "rb").read(),
        certificate_chain=open(a.cert, "rb").read())
    target = f"127.0.0.1:{a.port}"
    opts = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, creds, options=opts) as ch:
        grpc.channel_ready_future(ch).result(timeout=20)
        if a.mode == "garbage":
            call = ch.stream_stream("/tidewatch.v1.Uplink/Upload",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
            try:
                for _ in call(iter([b"\xff\xff\xff\xff\x0f garbage, not protobuf"]), timeout=20):
                    pass
                print(json.dumps({"status": "OK"}))
            except grpc.RpcError as e:
                print(json.dumps({"status": e.code().name, "details": e.details()}))
            return

        batch = records.Batch(seq=a.seq, created_us=1)
        for i in range(3):
            f = batch.flows.add()
            f.first_seen_us = 1_650_000_000_000_000 + i
            f.last_seen_us = 1_650_000_000_100_000 + i
            f.client_ip = bytes([192, 168, 7, 10 + i])
            f.server_ip = bytes([192, 168, 7, 1])
            f.client_port = 50000 + i
            f.server_port = 502
            f.ip_protocol = 6
            f.c2s.packets = 5
            f.c2s.ip_bytes = 400
            f.s2c.packets = 4
            f.s2c.ip_bytes = 300
            f.app_protocol = "modbus"
        req = uplink.UploadRequest(seq=a.seq, encoding=uplink.ENCODING_PROTOBUF,
                                   payload=batch.SerializeToString())
        stub = uplink_grpc.UplinkStub(ch)
        acks = [{"seq": ack.seq, "status": uplink.AckStatus.Name(ack.status),
                 "retryable": ack.retryable, "records": ack.records, "detail": ack.detail}
                for ack in stub.Upload(iter([req]), timeout=30)]
        print(json.dumps({"acks": acks}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A plant-MES pull client for a Linesight station, written the way an integrator would.

It keeps every record exactly once in a JSON-lines file, whatever kills it: the file is its
own cursor. At start it drops a torn last line (a kill mid-write), goes on from the last
sequence number it holds, appends each page and fsyncs it, then acknowledges the page to the
station (so the station's `GET /api/v1/records` without a cursor would resume there too).

    LINESIGHT_TOKEN=<mes-client token> tests/mes/pull_client.py --station http://host:8080 \\
        --out records.jsonl [--until SEQ] [--limit N]

Without --until it follows the station forever; with it, it stops once it holds SEQ.
Only the standard library: it runs on any Python 3.
"""
import argparse
import json
import os
import sys
import time
import urllib.request


def last_seq_kept(path):
    """The last sequence number in the file, after cutting a torn last line."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
        lines = data[:end].splitlines()
    return json.loads(lines[-1])["seq"] if lines else 0


def request(station, token, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(station + path, data=data, method="POST" if data else "GET")
    req.add_header("Authorization", "Bearer " + token)
    if data:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.load(response)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--station", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--until", type=int)
    parser.add_argument("--limit", type=int, default=500)
    args = parser.parse_args()
    token = os.environ.get("LINESIGHT_TOKEN")
    if not token:
        sys.exit("set LINESIGHT_TOKEN to a mes-client token")
    station = args.station.rstrip("/")
    kept = last_seq_kept(args.out)
    with open(args.out, "ab") as out:
        while args.until is None or kept < args.until:
            page = request(station, token, f"/api/v1/records?from={kept + 1}&limit={args.limit}")
            items = page["items"]
            for record in items:
                if record["seq"] != kept + 1:
                    sys.exit(f"gap: expected {kept + 1}, got {record['seq']}")
                out.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")
                kept = record["seq"]
            if items:
                out.flush()
                os.fsync(out.fileno())
                request(station, token, "/api/v1/records/ack",
                        {"seq": kept, "instance_id": page["instance_id"]})
            if not page["more"]:
                time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

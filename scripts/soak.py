#!/usr/bin/env python3
"""The station's soak and fault run (issue 20): `make soak` (30 minutes) and, short, `make test`.

The whole station runs as on a line in client mode: the real binary, its camera a GStreamer
tcpserversrc, tracking parts by encoder counts, its PLC `tests/interop/client_mode_plc.py` (a
pymodbus Modbus TCP server running the port of firmware-io/plc/linesight_gate.st, on a belt
that shows the camera one part per frame and diverts at the gate). 20 parts a second for the
whole run, and, in every cycle of the run (5 minutes; the whole run when shorter):

- the PLC restarts: its Modbus server goes away for 3 s, comes back with its registers cleared
  and a fresh program (the belt stands meanwhile);
- the camera's cable is pulled for 5 s: its connection closes, the parts that pass meanwhile
  are never seen, then it connects again;
- the data disk (a tmpfs of its own) fills: first below the image floor, then to the last
  byte, for 20 s (10 s in a short run), then the space comes back.

An MES client pulls the records as they come (`/api/v1/records`) for the whole run, and the
resident memory is sampled every 5 s. Afterwards it checks, and writes down in
OUT/soak-report.md (OUT/soak.json for machines):

- no acknowledged record is lost: every record the MES pulled is in the store afterwards,
  unchanged; the sequence has no gap; `linesight records verify` finds nothing wrong;
- every part is accounted for: each part on the belt reached the diverter; each part the
  camera saw has exactly one record, inspected or rejected by policy (its frame dropped, its
  verdict late, the PLC gone); each part it never saw, and each without its own PASS, was
  diverted by the PLC; a part passed only with its own delivered PASS;
- resident memory grew less than 10 % from the end of the warm-up to the end of the run;
- the station stayed up through every fault and stopped cleanly at the end.

Exit status 0 when every check holds, 1 otherwise (the report says which failed).

    make soak                               # 30 minutes, the release build
    scripts/soak.py --seconds 100 --binary target/debug/linesight   # the short run of make test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from stationprobe import cpu_seconds, metrics, rss_mib, wait_for

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"
PLC_SCRIPT = REPO / "tests" / "interop" / "client_mode_plc.py"

# The line: 500 counts between parts, 10,000 counts a second: 20 parts/s. The camera sees a
# part 6,000 counts before the PLC's gate eye; the diverter is 200 counts further (the map's
# eye_to_gate). The PLC's match window is 450 counts (45 ms at this speed), under the pitch.
PITCH_COUNTS = 500
CAMERA_TO_EYE_COUNTS = 6000
TRAVEL_COUNTS = CAMERA_TO_EYE_COUNTS + 200
FRAME_SIZE = 256
FRAME_FILES = 200
# Below this the memory check is reported, not judged: in a short run the bounded structures
# (sled's cache above all) are still filling.
MEMORY_JUDGED_FROM_S = 600

CONFIG = """# Written by scripts/soak.py: one station in client mode on the soak's line.
[station]
name = "soak"
data_dir = "{data}"

[camera]
name = "top"
# The PLC's line sends each part's frame as it passes; a closed connection is a lost camera.
launch = \"\"\"
tcpserversrc host=127.0.0.1 port={camera_port}
  ! rawvideoparse format=gray8 width={size} height={size} framerate=0/1
  ! videoconvert
  ! appsink name=frames sync=false
\"\"\"
end_of_stream = "reconnect"
frame_queue = 4

[calibration]
file = "{repo}/calibration/simulated.yaml"

[model]
dir = "{repo}/models/defect-net-sim"

[line]
tracking = "encoder"
travel_counts = {travel_counts}
travel_ms = {travel_ms}
gate_window_ms = 60
verdict_margin_ms = 150
# 350 counts at nominal speed: inside the PLC's 450-count window with room for its latency.
actuation_lead_ms = 35

[plc]
type = "tcp"
address = "127.0.0.1:{plc_port}"
register_map = "{register_map}"
unit_id = 1
request_timeout_ms = 250
heartbeat_ms = 500
plc_heartbeat_timeout_ms = 2000
on_plc_lost = "divert_all"

[records]
image_budget_mb = {image_budget_mb}
min_free_mb = 16

[[alarms]]
name = "station_fault"
message = "Station faulted: every part goes to reject"
priority = "critical"
source = "station"
on = "fault"

[[alarms]]
name = "station_degraded"
message = "Station degraded: frames, the PLC link, sensors or records failing"
priority = "medium"
source = "station"
on = "degraded"
"""


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(base: str, path: str, token: str, timeout: float = 10.0):
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def safe_metrics(base: str, token: str) -> dict[str, float] | None:
    try:
        return metrics(base, token)
    except OSError:
        return None


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill_until_free(filler: Path, mount: Path, free: int) -> None:
    """Writes `filler` until the filesystem at `mount` has at most `free` bytes left."""
    block = b"\0" * (1 << 20)
    with open(filler, "ab") as out:
        while True:
            left = free_bytes(mount)
            if left <= free:
                break
            try:
                out.write(block[: min(len(block), left - free)])
                out.flush()
            except OSError:  # full: what we wanted
                break


# ---------------------------------------------------------------------------------------------
# The run's schedule and what happened
# ---------------------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str  # "plc_restart", "camera_cut" or "disk_full"
    at_s: float  # seconds after the belt started
    for_s: float

    def label(self) -> str:
        return {
            "plc_restart": f"PLC restarted (down {self.for_s:g} s, registers cleared)",
            "camera_cut": f"camera cable pulled for {self.for_s:g} s",
            "disk_full": f"data disk filled to the last byte for {self.for_s:g} s",
        }[self.kind]


def schedule(seconds: float, cycle: float | None) -> tuple[list[Fault], float]:
    """The faults of a run of `seconds`, one of each per cycle (default 5 minutes, or the
    whole run when shorter than 10), and the warm-up's end."""
    cycle = cycle or (300.0 if seconds >= 600 else seconds)
    disk_hold = 20.0 if seconds >= 600 else 10.0
    faults = []
    start = 0.0
    while start + cycle <= seconds + 1e-9:
        faults.append(Fault("plc_restart", start + 0.20 * cycle, 3.0))
        faults.append(Fault("camera_cut", start + 0.45 * cycle, 5.0))
        faults.append(Fault("disk_full", start + 0.65 * cycle, disk_hold))
        start += cycle
    # The warm-up: until the bounded structures are full. sled's cache, 8 MiB for each
    # database, fills with the first 10,000 records or so (about 8 minutes at 20 parts/s).
    warm_up = min(600.0, seconds / 3) if seconds >= MEMORY_JUDGED_FROM_S else 0.15 * seconds
    return faults, warm_up


@dataclass
class Sample:
    t_s: float
    rss_mib: float | None
    state: str
    alarms: list[str]
    captured: int
    recorded: int
    dropped: int
    no_verdict: int
    commands_ok: int = 0
    commands_failed: int = 0
    station_cpu: float | None = None  # cores busy since the last sample
    plc_cpu: float | None = None


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    transitions: list[tuple[float, str]] = field(default_factory=list)
    acknowledged: dict[int, dict] = field(default_factory=dict)  # seq -> record, as the MES got it
    pull_errors: int = 0
    disk: list[tuple[float, str]] = field(default_factory=list)


class Station:
    def __init__(self, binary: Path, config: Path, port: int, log: Path) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self.process = subprocess.Popen(
            [str(binary), "run", "--config", str(config), "--bind", f"127.0.0.1:{port}"],
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def watch(station: Station, plc_pid: int, token: str, t0: float, stop: threading.Event, run: Run) -> None:
    """Every second: the station's state and alarms (transitions go to the timeline); every
    fifth, a sample of memory, CPU and counters."""
    last_state, last_alarms, tick = None, set(), 0
    last_cpu: tuple[float, float | None, float | None] | None = None
    while not stop.is_set():
        try:
            view = get_json(station.base, "/api/v1/station", token)
        except OSError:
            view = None
        now = time.monotonic() - t0
        if view is not None:
            state, alarms = view["state"], set(view["active_alarms"])
            if state != last_state:
                run.transitions.append((now, f"station state: {state}"))
                last_state = state
            for alarm in sorted(alarms - last_alarms):
                run.transitions.append((now, f"alarm raised: {alarm}"))
            for alarm in sorted(last_alarms - alarms):
                run.transitions.append((now, f"alarm cleared: {alarm}"))
            last_alarms = alarms
            if tick % 5 == 0:
                parts = view["parts"]
                counters = safe_metrics(station.base, token) or {}
                cpu = (now, cpu_seconds(station.process.pid), cpu_seconds(plc_pid))
                busy = [None, None]
                if last_cpu is not None:
                    for k in (1, 2):
                        if cpu[k] is not None and last_cpu[k] is not None and now > last_cpu[0]:
                            busy[k - 1] = round((cpu[k] - last_cpu[k]) / (now - last_cpu[0]), 2)
                last_cpu = cpu
                run.samples.append(
                    Sample(
                        now,
                        rss_mib(station.process.pid),
                        state,
                        sorted(alarms),
                        parts["captured"],
                        parts["recorded"],
                        parts["frames_dropped"],
                        parts["rejected_no_verdict"],
                        commands_ok=int(counters.get("linesight_gate_commands_ok_total", 0)),
                        commands_failed=int(counters.get("linesight_gate_commands_failed_total", 0)),
                        station_cpu=busy[0],
                        plc_cpu=busy[1],
                    )
                )
            tick += 1
        stop.wait(1.0)


def pull_records(base: str, token: str, stop: threading.Event, run: Run) -> None:
    """The MES: pulls new records every 2 s; what it got is acknowledged."""
    next_seq = 1
    while True:
        try:
            while True:
                page = get_json(base, f"/api/v1/records?from={next_seq}&limit=2000", token, timeout=30)
                for record in page["items"]:
                    run.acknowledged[record["seq"]] = record
                next_seq = page["next_seq"]
                if not page["more"]:
                    break
        except (OSError, ValueError, KeyError):
            run.pull_errors += 1
        if stop.wait(2.0):
            return


def pull_all(base: str, token: str) -> list[dict]:
    records, next_seq = [], 1
    while True:
        page = get_json(base, f"/api/v1/records?from={next_seq}&limit=5000", token, timeout=60)
        records.extend(page["items"])
        next_seq = page["next_seq"]
        if not page["more"]:
            return records


def disk_faults(mount: Path | None, faults: list[Fault], t0: float, stop: threading.Event, run: Run) -> None:
    """Fills the data disk at each disk_full fault: below the image floor, then to the last
    byte for the fault's length, then frees it."""
    for fault in (f for f in faults if f.kind == "disk_full"):
        if mount is None:
            continue
        if stop.wait(max(0.0, t0 + fault.at_s - time.monotonic())):
            return
        now = lambda: time.monotonic() - t0  # noqa: E731
        fill_until_free(mount / "filler-1", mount, 8 << 20)
        run.disk.append((now(), "data disk below the image floor (8 MiB free)"))
        if stop.wait(2.0):
            return
        fill_until_free(mount / "filler-2", mount, 0)
        run.disk.append((now(), f"data disk full ({free_bytes(mount)} bytes free)"))
        stop.wait(max(0.0, t0 + fault.at_s + fault.for_s - time.monotonic()))
        for name in ("filler-1", "filler-2"):
            (mount / name).unlink(missing_ok=True)
        run.disk.append((now(), f"space back ({free_bytes(mount) >> 20} MiB free)"))


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def account(plc_parts: list[dict], summary: dict, records: list[dict], final_metrics: dict) -> tuple[list[Check], dict]:
    """Every part on the belt, from both sides."""
    checks: list[Check] = []
    inspections = {r["part_id"]: r for r in records if r.get("kind") == "inspection"}
    ids = sorted(inspections)
    figures: dict = {"belt_parts": summary["parts"], "reached_diverter": len(plc_parts)}
    checks.append(
        Check(
            "every part on the belt reached the diverter",
            len(plc_parts) == summary["parts"],
            f"{len(plc_parts)} of {summary['parts']}",
        )
    )
    seen = [p for p in plc_parts if p["seen"]]
    unseen = [p for p in plc_parts if not p["seen"]]
    figures.update(seen=len(seen), unseen=len(unseen))
    unseen_passed = [p["index"] for p in unseen if not p["diverted"]]
    checks.append(
        Check(
            "every part the camera never saw was diverted",
            not unseen_passed,
            f"{len(unseen)} unseen, {len(unseen_passed)} passed" + (f": {unseen_passed[:10]}" if unseen_passed else ""),
        )
    )
    contiguous = bool(ids) and ids == list(range(ids[0], ids[0] + len(ids)))
    captured = int(final_metrics.get("linesight_frames_captured_total", -1))
    checks.append(
        Check(
            "each part the camera saw has exactly one record, ids without a gap",
            contiguous and len(ids) == len(seen) == captured,
            f"{len(seen)} frames the PLC sent, {captured} captured, {len(ids)} records"
            + ("" if contiguous else " (part ids with a gap)"),
        )
    )
    # Each record: inspected (the model's verdict decided) or rejected by policy.
    by_policy = [r for r in inspections.values() if r["rejected_by_policy"]]
    no_verdict = [r for r in inspections.values() if r["disposition"] == "reject_no_verdict"]
    inspected = [r for r in inspections.values() if not r["rejected_by_policy"]]
    dropped = int(final_metrics.get("linesight_frames_dropped_total", 0))
    figures.update(
        records=len(ids),
        inspected=len(inspected),
        passed_by_station=sum(1 for r in inspected if r["disposition"] == "pass"),
        rejected_by_model=sum(1 for r in inspected if r["disposition"] != "pass"),
        rejected_by_policy=len(by_policy),
        no_verdict=len(no_verdict),
        frames_dropped=dropped,
        actuation_failed=sum(1 for r in inspections.values() if r["actuation"] == "failed"),
    )
    unexplained = [r["part_id"] for r in inspections.values() if r["verdict"] is None and not r["rejected_by_policy"]]
    checks.append(
        Check(
            "every record is inspected or rejected by policy",
            not unexplained,
            f"{len(inspected)} inspected, {len(by_policy)} rejected by policy "
            f"({len(no_verdict)} without a verdict in time, {dropped} frames dropped)"
            + (f"; without either: {unexplained[:10]}" if unexplained else ""),
        )
    )
    # The PLC's side of each command.
    wrong, passed_without = [], []
    reasons: dict[str, int] = {}
    for part in plc_parts:
        decision = part["decision"] or {}
        reason = decision.get("reason") or ("start_hold" if part["hold"] else "none")
        if part["diverted"]:
            reasons[reason] = reasons.get(reason, 0) + 1
        part_id = decision.get("part_id")
        record = inspections.get(part_id) if part_id is not None else None
        if part_id is not None and (record is None or (decision["verdict"] == 1) != (record["disposition"] == "pass")):
            wrong.append((part["index"], part_id))
        if not part["diverted"] and (
            reason != "pass" or record is None or record["disposition"] != "pass" or record["actuation"] == "failed"
        ):
            passed_without.append(part["index"])
    figures["diverted_by_reason"] = reasons
    figures["passed"] = sum(1 for p in plc_parts if not p["diverted"])
    checks.append(
        Check(
            "each command the PLC matched is its part's own verdict",
            not wrong,
            f"{len(wrong)} wrong" + (f": {wrong[:10]}" if wrong else ""),
        )
    )
    checks.append(
        Check(
            "a part passed only with its own delivered PASS",
            not passed_without,
            f"{figures['passed']} passed" + (f"; without their PASS: {passed_without[:10]}" if passed_without else ""),
        )
    )
    return checks, figures


def check_records(run: Run, records: list[dict], verify: dict | None) -> list[Check]:
    checks = []
    by_seq = {r["seq"]: r for r in records}
    lost = [seq for seq in run.acknowledged if seq not in by_seq]
    changed = [seq for seq, r in run.acknowledged.items() if seq in by_seq and by_seq[seq] != r]
    checks.append(
        Check(
            "no acknowledged record is lost or changed",
            not lost and not changed and bool(run.acknowledged),
            f"{len(run.acknowledged)} records pulled by the MES during the run; "
            f"{len(lost)} lost, {len(changed)} changed",
        )
    )
    seqs = sorted(by_seq)
    checks.append(
        Check(
            "the record sequence has no gap or repeat",
            seqs == list(range(1, len(records) + 1)),
            f"{len(records)} records, seq 1..={seqs[-1] if seqs else 0}",
        )
    )
    problems = None if verify is None else verify.get("problems", [])
    checks.append(
        Check(
            "`linesight records verify` finds nothing wrong",
            verify is not None and not problems,
            "not run" if verify is None else f"{verify.get('records')} records, {len(problems)} problems",
        )
    )
    return checks


def check_memory(run: Run, warm_up: float, seconds: float) -> tuple[Check | None, dict]:
    """Resident memory from the end of the warm-up to the end of the run; `None` as the
    check when the run is too short to judge it."""
    samples = [s for s in run.samples if s.rss_mib is not None]
    after = [s for s in samples if s.t_s >= warm_up]
    if len(after) < 2:
        return Check("resident memory grew less than 10 %", False, "too few samples"), {}
    first, last = after[0], after[-1]
    growth = (last.rss_mib - first.rss_mib) / first.rss_mib * 100
    minute = next((s for s in samples if s.t_s >= 60), first)
    growth_from_minute = (last.rss_mib - minute.rss_mib) / minute.rss_mib * 100
    figures = {
        "rss_start_mib": round(samples[0].rss_mib, 1),
        "rss_after_warm_up_mib": round(first.rss_mib, 1),
        "rss_end_mib": round(last.rss_mib, 1),
        "rss_peak_mib": round(max(s.rss_mib for s in samples), 1),
        "growth_percent": round(growth, 2),
        "rss_at_1_min_mib": round(minute.rss_mib, 1),
        "growth_from_1_min_percent": round(growth_from_minute, 2),
    }
    detail = (
        f"{first.rss_mib:.1f} MiB at {first.t_s:.0f} s (end of warm-up) to {last.rss_mib:.1f} MiB "
        f"at {last.t_s:.0f} s: {growth:+.1f} % ({growth_from_minute:+.1f} % from {minute.rss_mib:.1f} MiB "
        f"at 1 min); peak {figures['rss_peak_mib']} MiB"
    )
    figures["memory"] = detail
    if seconds < MEMORY_JUDGED_FROM_S:
        return None, figures
    return Check("resident memory grew less than 10 %", growth < 10.0, detail), figures


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def fault_outcomes(faults: list[Fault], plc_parts: list[dict]) -> list[str]:
    """What the PLC did with the parts that reached the diverter during each fault and the 5 s
    after it."""
    lines = []
    for fault in faults:
        start, end = fault.at_s * 1000, (fault.at_s + fault.for_s + 5) * 1000
        window = [p for p in plc_parts if start <= p["at_ms"] < end]
        diverted = [p for p in window if p["diverted"]]
        reasons: dict[str, int] = {}
        for part in diverted:
            reason = (part["decision"] or {}).get("reason") or ("start_hold" if part["hold"] else "none")
            reasons[reason] = reasons.get(reason, 0) + 1
        unseen = sum(1 for p in window if not p["seen"])
        lines.append(
            f"{fault.label()}: {len(window)} parts reached the diverter in it and the 5 s after, "
            f"{len(diverted)} diverted ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or 'none'}), "
            f"{unseen} never seen by the camera"
        )
    return lines


def write_report(out: Path, context: dict, checks: list[Check], figures: dict, run: Run, faults: list[Fault],
                 plc_parts: list[dict], plc_stderr: str) -> None:
    ok = all(c.ok for c in checks)
    lines = [
        f"# Soak and faults: {'PASSED' if ok else 'FAILED'}",
        "",
        f"- {context['started']}, {context['seconds']:g} s at {context['rate']} parts/s "
        f"({context['binary']}), on {context['machine']}",
        f"- data disk: {context['disk']}",
        f"- memory: {figures.get('memory', 'no samples')}"
        + ("" if context["seconds"] >= MEMORY_JUDGED_FROM_S else f" (not judged under {MEMORY_JUDGED_FROM_S} s)"),
        f"- reproduce: `{context['command']}`",
        "",
        "## Checks",
        "",
        "| check | | detail |",
        "|---|---|---|",
    ]
    for check in checks:
        lines.append(f"| {check.name} | {'ok' if check.ok else '**FAILED**'} | {check.detail} |")
    lines += ["", "## Parts", "", "| | parts |", "|---|---|"]
    for key in (
        "belt_parts", "reached_diverter", "seen", "unseen", "records", "inspected", "passed_by_station",
        "rejected_by_model", "rejected_by_policy", "no_verdict", "frames_dropped", "actuation_failed", "passed",
    ):
        if key in figures:
            lines.append(f"| {key.replace('_', ' ')} | {figures[key]} |")
    if "diverted_by_reason" in figures:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(figures["diverted_by_reason"].items()))
        lines.append(f"| diverted by the PLC, by its reason | {reasons} |")
    lines += ["", "## Timeline (seconds after the belt started)", ""]
    events = [(f.at_s, f"**fault**: {f.label()}") for f in faults]
    events += [(f.at_s + f.for_s, f"**fault over**: {f.kind.replace('_', ' ')}") for f in faults if f.kind != "disk_full"]
    events += [(t, f"disk: {what}") for t, what in run.disk]
    events += [(t, f"station: {what}") for t, what in run.transitions]
    for at, what in sorted(events, key=lambda e: e[0]):
        lines.append(f"- {at:8.1f}  {what}")
    lines += ["", "## What the PLC did around each fault", ""]
    lines += [f"- {line}" for line in fault_outcomes(faults, plc_parts)]
    lines += ["", "## Memory and counters (every 5 s; each minute shown)", "",
              "| t (s) | RSS (MiB) | station CPU (cores) | PLC CPU | captured | recorded | dropped | no verdict "
              "| commands ok | commands failed | alarms |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    shown = -60.0
    for sample in run.samples:
        if sample.t_s - shown >= 60 or sample is run.samples[-1]:
            shown = sample.t_s
            rss = f"{sample.rss_mib:.1f}" if sample.rss_mib is not None else "?"
            lines.append(
                f"| {sample.t_s:.0f} | {rss} | {sample.station_cpu} | {sample.plc_cpu} | {sample.captured} | "
                f"{sample.recorded} | {sample.dropped} | {sample.no_verdict} | {sample.commands_ok} | "
                f"{sample.commands_failed} | {', '.join(sample.alarms)} |"
            )
    lines += ["", "## The PLC's own account", "", "```", plc_stderr.strip()[-6000:], "```", ""]
    (out / "soak-report.md").write_text("\n".join(lines))
    (out / "soak.json").write_text(
        json.dumps(
            {
                "passed": ok,
                "context": context,
                "checks": [c.__dict__ for c in checks],
                "figures": figures,
                "faults": [f.__dict__ for f in faults],
                "timeline": sorted(events, key=lambda e: e[0]),
                "samples": [s.__dict__ for s in run.samples],
            },
            indent=2,
        )
    )


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def mount_tmpfs(where: Path, size_mib: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    return result.returncode == 0


def soak(args: argparse.Namespace) -> int:
    binary = Path(args.binary).resolve()
    if not binary.exists():
        print(f"soak: no station binary at {binary} (build it first)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    faults, warm_up = schedule(args.seconds, args.cycle)
    parts = int(args.seconds * args.rate)
    work = Path(tempfile.mkdtemp(prefix="linesight-soak."))
    mount = work / "disk"
    # Records of the whole run, the images within their budget, and room to fill.
    disk_mib = max(256, int(args.seconds * args.rate * 8 / 1024) + 160)
    mounted = mount_tmpfs(mount, disk_mib)
    if mounted:
        fills = sum(f.kind == "disk_full" for f in faults)
        disk = f"a {disk_mib} MiB tmpfs of its own, filled to the last byte {fills} time{'s' * (fills != 1)}"
    else:
        mount.mkdir(parents=True, exist_ok=True)
        disk = "a plain folder: no tmpfs could be mounted (needs root), so the disk was not filled"
        print(f"soak: {disk}", file=sys.stderr)
    data = mount / "data"
    station = plc = None
    stop = threading.Event()
    run = Run()
    try:
        subprocess.run(
            [str(binary), "simulate", "frames", "--out", str(work / "frames"), "--count", str(FRAME_FILES),
             "--defect-rate", "0.3", "--seed", "7"],
            check=True, capture_output=True,
        )
        register_map = work / "register-map.toml"
        register_map.write_text(
            (REPO / "firmware-io" / "register-map.toml").read_text().replace('tracking = "time"', 'tracking = "encoder"')
        )
        plc_port, camera_port, http_port = free_port(), free_port(), free_port()
        counts_per_s = args.rate * PITCH_COUNTS
        config = work / "soak.toml"
        config.write_text(
            CONFIG.format(
                data=data, camera_port=camera_port, size=FRAME_SIZE, repo=REPO, plc_port=plc_port,
                register_map=register_map, travel_counts=TRAVEL_COUNTS,
                travel_ms=round(TRAVEL_COUNTS / counts_per_s * 1000), image_budget_mb=64,
            )
        )
        token = subprocess.run(
            [str(binary), "token", "create", "--role", "admin", "--name", "soak", "--data-dir", str(data)],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        events = ",".join(
            f"{'restart' if f.kind == 'plc_restart' else 'cut'}@{f.at_s:g}:{f.for_s:g}"
            for f in faults if f.kind != "disk_full"
        )
        plc_log, plc_err = work / "plc.jsonl", work / "plc.stderr"
        plc = subprocess.Popen(
            [str(PYTHON), str(PLC_SCRIPT), "--listen", f"127.0.0.1:{plc_port}", "--camera",
             f"127.0.0.1:{camera_port}", "--frames", str(work / "frames"), "--parts", str(parts),
             "--camera-to-eye-counts", str(CAMERA_TO_EYE_COUNTS), "--pitch-counts", str(PITCH_COUNTS),
             "--counts-per-s", str(counts_per_s), "--events", events, "--log", str(plc_log),
             "--start-timeout-s", "120", "--linger-s", "30"],
            stdout=subprocess.DEVNULL, stderr=open(plc_err, "w"),
        )
        wait_for(lambda: socket.create_connection(("127.0.0.1", plc_port), 1).close() or True, 30, "the PLC")
        station = Station(binary, config, http_port, work / "station.log")
        wait_for(
            lambda: station.alive() and metrics(station.base, token).get("linesight_frames_captured_total", 0) > 0,
            180, "the first part",
        )
        t0 = time.monotonic()
        print(f"soak: the belt runs: {parts} parts at {args.rate}/s, faults {[(f.kind, f.at_s) for f in faults]}",
              file=sys.stderr)
        threads = [
            threading.Thread(target=watch, args=(station, plc.pid, token, t0, stop, run), daemon=True),
            threading.Thread(target=pull_records, args=(station.base, token, stop, run), daemon=True),
            threading.Thread(target=disk_faults, args=(mount if mounted else None, faults, t0, stop, run), daemon=True),
        ]
        for thread in threads:
            thread.start()
        # The belt ends after its last part: the PLC writes its summary and lingers.
        deadline = t0 + args.seconds * 1.5 + 120
        summary = None
        while summary is None:
            for line in plc_log.read_text().splitlines() if plc_log.exists() else []:
                if line.startswith('{"summary"'):
                    summary = json.loads(line)["summary"]
            if summary is not None:
                break
            if not station.alive():
                raise RuntimeError(f"the station stopped during the run\n{station.tail()}")
            if plc.poll() is not None:
                raise RuntimeError(f"the PLC exited ({plc.returncode}) before its last part\n{plc_err.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the belt did not finish in time")
            time.sleep(1.0)
        # Every part the station captured is recorded before the books are closed.
        wait_for(
            lambda: (lambda v: v["parts"]["recorded"] >= v["parts"]["captured"] and not v["active_alarms"])(
                get_json(station.base, "/api/v1/station", token)
            ),
            120, "the records to catch up",
        )
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        final_metrics = metrics(station.base, token)
        records = pull_all(station.base, token)
        station.process.send_signal(signal.SIGINT)
        try:
            clean_stop = station.process.wait(timeout=60) == 0
        except subprocess.TimeoutExpired:
            station.process.kill()
            clean_stop = False
        plc.wait(timeout=60)
        verify_run = subprocess.run(
            [str(binary), "records", "verify", "--json", "--data-dir", str(data)], capture_output=True, text=True
        )
        verify = json.loads(verify_run.stdout) if verify_run.stdout.strip().startswith("{") else None

        plc_parts = [json.loads(line) for line in plc_log.read_text().splitlines() if not line.startswith('{"summary"')]
        checks, figures = account(plc_parts, summary, records, final_metrics)
        checks += check_records(run, records, verify)
        memory, memory_figures = check_memory(run, warm_up, args.seconds)
        if memory is not None:
            checks.append(memory)
        figures.update(memory_figures)
        figures["plc"] = summary
        checks.append(Check("the station stayed up and stopped cleanly", clean_stop, "exit status 0 on SIGINT"
                            if clean_stop else f"exit status {station.process.returncode}\n{station.tail(10)}"))
        if mounted:
            fills = sum(1 for _, what in run.disk if what.startswith("data disk full"))
            checks.append(Check("the disk filled as scheduled", fills == sum(f.kind == "disk_full" for f in faults),
                                f"{fills} fills"))
        cuts = int(final_metrics.get("linesight_camera_restarts_total", 0))
        checks.append(Check("the station saw each camera cut", cuts >= summary["camera_cuts"] > 0,
                            f"{summary['camera_cuts']} cuts, {cuts} camera restarts"))
        checks.append(Check("the PLC restarted as scheduled",
                            summary["restarts"] == sum(f.kind == "plc_restart" for f in faults),
                            f"{summary['restarts']} restarts"))
        context = {
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": args.seconds,
            "rate": args.rate,
            "binary": str(binary.relative_to(REPO) if binary.is_relative_to(REPO) else binary),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
            "disk": disk,
            "command": args.command,
        }
        write_report(out, context, checks, figures, run, faults, plc_parts, plc_err.read_text())
        shutil.copy(work / "station.log", out / "station.log")
        shutil.copy(plc_log, out / "plc.jsonl")
        for check in checks:
            print(f"soak: {'ok    ' if check.ok else 'FAILED'} {check.name}: {check.detail}", file=sys.stderr)
        print(f"soak: report in {out / 'soak-report.md'}", file=sys.stderr)
        return 0 if all(c.ok for c in checks) else 1
    except (RuntimeError, subprocess.CalledProcessError, OSError) as error:
        print(f"soak: {error}", file=sys.stderr)
        if station is not None:
            print(f"station log:\n{station.tail()}", file=sys.stderr)
            shutil.copy(station.log, out / "station.log")
        # What is left to look into: the record store (without its images) and the PLC's log.
        if (data / "records").exists():
            shutil.copytree(data / "records", out / "records-at-failure", dirs_exist_ok=True)
        for name in ("plc.jsonl", "plc.stderr"):
            if (work / name).exists():
                shutil.copy(work / name, out / name)
        print(f"soak: what was left is in {out}", file=sys.stderr)
        return 1
    finally:
        stop.set()
        for process in (station.process if station else None, plc):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 1800)),
                        help="the belt's length in seconds at the nominal rate (default SOAK_SECONDS or 1800)")
    parser.add_argument("--rate", type=int, default=20, help="parts a second (default 20)")
    parser.add_argument("--cycle", type=float, help="seconds between two rounds of faults (default 300, "
                        "or the whole run when shorter than 600 s)")
    parser.add_argument("--binary", default=str(Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
                                                 / "release" / "linesight"))
    parser.add_argument("--out", default=str(REPO / "var" / "soak"), help="where the report goes (default var/soak)")
    args = parser.parse_args()
    if args.seconds < 60:
        parser.error("--seconds must be at least 60: a cycle of faults needs it")
    args.command = " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if len(sys.argv) > 1 else "make soak"
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())

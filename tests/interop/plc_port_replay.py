"""Replays a PLC's input images, scan by scan, through the Python port of
firmware-io/plc/linesight_gate.st (FB_LinesightGate in client_mode_plc.py beside it).

tests/integration/plc_program.rs feeds the same images to the Rust port
(src/simulate/plc_program.rs) and compares what the two did in every scan, so the ports of one
program cannot drift apart unnoticed.

stdin: one JSON object per scan, the program's inputs:
  {"t": ms, "hb": u16, "state": u16, "cmd": [5 words], "halt": bool, "eye": bool,
   "reset": bool, "enc": u32}
stdout: one JSON object per scan, what the program did:
  {"decided": [[part_id or null, verdict or null, passed, reason], ...],
   "status": [8 words], "gate": bool, "run": bool}
--encoder runs it with TRACK_BY_ENCODER = TRUE (default: by time).
"""

from __future__ import annotations

import argparse
import json
import sys

from client_mode_plc import FB_LinesightGate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", action="store_true", help="track by encoder counts")
    args = parser.parse_args()
    fb = FB_LinesightGate(TRACK_BY_ENCODER=args.encoder)
    out = sys.stdout
    for number, line in enumerate(sys.stdin):
        try:
            image = json.loads(line)
            fb.scan(
                tNow=image["t"],
                wStationHeartbeat=image["hb"],
                wStationState=image["state"],
                aGateCommand=image["cmd"],
                xHaltLineCoil=image["halt"],
                xGateEye=image["eye"],
                xOperatorReset=image["reset"],
                udiEncoder=image["enc"],
            )
        except (ValueError, KeyError, TypeError) as error:
            print(f"plc_port_replay: scan {number}: {error!r}", file=sys.stderr)
            return 2
        decided = [
            [
                None if d.stCommand is None else d.stCommand.udiPartId,
                None if d.stCommand is None else d.stCommand.uiVerdict,
                d.xPass,
                d.reason,
            ]
            for d in fb.decided
        ]
        out.write(
            json.dumps({"decided": decided, "status": fb.aPlcStatus, "gate": fb.qGate, "run": fb.qConveyorRun})
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A line PLC for the station's client mode, built on pymodbus: a Python port of
firmware-io/plc/linesight_gate.st, run as a real PLC would run it.

The station is the Modbus TCP client (firmware-io/register-map.toml), this script the PLC's
Modbus TCP server: holding registers 0..65535 and coils 0..65535 for any unit id, FC3, FC6,
FC16, FC1 and FC5. FB_LinesightGate (the port of the ST function block of the same name, rule
by rule R1..R11 of firmware-io/plc-program.md, with the ST's names) scans every millisecond on
that register image, as PRG_LinesightGate does: gate-command writes (one FC16 of 5 words at
HR[gate_command]) reach it one per scan in arrival order, as a PLC serves Modbus requests
between scans. It runs with TRACK_BY_ENCODER = TRUE: it follows each part from its gate eye to
the diverter by belt encoder counts, and writes the encoder count to HR[encoder] every scan.

The line it runs: a belt with an encoder (--counts-per-s at speed factor 1) carries --parts
parts (default: one per frame file), each showing the next frame file in turn (--frames DIR:
part-0000.raw, part-0001.raw, ..., raw GRAY8 bytes of one size; `linesight simulate frames`
writes them), --pitch-counts apart and half a pitch long, past the camera (position 0), the gate photo-eye
(--camera-to-eye-counts) and the diverter (EYE_TO_GATE_COUNTS after the eye). As a part's
leading edge passes the camera its frame is sent to the station's GStreamer tcpserversrc
(--camera HOST:PORT); while the camera's connection is down (cut, or closed by the
station) parts pass unseen, and it connects again (retrying). The belt runs only while the program's qConveyorRun is on (the R8 halt
latch; this port has no operator reset button) and the PLC is up.

Usage (all options: --help):
  client_mode_plc.py --listen 127.0.0.1:1502 --camera 127.0.0.1:5000 --frames frames/ \\
      --events "stop@1.0:0.5,speed@2.0:1.5,restart@3.0:1.0" --log parts.jsonl

It serves Modbus at once (the station checks the link as it starts), connects to the camera
(retrying), and starts the belt once the station runs: HR[station_state] = 1, its heartbeat
changed at least twice, and the camera connected, all within --start-timeout-s (else it exits
2). Belt events, in seconds after the belt started:
  stop@T:D     the belt stands still for D s;
  speed@T:F    from T on the belt runs at F times --counts-per-s;
  restart@T:D  the PLC goes down for D s: the Modbus server closes every connection and
               refuses new ones, nothing is scanned, the belt stops. Then every holding
               register and coil is 0 again (not retained), a fresh FB_LinesightGate starts
               (R1 waits for a beat, R2 for station_state, R10 holds the gate), the encoder
               count goes on where it was (a hardware counter), and the server listens again;
  cut@T:D      the camera's cable is pulled for D s: its connection closes (the station's
               stream ends) and the parts that pass meanwhile are never seen; then it
               connects again.
It writes one JSON line per part to --log as the part reaches the diverter (with "seen":
whether its frame went to the station), then, after the
last part (+200 ms), closes the camera socket (the station sees the end of its stream), writes
a {"summary": ...} line (also printed to stdout), keeps the PLC serving until the station has
written station_state 0 (its clean stop) or --linger-s passed, and exits 0.
Only pymodbus (the venv's, 3.8) and the standard library; R_TRIG, TON and TOF come from
server_mode_plc.py beside it, and so does the CLI's positive().
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

from pymodbus.datastore import ModbusServerContext
from pymodbus.datastore.context import ModbusBaseSlaveContext
from pymodbus.server import ModbusTcpServer

from server_mode_plc import R_TRIG, TOF, TON, positive

# ---------------------------------------------------------------------------------------------
# The ST file's constants. FB_LinesightGate's VAR CONSTANT ([plc_program] in register-map.toml),
# except TRACK_BY_ENCODER: the ST ships FALSE (tracking = "time"), this port runs TRUE.
# ---------------------------------------------------------------------------------------------
WATCHDOG_MS = 1500
PULSE_MS = 40
MATCH_BEFORE_MS = 25
EYE_TO_GATE_MS = 20
FIFO_DEPTH = 32
PLC_HEARTBEAT_MS = 100
TRACK_BY_ENCODER = True
MATCH_BEFORE_COUNTS = 250
EYE_TO_GATE_COUNTS = 200
WORDS_HIGH_FIRST = True
VERDICT_PASS = 1

# PRG_LinesightGate's VAR CONSTANT: the addresses in register-map.toml (0-based).
HR_HEARTBEAT = 0
HR_STATION_STATE = 1
HR_GATE_COMMAND = 100
HR_PLC_STATUS = 110
HR_ENCODER = 120
COIL_HALT_LINE = 0
GATE_COMMAND_WORDS = 5
PLC_STATUS_WORDS = 8
ENCODER_WORDS = 2

# The port's own: the scan period, the pause after the last part before the camera closes.
SCAN_MS = 1
# The most the belt moves between two scans, in ms of travel. A real PLC scans every few ms
# whatever else the CPU does; this one is a Python process that a loaded machine can starve
# for tens of ms. Were the belt to follow the wall clock through such a gap, parts would
# reach the eye and the diverter with nobody scanning, and commands written in the gap would
# be taken a whole gap late: failures of the simulator, not of the station. So the line waits
# for its PLC: after a late scan the belt makes up at most this much. The station sees a short
# slow-down, which encoder tracking must handle anyway.
MAX_BELT_STEP_MS = 3
END_AFTER_LAST_PART_MS = 200

U16 = 0xFFFF
U32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# The ST helper functions, with IEC integer wrapping made explicit.
# ---------------------------------------------------------------------------------------------
def _signed32(value: int) -> int:
    """A 32-bit pattern read as two's complement (DWORD_TO_DINT, UDINT_TO_DINT)."""
    value &= U32
    return value - (1 << 32) if value >= 1 << 31 else value


def F_ElapsedMs(tFrom: int, tTo: int) -> int:
    """Signed milliseconds from tFrom to tTo (TIME wraps modulo 2^32 ms)."""
    return _signed32(tTo - tFrom)


def F_CountsSince(udiFrom: int, udiTo: int) -> int:
    """Signed encoder counts from udiFrom to udiTo: UDINT_TO_DINT(udiTo - udiFrom)."""
    return _signed32(udiTo - udiFrom)


def F_PartIdsAhead(udiExpected: int, udiPartId: int) -> int:
    """Signed distance from the expected part id to udiPartId, wrapping (negative: before)."""
    return _signed32((udiPartId - udiExpected) & U32)


def F_WordsToU32(uiFirst: int, uiSecond: int, xHighFirst: bool) -> int:
    """Two registers as a u32 in the map's word order."""
    high, low = (uiFirst, uiSecond) if xHighFirst else (uiSecond, uiFirst)
    return ((high & U16) << 16) | (low & U16)


def F_U32ToWord(udiValue: int, xFirst: bool, xHighFirst: bool) -> int:
    """One register of a u32: the one at the lower address when xFirst."""
    if xFirst == xHighFirst:
        return (udiValue >> 16) & U16
    return udiValue & U16


@dataclass
class ST_GateCommand:
    udiPartId: int = 0  # the station's part id
    uiVerdict: int = 0  # 0 no decision, 1 PASS, 2 defect, 3 not inspected, 4 too late
    uiClass: int = 0  # defect class code, 0 = none
    tArrived: int = 0  # tNow when the PLC took the command
    udiArrivedCount: int = 0  # udiEncoder when the PLC took the command: its A


@dataclass
class ST_PendingPart:
    tEye: int = 0  # tNow at the rising edge of the gate eye: the part's T
    udiEyeCount: int = 0  # udiEncoder at the same edge: the part's E


@dataclass
class Decision:
    """The port's log only (the ST keeps udiLastPartId, uiLastVerdict): one part decided in
    this scan, and why, in the words of the Rust port's DecisionReason."""

    stPart: ST_PendingPart
    stCommand: ST_GateCommand | None
    xPass: bool
    reason: str  # "pass", "verdict", "no_command", "watchdog_expired" or "station_stopped"


# ---------------------------------------------------------------------------------------------
# FB_LinesightGate: one method per rule, called in the ST's order by scan().
# ---------------------------------------------------------------------------------------------
class FB_LinesightGate:
    def __init__(self, *, TRACK_BY_ENCODER: bool = TRACK_BY_ENCODER) -> None:
        # VAR CONSTANT (the ST's is a constant; a port could run either way).
        self.TRACK_BY_ENCODER = TRACK_BY_ENCODER
        # VAR_INPUT
        self.tNow = 0
        self.wStationHeartbeat = 0
        self.wStationState = 0
        self.aGateCommand = [0] * GATE_COMMAND_WORDS
        self.xHaltLineCoil = False
        self.xGateEye = False
        self.xOperatorReset = False
        self.udiEncoder = 0
        # VAR_OUTPUT
        self.qGate = False
        self.qConveyorRun = False
        self.aPlcStatus = [0] * PLC_STATUS_WORDS
        self.aEncoderCount = [0] * ENCODER_WORDS
        self.xFault = False
        self.xWatchdogExpired = False
        self.xStationStopped = False
        self.xHaltLatched = False
        self.xOverrunSeen = False
        self.xStartHold = False
        self.xIdBehindSeen = False
        self.udiLastPartId = 0
        self.uiLastVerdict = 0
        self.uiLastClass = 0
        # VAR
        self.xInitialized = False
        self.tonWatchdog = TON()
        self.wLastHeartbeat = 0
        self.xHeartbeatChanged = False
        self.xHeartbeatMoved = False
        self.wLastSequence = 0
        self.aFifo = [ST_GateCommand() for _ in range(FIFO_DEPTH)]
        self.uiFifoHead = 0
        self.uiFifoCount = 0
        self.rtEye = R_TRIG()
        self.aPending = [ST_PendingPart() for _ in range(FIFO_DEPTH)]
        self.uiPendingHead = 0
        self.uiPendingCount = 0
        self.xHasCommand = False
        self.uiVerdict = 0
        self.xPass = False
        self.tofGate = TOF()
        self.xDivertThisScan = False
        self.udiPassed = 0
        self.udiDiverted = 0
        self.udiUnmatched = 0
        self.rtHaltCoil = R_TRIG()
        self.rtReset = R_TRIG()
        self.wPlcHeartbeat = 0
        self.tNextPlcBeat = 0
        self.wStatusBits = 0
        self.tHoldStart = 0
        self.udiHoldStartCount = 0
        self.xExpectedKnown = False
        self.udiExpectedId = 0
        self.xIdBehind = False
        # The port's log only: the parts decided in this scan, and the station watchdog's trips
        # (TON expiries once the station had beaten; the start-up "not yet beaten" is none).
        self.decided: list[Decision] = []
        self.watchdog_trips = 0
        self._xWatchdogQBefore = False

    def scan(
        self,
        *,
        tNow: int,
        wStationHeartbeat: int,
        wStationState: int,
        aGateCommand: list[int],
        xHaltLineCoil: bool,
        xGateEye: bool,
        xOperatorReset: bool,
        udiEncoder: int,
    ) -> None:
        """One PLC scan: the FB body, rule by rule in the ST's order."""
        self.tNow = tNow & U32
        self.wStationHeartbeat = wStationHeartbeat & U16
        self.wStationState = wStationState & U16
        self.aGateCommand = [word & U16 for word in aGateCommand]
        self.xHaltLineCoil = xHaltLineCoil
        self.xGateEye = xGateEye
        self.xOperatorReset = xOperatorReset
        self.udiEncoder = udiEncoder & U32
        self.decided = []

        self.first_scan()
        self.r1_station_watchdog()
        self.r2_station_state()
        self.r3_fault()
        self.r11_forget_on_fault()
        self.r4_gate_commands()
        self.xDivertThisScan = False
        self.r5_tracking()
        self.r5_r6_at_the_diverter()
        self.r7_gate_pulse()
        self.r10_start_hold()
        self.r8_halt_line()
        self.r9_status()

    def first_scan(self) -> None:
        """Whatever sits in the command registers was written before this program ran: its
        sequence counts as taken. R10's hold starts here."""
        if not self.xInitialized:
            self.wLastHeartbeat = self.wStationHeartbeat
            self.wLastSequence = self.aGateCommand[4]
            self.tNextPlcBeat = self.tNow
            # R10: the start-up hold starts here.
            self.tHoldStart = self.tNow
            self.udiHoldStartCount = self.udiEncoder
            self.xStartHold = True
            self.xInitialized = True

    def r1_station_watchdog(self) -> None:
        """R1: TON on an unchanged heartbeat; lost until the heartbeat has changed once."""
        self.xHeartbeatChanged = self.wStationHeartbeat != self.wLastHeartbeat
        self.wLastHeartbeat = self.wStationHeartbeat
        if self.xHeartbeatChanged:
            self.xHeartbeatMoved = True
        self.tonWatchdog(not self.xHeartbeatChanged, WATCHDOG_MS, self.tNow)
        self.xWatchdogExpired = self.tonWatchdog.Q or not self.xHeartbeatMoved
        # The port's log only.
        if self.tonWatchdog.Q and not self._xWatchdogQBefore and self.xHeartbeatMoved:
            self.watchdog_trips += 1
        self._xWatchdogQBefore = self.tonWatchdog.Q

    def r2_station_state(self) -> None:
        """R2: only 1 is running; 0, an unwritten register or garbage is stopped."""
        self.xStationStopped = self.wStationState != 1

    def r3_fault(self) -> None:
        """R3: a lost or stopped station is not trusted."""
        self.xFault = self.xWatchdogExpired or self.xStationStopped

    def r11_forget_on_fault(self) -> None:
        """R11: a station that was lost or stopped may come back with other part ids."""
        if self.xFault:
            self.xExpectedKnown = False

    def r4_gate_commands(self) -> None:
        """R4: a new sequence is a new command, into the FIFO with its arrival time and count;
        discarded (unmatched) while faulted; a full FIFO drops its oldest (overrun)."""
        if self.aGateCommand[4] != self.wLastSequence:
            self.wLastSequence = self.aGateCommand[4]
            if self.xFault:
                self.udiUnmatched = (self.udiUnmatched + 1) & U32
            else:
                stCommand = ST_GateCommand(
                    udiPartId=F_WordsToU32(self.aGateCommand[0], self.aGateCommand[1], WORDS_HIGH_FIRST),
                    uiVerdict=self.aGateCommand[2],
                    uiClass=self.aGateCommand[3],
                    tArrived=self.tNow,
                    udiArrivedCount=self.udiEncoder,
                )
                if self.uiFifoCount >= FIFO_DEPTH:
                    self.uiFifoHead = (self.uiFifoHead + 1) % FIFO_DEPTH
                    self.uiFifoCount -= 1
                    self.udiUnmatched = (self.udiUnmatched + 1) & U32
                    self.xOverrunSeen = True
                uiIndex = (self.uiFifoHead + self.uiFifoCount) % FIFO_DEPTH
                self.aFifo[uiIndex] = stCommand
                self.uiFifoCount += 1

    def r5_tracking(self) -> None:
        """R5: a rising edge of the gate eye is a part at T and E, queued as pending; a full
        pending queue decides its oldest part now, without a command (divert)."""
        self.rtEye(self.xGateEye)
        if self.rtEye.Q:
            if self.uiPendingCount >= FIFO_DEPTH:
                stLost = replace(self.aPending[self.uiPendingHead])
                self.uiPendingHead = (self.uiPendingHead + 1) % FIFO_DEPTH
                self.uiPendingCount -= 1
                self.udiDiverted = (self.udiDiverted + 1) & U32
                self.xDivertThisScan = True
                self.udiExpectedId = (self.udiExpectedId + 1) & U32  # R11: it took its id
                self.decided.append(Decision(stLost, None, False, "no_command"))  # the port's log
            uiIndex = (self.uiPendingHead + self.uiPendingCount) % FIFO_DEPTH
            self.aPending[uiIndex] = ST_PendingPart(tEye=self.tNow, udiEyeCount=self.udiEncoder)
            self.uiPendingCount += 1

    def r5_r6_at_the_diverter(self) -> None:
        """R5 / R6: oldest first, every pending part that reached the diverter (EYE_TO_GATE_MS
        after T, or EYE_TO_GATE_COUNTS after E) is matched (R5) and decided (R6)."""
        while self.uiPendingCount > 0:
            stHead = self.aPending[self.uiPendingHead]
            if self.TRACK_BY_ENCODER:
                xDue = F_CountsSince(stHead.udiEyeCount, self.udiEncoder) >= EYE_TO_GATE_COUNTS
            else:
                xDue = F_ElapsedMs(stHead.tEye, self.tNow) >= EYE_TO_GATE_MS
            if not xDue:
                break
            stPart = replace(stHead)
            self.uiPendingHead = (self.uiPendingHead + 1) % FIFO_DEPTH
            self.uiPendingCount -= 1
            stCommand = self.r5_match(stPart)
            self.r11_next_expected()
            self.r6_decide(stPart, stCommand)

    def r5_match(self, stPart: ST_PendingPart) -> ST_GateCommand | None:
        """R5: drop stale FIFO heads (before the part's window: unmatched), and (R11) heads
        for a part id before the expected one, then take the head when it arrived by the
        window's end. Returns the part's command (the ST's xHasCommand
        and the aFifo head it copies from)."""
        while self.uiFifoCount > 0:
            stHead = self.aFifo[self.uiFifoHead]
            if self.TRACK_BY_ENCODER:
                xStale = F_CountsSince(stHead.udiArrivedCount, stPart.udiEyeCount) > MATCH_BEFORE_COUNTS
            else:
                xStale = F_ElapsedMs(stHead.tArrived, stPart.tEye) > MATCH_BEFORE_MS
            self.xIdBehind = self.xExpectedKnown and F_PartIdsAhead(self.udiExpectedId, stHead.udiPartId) < 0
            if self.xIdBehind:
                self.xIdBehindSeen = True
            if not xStale and not self.xIdBehind:
                break
            self.uiFifoHead = (self.uiFifoHead + 1) % FIFO_DEPTH
            self.uiFifoCount -= 1
            self.udiUnmatched = (self.udiUnmatched + 1) & U32

        self.xHasCommand = False
        self.uiVerdict = 0
        self.udiLastPartId = 0
        self.uiLastClass = 0
        xInWindow = False
        if self.uiFifoCount > 0:
            stHead = self.aFifo[self.uiFifoHead]
            if self.TRACK_BY_ENCODER:
                xInWindow = F_CountsSince(stPart.udiEyeCount, stHead.udiArrivedCount) <= EYE_TO_GATE_COUNTS
            else:
                xInWindow = F_ElapsedMs(stPart.tEye, stHead.tArrived) <= EYE_TO_GATE_MS
        if not xInWindow:
            return None
        stCommand = replace(self.aFifo[self.uiFifoHead])
        self.uiVerdict = stCommand.uiVerdict
        self.udiLastPartId = stCommand.udiPartId
        self.uiLastClass = stCommand.uiClass
        self.uiFifoHead = (self.uiFifoHead + 1) % FIFO_DEPTH
        self.uiFifoCount -= 1
        self.xHasCommand = True
        return stCommand

    def r11_next_expected(self) -> None:
        """R11: the next part carries the id after the matched command's (set also when it is
        ahead), or one more than expected for a part without a command."""
        if self.xHasCommand:
            self.udiExpectedId = (self.udiLastPartId + 1) & U32
            self.xExpectedKnown = not self.xFault
        else:
            self.udiExpectedId = (self.udiExpectedId + 1) & U32

    def r6_decide(self, stPart: ST_PendingPart, stCommand: ST_GateCommand | None) -> None:
        """R6: a PASS command while not faulted passes; everything else diverts. R7's
        counters: passed, or diverted and the gate fires this scan."""
        self.xPass = (not self.xFault) and self.xHasCommand and self.uiVerdict == VERDICT_PASS
        self.uiLastVerdict = self.uiVerdict
        if self.xPass:
            self.udiPassed = (self.udiPassed + 1) & U32
        else:
            self.udiDiverted = (self.udiDiverted + 1) & U32
            self.xDivertThisScan = True
        # The port's log only: the reason, as the Rust port's DecisionReason.
        if self.xWatchdogExpired:
            reason = "watchdog_expired"
        elif self.xStationStopped:
            reason = "station_stopped"
        elif stCommand is None:
            reason = "no_command"
        elif stCommand.uiVerdict == VERDICT_PASS:
            reason = "pass"
        else:
            reason = "verdict"
        self.decided.append(Decision(stPart, stCommand, self.xPass, reason))

    def r7_gate_pulse(self) -> None:
        """R7: a TOF restarted by every divert holds qGate PULSE_MS."""
        if self.xDivertThisScan:
            self.tofGate(True, PULSE_MS, self.tNow)
        self.tofGate(False, PULSE_MS, self.tNow)
        self.qGate = self.tofGate.Q

    def r10_start_hold(self) -> None:
        """R10: from the first scan the gate diverts until EYE_TO_GATE_MS have passed (or
        udiEncoder has advanced EYE_TO_GATE_COUNTS); once off, off until the next start."""
        if self.xStartHold:
            if self.TRACK_BY_ENCODER:
                self.xStartHold = F_CountsSince(self.udiHoldStartCount, self.udiEncoder) < EYE_TO_GATE_COUNTS
            else:
                self.xStartHold = F_ElapsedMs(self.tHoldStart, self.tNow) < EYE_TO_GATE_MS
        if self.xStartHold:
            self.qGate = True

    def r8_halt_line(self) -> None:
        """R8: the coil's rising edge latches the halt; the operator's reset releases it while
        the coil is off."""
        self.rtHaltCoil(self.xHaltLineCoil)
        self.rtReset(self.xOperatorReset)
        if self.rtHaltCoil.Q:
            self.xHaltLatched = True
        if self.rtReset.Q and not self.xHaltLineCoil:
            self.xHaltLatched = False
        # R11: the reset also forgets the expected id and clears b6.
        if self.rtReset.Q:
            self.xExpectedKnown = False
            self.xIdBehindSeen = False
        self.qConveyorRun = not self.xHaltLatched

    def r9_status(self) -> None:
        """R9: PLC heartbeat, status bits b0..b6, the counters and the encoder count, u32 in the
        map's word order."""
        if F_ElapsedMs(self.tNextPlcBeat, self.tNow) >= 0:
            self.wPlcHeartbeat = (self.wPlcHeartbeat + 1) & U16
            self.tNextPlcBeat = (self.tNow + PLC_HEARTBEAT_MS) & U32
        self.wStatusBits = 0x0000
        if not self.xFault:
            self.wStatusBits |= 0x0001
        if self.xWatchdogExpired:
            self.wStatusBits |= 0x0002
        if self.xStationStopped:
            self.wStatusBits |= 0x0004
        if self.xHaltLatched:
            self.wStatusBits |= 0x0008
        if self.xOverrunSeen:
            self.wStatusBits |= 0x0010
        if self.xStartHold:
            self.wStatusBits |= 0x0020
        if self.xIdBehindSeen:
            self.wStatusBits |= 0x0040
        self.aPlcStatus = [
            self.wPlcHeartbeat,
            self.wStatusBits,
            F_U32ToWord(self.udiPassed, True, WORDS_HIGH_FIRST),
            F_U32ToWord(self.udiPassed, False, WORDS_HIGH_FIRST),
            F_U32ToWord(self.udiDiverted, True, WORDS_HIGH_FIRST),
            F_U32ToWord(self.udiDiverted, False, WORDS_HIGH_FIRST),
            F_U32ToWord(self.udiUnmatched, True, WORDS_HIGH_FIRST),
            F_U32ToWord(self.udiUnmatched, False, WORDS_HIGH_FIRST),
        ]
        self.aEncoderCount = [
            F_U32ToWord(self.udiEncoder, True, WORDS_HIGH_FIRST),
            F_U32ToWord(self.udiEncoder, False, WORDS_HIGH_FIRST),
        ]


# ---------------------------------------------------------------------------------------------
# PRG_LinesightGate's register image, as pymodbus's datastore.
# ---------------------------------------------------------------------------------------------
class RegisterImage(ModbusBaseSlaveContext):
    """aHoldingRegisters and aCoils of PRG_LinesightGate, 0-based as on the wire (no pymodbus
    address shift), the same for every unit id. Each FC16 of 5 words at HR[gate_command] is
    also queued, so the program takes the commands one per scan in arrival order however many
    arrive between two scans. The program's own registers (HR[plc_status] .. +7, HR[encoder]
    .. +1) refuse writes (exception 02), as the Rust simulator's status block does."""

    READ_FCS = (1, 3)
    WRITE_FCS = (5, 6, 15, 16)
    COIL_FCS = (1, 5, 15)

    def __init__(self) -> None:
        self.aHoldingRegisters = [0] * 0x10000
        self.aCoils = [False] * 0x10000
        self.gate_writes: deque[list[int]] = deque()
        self._owned = [
            range(HR_PLC_STATUS, HR_PLC_STATUS + PLC_STATUS_WORDS),
            range(HR_ENCODER, HR_ENCODER + ENCODER_WORDS),
        ]

    def reset(self) -> None:
        """Everything 0 again: a PLC restart (nothing is retained)."""
        self.aHoldingRegisters = [0] * 0x10000
        self.aCoils = [False] * 0x10000
        self.gate_writes.clear()

    def validate(self, fc_as_hex: int, address: int, count: int = 1) -> bool:
        if fc_as_hex not in self.READ_FCS + self.WRITE_FCS:
            return False
        if count < 1 or address < 0 or address + count > 0x10000:
            return False
        if fc_as_hex in (6, 16):
            for owned in self._owned:
                if address < owned.stop and owned.start < address + count:
                    return False
        return True

    def getValues(self, fc_as_hex: int, address: int, count: int = 1) -> list:
        if fc_as_hex in self.COIL_FCS:
            return list(self.aCoils[address : address + count])
        if fc_as_hex in (3, 6, 16):
            return list(self.aHoldingRegisters[address : address + count])
        return [0] * count

    def setValues(self, fc_as_hex: int, address: int, values) -> None:
        values = list(values)
        if fc_as_hex in self.COIL_FCS:
            self.aCoils[address : address + len(values)] = [bool(v) for v in values]
            return
        self.aHoldingRegisters[address : address + len(values)] = [int(v) & U16 for v in values]
        if fc_as_hex == 16 and address == HR_GATE_COMMAND and len(values) == GATE_COMMAND_WORDS:
            self.gate_writes.append([int(v) & U16 for v in values])


class ModbusServer:
    """The PLC's Modbus TCP server: listens at start(), closes every connection and the port at
    stop() (a PLC going down), listens again on the same port at the next start()."""

    def __init__(self, host: str, port: int, image: RegisterImage) -> None:
        self.host = host
        self.port = port
        self.context = ModbusServerContext(slaves=image, single=True)
        self._server: ModbusTcpServer | None = None

    async def start(self, deadline_s: float = 5.0) -> None:
        give_up = time.monotonic() + deadline_s
        while True:
            server = ModbusTcpServer(self.context, address=(self.host, self.port))
            try:
                await server.serve_forever(background=True)
            except OSError as error:
                await server.shutdown()
                if time.monotonic() >= give_up:
                    raise OSError(f"cannot listen on {self.host}:{self.port}: {error}") from error
                await asyncio.sleep(0.1)
                continue
            if server.transport is None:  # pymodbus logs the bind error instead of raising it
                await server.shutdown()
                if time.monotonic() >= give_up:
                    raise OSError(f"cannot listen on {self.host}:{self.port}")
                await asyncio.sleep(0.1)
                continue
            self._server = server
            return

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


# ---------------------------------------------------------------------------------------------
# The camera: the station's tcpserversrc, fed one frame per part.
# ---------------------------------------------------------------------------------------------
class Camera:
    """Connects to the station's GStreamer tcpserversrc and sends each part's frame, in order,
    from its own task (the scan never waits on the socket)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.connected = False
        self.frames_sent = 0
        # Parts whose frame went onto the connection (a frame still queued when the cable is
        # pulled never does), until the belt logs them.
        self.delivered: set[int] = set()
        self.failed: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._sender: asyncio.Task | None = None

    async def connect(self, deadline: float) -> bool:
        """Retries until the station accepts, or time.monotonic() reaches deadline."""
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 1.0)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.2)
                continue
            self._writer = writer
            self.connected = True
            self._sender = asyncio.create_task(self._send_all())
            return True
        return False

    def send(self, index: int, frame: bytes) -> None:
        self._queue.put_nowait((index, frame))

    async def _send_all(self) -> None:
        assert self._writer is not None
        while True:
            item = await self._queue.get()
            if item is None:
                return
            if self.failed is not None:
                continue
            index, frame = item
            try:
                # Written whole into the transport, the frame goes out even if the connection
                # closes next (close() sends what is buffered first).
                self._writer.write(frame)  # with drain(): socket.sendall() without blocking the scans
                self.delivered.add(index)
                await self._writer.drain()
                self.frames_sent += 1
            except OSError as error:
                self.failed = str(error)
                self.connected = False
                print(f"client_mode_plc: camera connection lost: {error}", file=sys.stderr)

    async def cut(self) -> None:
        """The cable is pulled: the connection closes now, whatever was queued is lost."""
        if self._sender is not None:
            self._sender.cancel()
            try:
                await self._sender
            except (asyncio.CancelledError, OSError):
                pass
            self._sender = None
        self._queue = asyncio.Queue()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.connected = False
        self.failed = None

    async def reconnect(self, deadline: float) -> bool:
        """After a cut or a lost connection: a fresh connection, retrying until deadline."""
        await self.cut()
        return await self.connect(deadline)

    async def close(self) -> None:
        """Sends what is queued, then closes: the station's stream ends."""
        if self._sender is not None:
            self._queue.put_nowait(None)
            await self._sender
            self._sender = None
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None
        self.connected = False


# ---------------------------------------------------------------------------------------------
# The belt: an encoder, the parts, the camera, the gate eye and the diverter.
# ---------------------------------------------------------------------------------------------
@dataclass
class Event:
    at_s: float  # seconds after the belt started
    kind: str  # "stop" (value: seconds stopped), "speed" (factor from then on), "restart" (seconds
    # down), "cut" (seconds the camera is disconnected)
    value: float


@dataclass
class Part:
    index: int
    seen: bool = False  # its frame went to the station's camera
    eye_count: int | None = None  # udiEncoder in the scan the eye saw its leading edge
    logged: bool = False


class Belt:
    """The belt's travel in whole encoder counts since the script started (`position`; the
    encoder reads --encoder-start + position, wrapping). Part k's leading edge is at
    position - k * pitch counts past the camera; it is pitch / 2 long. The belt never steps
    over an edge of the gate eye within one scan (it stops at the edge and makes the rest up in
    the next scan), so the program sees every part's rising edge with its leading edge exactly
    at the eye: E is the count at which the part is at the eye, and E + EYE_TO_GATE_COUNTS the
    one at which it reaches the diverter. Parts exist from the camera to the diverter only
    (`in_flight`), so a long run costs no more per scan than a short one."""

    def __init__(
        self, count: int, pitch_counts: int, counts_per_s: float, camera_to_eye: int, encoder_start: int
    ) -> None:
        self.count = count
        self.in_flight: deque[Part] = deque()  # past the camera, not yet logged at the diverter
        self.next_index = 0  # the next part to reach the camera
        self.pitch = pitch_counts
        self.part_counts = max(1, pitch_counts // 2)
        self.counts_per_ms = counts_per_s / 1000.0
        self.eye = camera_to_eye
        self.gate = camera_to_eye + EYE_TO_GATE_COUNTS
        self.encoder_start = encoder_start & U32
        self.position = 0
        self._carry = 0.0

    @property
    def udiEncoder(self) -> int:
        return (self.encoder_start + self.position) & U32

    def lead(self, part: Part) -> int:
        return self.position - part.index * self.pitch

    @property
    def xGateEye(self) -> bool:
        along = self.position - self.eye
        if along < 0:
            return False
        k = along // self.pitch
        return k < self.count and along - k * self.pitch < self.part_counts

    def _next_eye_edge(self) -> int | None:
        """The nearest belt position ahead at which a part's leading or trailing edge is at the
        eye."""
        best = None
        for offset in (self.eye, self.eye + self.part_counts):
            k = 0 if self.position < offset else (self.position - offset) // self.pitch + 1
            if k < self.count:
                edge = offset + k * self.pitch
                best = edge if best is None else min(best, edge)
        return best

    def arrivals(self) -> list[Part]:
        """The parts whose leading edge reached the camera since the last call."""
        arrived = []
        while self.next_index < self.count and self.position - self.next_index * self.pitch >= 0:
            part = Part(self.next_index)
            self.next_index += 1
            self.in_flight.append(part)
            arrived.append(part)
        return arrived

    def done(self) -> bool:
        """Every part reached the diverter."""
        return self.next_index == self.count and not self.in_flight

    def advance(self, dt_ms: float, factor: float) -> None:
        """Moves the belt dt_ms at factor times the nominal speed (0: standing)."""
        if factor <= 0 or dt_ms <= 0:
            self._carry = 0.0
            return
        self._carry += dt_ms * self.counts_per_ms * factor
        step = int(self._carry)
        if step <= 0:
            return
        edge = self._next_eye_edge()
        if edge is not None and edge - self.position < step:
            step = edge - self.position
        self._carry -= step
        self.position += step


def part_record(part: Part, gate_count: int, at_ms: int, fb: FB_LinesightGate, decision: Decision | None) -> dict:
    return {
        "index": part.index,
        "eye_count": part.eye_count,
        "gate_count": gate_count,
        "at_ms": at_ms,
        "diverted": fb.qGate,
        "seen": part.seen,
        "decision": None
        if decision is None
        else {
            "part_id": None if decision.stCommand is None else decision.stCommand.udiPartId,
            "verdict": None if decision.stCommand is None else decision.stCommand.uiVerdict,
            "reason": decision.reason,
        },
        "hold": fb.xStartHold,
    }


# ---------------------------------------------------------------------------------------------
# The PLC: PRG_LinesightGate's scan on the register image, the belt, the events, the log.
# ---------------------------------------------------------------------------------------------
class LinePlc:
    def __init__(self, args: argparse.Namespace, frames: list[bytes]) -> None:
        self.args = args
        self.frames = frames
        self.image = RegisterImage()
        self.server = ModbusServer(args.listen[0], args.listen[1], self.image)
        self.camera = Camera(args.camera[0], args.camera[1])
        self.belt = Belt(
            args.parts or len(frames), args.pitch_counts, args.counts_per_s, args.camera_to_eye_counts, args.encoder_start
        )
        self.events = sorted(args.events, key=lambda e: e.at_s)
        self.fb = FB_LinesightGate()
        self.up = True
        self.t0 = time.monotonic()
        self.tBeltStart: int | None = None
        self.tLast = 0
        self.restarts = 0
        self.unmatched_before = 0  # udiUnmatched of the FBs before the last restart
        self.trips_before = 0
        self.decisions_without_part = 0
        self.passed = 0
        self.diverted = 0
        self.held = 0
        self.undecided = 0
        self.unseen = 0
        self.cuts = 0
        self.camera_cut = False
        self._reconnecting: asyncio.Task | None = None
        self.heartbeat_changes = 0
        self._trips_seen = 0
        self._last_heartbeat: int | None = None
        self._announced: set[int] = set()
        self.log = open(args.log, "w", encoding="utf-8") if args.log else None

    def now_ms(self) -> int:
        return int((time.monotonic() - self.t0) * 1000)

    def belt_s(self, tNow: int) -> float:
        return (tNow - (self.tBeltStart or 0)) / 1000.0

    def speed_factor(self, t_s: float) -> float:
        factor = 1.0
        for event in self.events:
            if event.kind == "speed" and event.at_s <= t_s:
                factor = event.value
        for event in self.events:
            if event.kind == "stop" and event.at_s <= t_s < event.at_s + event.value:
                return 0.0
        return factor

    def plc_should_be_up(self, t_s: float) -> bool:
        return not any(e.kind == "restart" and e.at_s <= t_s < e.at_s + e.value for e in self.events)

    def camera_should_be_cut(self, t_s: float) -> bool:
        return any(e.kind == "cut" and e.at_s <= t_s < e.at_s + e.value for e in self.events)

    async def follow_camera(self, t_s: float) -> None:
        """The camera's cable: pulled while a cut lasts; otherwise a lost connection (the
        station closed it) is made again, retrying, as a camera does."""
        if self.camera_should_be_cut(t_s):
            if not self.camera_cut:
                self.camera_cut = True
                self.cuts += 1
                if self._reconnecting is not None:
                    self._reconnecting.cancel()
                    self._reconnecting = None
                await self.camera.cut()
            return
        if self.camera_cut:
            self.camera_cut = False
            print("client_mode_plc: camera cable back: connecting", file=sys.stderr)
        if self.camera.connected or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        self._reconnecting = asyncio.create_task(self.camera.reconnect(time.monotonic() + 3600.0))

    def announce(self, t_s: float) -> None:
        """stderr: each event as it begins."""
        for number, event in enumerate(self.events):
            if number in self._announced or event.at_s > t_s:
                continue
            self._announced.add(number)
            where = f"at {t_s:.3f} s, encoder {self.belt.udiEncoder}"
            if event.kind == "stop":
                what = f"belt stopped for {event.value:g} s"
            elif event.kind == "speed":
                what = f"belt speed factor {event.value:g}"
            elif event.kind == "cut":
                what = f"camera cable pulled for {event.value:g} s"
            else:
                what = f"PLC restart: down for {event.value:g} s"
            print(f"client_mode_plc: {what} ({where})", file=sys.stderr)

    async def go_down(self) -> None:
        self.up = False
        await self.server.stop()
        print("client_mode_plc: PLC down: Modbus server closed, no scans, belt stopped", file=sys.stderr)

    async def come_up(self) -> None:
        self.unmatched_before += self.fb.udiUnmatched
        self.trips_before += self.fb.watchdog_trips
        self.image.reset()
        self.fb = FB_LinesightGate()
        self._trips_seen = 0
        self.restarts += 1
        await self.server.start()
        self.up = True
        print(
            f"client_mode_plc: PLC up again: registers 0, a fresh program (start-up hold), "
            f"encoder {self.belt.udiEncoder}",
            file=sys.stderr,
        )

    def prg_scan(self, tNow: int) -> None:
        """PRG_LinesightGate: the register image and the field inputs into the FB, its status
        and encoder words back. A queued gate-command write is this scan's command words."""
        hr = self.image.aHoldingRegisters
        aCommand = hr[HR_GATE_COMMAND : HR_GATE_COMMAND + GATE_COMMAND_WORDS]
        if self.image.gate_writes:
            aCommand = self.image.gate_writes.popleft()
        self.fb.scan(
            tNow=tNow,
            wStationHeartbeat=hr[HR_HEARTBEAT],
            wStationState=hr[HR_STATION_STATE],
            aGateCommand=aCommand,
            xHaltLineCoil=self.image.aCoils[COIL_HALT_LINE],
            xGateEye=self.belt.xGateEye,
            xOperatorReset=False,  # this port has no reset button
            udiEncoder=self.belt.udiEncoder,
        )
        if self.fb.watchdog_trips != self._trips_seen:
            self._trips_seen = self.fb.watchdog_trips
            print(f"client_mode_plc: station watchdog expired (encoder {self.belt.udiEncoder})", file=sys.stderr)
        hr[HR_PLC_STATUS : HR_PLC_STATUS + PLC_STATUS_WORDS] = self.fb.aPlcStatus
        hr[HR_ENCODER : HR_ENCODER + ENCODER_WORDS] = self.fb.aEncoderCount

    def station_running(self) -> bool:
        hr = self.image.aHoldingRegisters
        if self._last_heartbeat is not None and hr[HR_HEARTBEAT] != self._last_heartbeat:
            self.heartbeat_changes += 1
        self._last_heartbeat = hr[HR_HEARTBEAT]
        return hr[HR_STATION_STATE] == 1 and self.heartbeat_changes >= 2

    def physics(self, tNow: int) -> None:
        """Between scans: the belt moves if it may (the outputs of the last scan), frames go out
        as parts pass the camera."""
        dt = min(tNow - self.tLast, MAX_BELT_STEP_MS)
        self.tLast = tNow
        if self.tBeltStart is None or not self.up or not self.fb.xInitialized or not self.fb.qConveyorRun:
            factor = 0.0
        else:
            factor = self.speed_factor(self.belt_s(tNow))
        self.belt.advance(dt, factor)
        if self.tBeltStart is None:
            return
        for part in self.belt.arrivals():
            if self.camera.connected and not self.camera_cut:
                self.camera.send(part.index, self.frames[part.index % len(self.frames)])

    def after_scan(self, tNow: int) -> None:
        """The physical outcome: eye counts, and each part reaching the diverter this scan with
        qGate as the program left it, and the program's decision for it."""
        decided = {d.stPart.udiEyeCount: d for d in self.fb.decided}
        for part in self.belt.in_flight:
            lead = self.belt.lead(part)
            if part.eye_count is None and lead >= self.belt.eye:
                part.eye_count = (self.belt.encoder_start + part.index * self.belt.pitch + self.belt.eye) & U32
            if part.logged or lead < self.belt.gate:
                continue
            part.logged = True
            part.seen = part.index in self.camera.delivered
            self.camera.delivered.discard(part.index)
            if not part.seen:
                self.unseen += 1
            decision = decided.pop(part.eye_count, None)
            record = part_record(part, self.belt.udiEncoder, int(self.belt_s(tNow) * 1000), self.fb, decision)
            if record["diverted"]:
                self.diverted += 1
            else:
                self.passed += 1
            if record["hold"]:
                self.held += 1
            if decision is None:
                self.undecided += 1
            if self.log is not None:
                self.log.write(json.dumps(record) + "\n")
                self.log.flush()
        while self.belt.in_flight and self.belt.in_flight[0].logged:
            self.belt.in_flight.popleft()
        # A decision for no part reaching the diverter now: a part the eye saw on a restart's
        # first scan (R5 takes it as a rising edge there, though it was already past the eye).
        self.decisions_without_part += len(decided)

    def summary(self) -> dict:
        return {
            "summary": {
                "parts": self.belt.count,
                "passed": self.passed,
                "diverted": self.diverted,
                "held": self.held,
                "undecided": self.undecided,
                "restarts": self.restarts,
                "watchdog_trips": self.trips_before + self.fb.watchdog_trips,
                "unmatched": self.unmatched_before + self.fb.udiUnmatched,
                "decisions_without_part": self.decisions_without_part,
                "frames_sent": self.camera.frames_sent,
                "unseen": self.unseen,
                "camera_cuts": self.cuts,
            }
        }

    async def run(self) -> int:
        args = self.args
        try:
            await self.server.start()
        except OSError as error:
            print(f"client_mode_plc: {error}", file=sys.stderr)
            return 2
        deadline = time.monotonic() + args.start_timeout_s
        connecting = asyncio.create_task(self.camera.connect(deadline))
        tEnd: int | None = None
        tLingerUntil: int | None = None
        next_scan = time.monotonic()
        try:
            while True:
                tNow = self.now_ms()
                if self.tBeltStart is None:
                    running = self.station_running()
                    if self.camera.connected and running:
                        self.tBeltStart = tNow
                        print(f"client_mode_plc: belt started, encoder {self.belt.udiEncoder}", file=sys.stderr)
                    elif time.monotonic() >= deadline:
                        if not self.camera.connected:
                            why = "the camera did not accept a connection"
                        else:
                            why = "the station did not start (station_state 1 and two heartbeat changes)"
                        print(
                            f"client_mode_plc: {why} within {args.start_timeout_s:g} s; giving up",
                            file=sys.stderr,
                        )
                        return 2
                elif tEnd is None:
                    t_s = self.belt_s(tNow)
                    self.announce(t_s)
                    should_be_up = self.plc_should_be_up(t_s)
                    if self.up and not should_be_up:
                        await self.go_down()
                    elif not self.up and should_be_up:
                        await self.come_up()
                    await self.follow_camera(t_s)
                self.physics(tNow)
                if self.up:
                    self.prg_scan(tNow)
                    self.after_scan(tNow)
                if tEnd is None and self.belt.done():
                    tEnd = tNow + END_AFTER_LAST_PART_MS
                if tEnd is not None and tLingerUntil is None and tNow >= tEnd:
                    await self.camera.close()
                    self.write_summary()
                    tLingerUntil = tNow + int(args.linger_s * 1000)
                # 0 is the station's clean stop; 2 (its camera lost) is what a station that
                # reconnects its camera says once the camera has closed.
                if tLingerUntil is not None and (
                    tNow >= tLingerUntil or self.image.aHoldingRegisters[HR_STATION_STATE] == 0
                ):
                    return 0
                next_scan += SCAN_MS / 1000.0
                delay = next_scan - time.monotonic()
                if delay < 0:  # late: do not try to catch up scans
                    next_scan = time.monotonic()
                    delay = 0
                await asyncio.sleep(delay)
        finally:
            connecting.cancel()
            if self._reconnecting is not None:
                self._reconnecting.cancel()
            await self.camera.close()
            await self.server.stop()
            if self.log is not None:
                self.log.close()

    def write_summary(self) -> None:
        line = json.dumps(self.summary())
        if self.log is not None:
            self.log.write(line + "\n")
            self.log.flush()
        print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


EVENT_HELP = "expected stop@T:SECONDS, speed@T:FACTOR, restart@T:SECONDS or cut@T:SECONDS"


def events(text: str) -> list[Event]:
    """"stop@1.0:0.5,speed@2.0:1.5,restart@3.0:1.0"."""
    found = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            kind, rest = item.split("@", 1)
            at, value = rest.split(":", 1)
            event = Event(float(at), kind.strip(), float(value))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: {EVENT_HELP}")
        if event.kind not in ("stop", "speed", "restart", "cut") or event.at_s < 0 or event.value < 0:
            raise argparse.ArgumentTypeError(f"{item!r}: {EVENT_HELP}")
        found.append(event)
    return found


def load_frames(folder: str) -> list[bytes]:
    """part-0000.raw, part-0001.raw, ... in name order; all of one size."""
    files = sorted(Path(folder).glob("part-*.raw"))
    if not files:
        raise ValueError(f"{folder}: no part-NNNN.raw files")
    frames = [path.read_bytes() for path in files]
    sizes = {len(frame) for frame in frames}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"{folder}: the frames differ in size or are empty ({sorted(sizes)} bytes)")
    return frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A line PLC for Linesight's client mode: FB_LinesightGate "
        "(firmware-io/plc/linesight_gate.st, encoder tracking) behind a pymodbus Modbus TCP "
        "server, on a simulated belt that feeds the station's camera."
    )
    parser.add_argument("--listen", type=host_port, required=True, help="the PLC's Modbus server, HOST:PORT")
    parser.add_argument(
        "--camera", type=host_port, required=True, help="the station's GStreamer tcpserversrc, HOST:PORT"
    )
    parser.add_argument(
        "--frames",
        required=True,
        help="folder of part-0000.raw, part-0001.raw, ... (raw GRAY8, all one size): one part each",
    )
    parser.add_argument(
        "--counts-per-s",
        type=positive(float),
        default=10000.0,
        help="encoder counts per s at speed factor 1 (default 10000)",
    )
    parser.add_argument(
        "--pitch-counts",
        type=positive(int),
        default=1000,
        help="counts between parts (default 1000); a part is half a pitch long",
    )
    parser.add_argument(
        "--camera-to-eye-counts",
        type=int,
        default=3000,
        help="counts from the camera to the gate photo-eye (default 3000); the diverter is "
        f"EYE_TO_GATE_COUNTS ({EYE_TO_GATE_COUNTS}) further",
    )
    parser.add_argument(
        "--events",
        type=events,
        default=[],
        help='seconds after the belt started, comma-separated: "stop@T:D" (belt still for D s), '
        '"speed@T:F" (F times the nominal speed from T), "restart@T:D" (the PLC down for D s), '
        '"cut@T:D" (the camera disconnected for D s)',
    )
    parser.add_argument(
        "--parts",
        type=positive(int),
        help="parts on the belt (default: one per frame file); part k shows frame k modulo the files",
    )
    parser.add_argument("--log", help="JSON lines: one per part as it reaches the diverter, then the summary")
    parser.add_argument(
        "--start-timeout-s",
        type=positive(float),
        default=60.0,
        help="the camera must accept and the station run within this long (default 60), else exit 2",
    )
    parser.add_argument("--encoder-start", type=int, default=0, help="the encoder's first count (wraps at 2^32)")
    parser.add_argument(
        "--linger-s",
        type=float,
        default=5.0,
        help="after the camera closed, serve until the station has written station_state 0, at most this "
        "long (default 5)",
    )
    args = parser.parse_args(argv)
    if args.camera_to_eye_counts < 0:
        parser.error("--camera-to-eye-counts must be 0 or more")
    if args.pitch_counts <= MATCH_BEFORE_COUNTS + EYE_TO_GATE_COUNTS:
        parser.error(
            f"--pitch-counts must be above MATCH_BEFORE_COUNTS + EYE_TO_GATE_COUNTS "
            f"({MATCH_BEFORE_COUNTS + EYE_TO_GATE_COUNTS}): R6 needs the window below the pitch"
        )
    if args.linger_s < 0:
        parser.error("--linger-s must be 0 or more")
    args.encoder_start &= U32
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        frames = load_frames(args.frames)
    except (OSError, ValueError) as error:
        print(f"client_mode_plc: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    # pymodbus logs every connection the station drops; the PLC reports its own events.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    async def run() -> int:
        return await LinePlc(args, frames).run()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

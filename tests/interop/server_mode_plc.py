"""A line PLC for the station's server mode, built on pymodbus: a Python port of
firmware-io/plc/linesight_server_client.st, run as a real PLC would run it.

The station is the Modbus TCP server ([server] in firmware-io/register-map.toml), this script
its client. A simulated conveyor with an encoder carries --parts parts past a photo-eye at the
camera and on to a diverter; FB_LinesightCameraClient (the port of the ST function block of the
same name, rule by rule S1..S10 of firmware-io/plc-program.md, with the ST's names) scans every
2 ms: it tracks each part by encoder count, triggers the capture with the part's tracking id,
takes the verdicts from the station's results buffer, acknowledges them, beats the PLC
heartbeat, watches the station's, and pulses the gate for every part that is not a PASS.
ModbusLink is the PLC program's Modbus client cycle (the header of the ST file): read the status
block, let the FB scan on it, write the control block; on any Modbus error or a lost connection
the FB is faulted (every part is diverted) and the link reconnects with a back-off.

Usage (all options: --help):
  server_mode_plc.py --station 127.0.0.1:1502 --parts 20 --pitch-ms 100 --eye-to-gate-ms 500 \\
      --events "stop@2.0:1.5,speed@5.0:0.5" --log parts.jsonl

It puts the parts on the belt once the station is healthy (or after --start-timeout-s), runs
until the last part has reached the gate, writes one JSON line per part to --log as it reaches
the gate, then a {"summary": ...} line (also printed to stdout), and exits 0.
--ack-stops-after N is a test knob with no ST counterpart: after N results the acknowledge word
stays put, so the station's results buffer fills up (its overrun handling can be tested).
Only pymodbus (the venv's, 3.8: the unit is the `slave=` keyword) and the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, replace

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

# ---------------------------------------------------------------------------------------------
# VAR_GLOBAL CONSTANT of the ST file: [server] in register-map.toml.
# ---------------------------------------------------------------------------------------------
HR_CONTROL = 200
HR_STATUS = 300
RESULTS_DEPTH = 32
HEADER_WORDS = 20
ENTRY_WORDS = 7
CONTROL_WORDS = 5
STATUS_WORDS = HEADER_WORDS + RESULTS_DEPTH * ENTRY_WORDS
MAX_READ_WORDS = 125

CONTROL_BITS = 0
CONTROL_TRACKING_ID = 1
CONTROL_ACK = 3
CONTROL_HEARTBEAT = 4
CTRL_TRIGGER_ENABLE = 0x0001
CTRL_TRIGGER = 0x0002
CTRL_CLEAR_ERROR = 0x0004
CTRL_SET_OFFLINE = 0x0008

STATUS_BITS = 0
STATUS_HEARTBEAT = 1
STATUS_LAST_ID = 2
STATUS_PENDING = 4
STATUS_NEWEST = 5
STS_TRIGGER_READY = 0x0001
STS_TRIGGER_ACK = 0x0002
STS_BUSY = 0x0004
STS_RESULTS_VALID = 0x0008
STS_ONLINE = 0x0010
STS_DEGRADED = 0x0020
STS_ERROR = 0x0040
STS_OVERRUN = 0x0080
STS_STOP_LINE = 0x0100

ENTRY_SEQUENCE = 0
ENTRY_TRACKING_ID = 1
ENTRY_VERDICT = 3
ENTRY_CLASS = 4
ENTRY_CONFIDENCE = 5
ENTRY_PROCESSING = 6

VERDICT_PASS = 1

TRIG_WAITING = 0
TRIG_BUSY = 1
TRIG_ACKED = 2
TRIG_MISSED = 3

REASON_PASS = 0
REASON_NO_RESULT = 1
REASON_NOT_PASS = 2
REASON_MISSED_TRIGGER = 3
REASON_FAULT = 4
REASON_NAMES = {
    REASON_PASS: "pass",
    REASON_NO_RESULT: "no_result",
    REASON_NOT_PASS: "not_pass",
    REASON_MISSED_TRIGGER: "missed_trigger",
    REASON_FAULT: "fault",
}

HS_IDLE = 0
HS_ARMING = 1
HS_WAIT_ACK = 2

# The FB's VAR CONSTANT defaults (the CLI sets the line's values).
TRACKING_DEPTH = 64

# The port's own: the PLC scan period, and the Modbus link's request timeout and back-off
# (100 ms doubling to 2 s, +-25 % jitter, as the station's own PLC link).
SCAN_MS = 2
# The longest stall of this process whose missed scans are run when it wakes.
CATCH_UP_MS = 1000
IO_TIMEOUT_S = 0.5
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0

U16 = 0xFFFF
U32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# The ST helper functions, with IEC integer wrapping made explicit.
# ---------------------------------------------------------------------------------------------
def _signed(value: int, bits: int) -> int:
    """Reads an unsigned `bits`-wide value as two's complement (DWORD_TO_DINT, WORD_TO_INT)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def F_LsElapsedMs(tFrom: int, tTo: int) -> int:
    """Signed milliseconds from tFrom to tTo (TIME wraps modulo 2^32 ms)."""
    return _signed(tTo - tFrom, 32)


def F_LsCountsSince(udiFrom: int, udiTo: int) -> int:
    """Signed encoder counts from udiFrom to udiTo (the counter wraps modulo 2^32)."""
    return _signed(udiTo - udiFrom, 32)


def F_LsSeqNewer(wSeq: int, wRef: int) -> bool:
    """Sequence wSeq is newer than wRef (1..65535, wraps to 1; 0 = none)."""
    if wRef == 0:
        return wSeq != 0
    return _signed(wSeq - wRef, 16) > 0


def F_LsWordsToU32(uiFirst: int, uiSecond: int, xHighFirst: bool) -> int:
    """Two registers as a u32 in the map's word order."""
    high, low = (uiFirst, uiSecond) if xHighFirst else (uiSecond, uiFirst)
    return ((high & U16) << 16) | (low & U16)


def F_LsU32ToWord(udiValue: int, xFirst: bool, xHighFirst: bool) -> int:
    """One register of a u32: the one at the lower address when xFirst."""
    if xFirst == xHighFirst:
        return (udiValue >> 16) & U16
    return udiValue & U16


# ---------------------------------------------------------------------------------------------
# IEC 61131-3 standard function blocks, scanned with the PLC clock.
# ---------------------------------------------------------------------------------------------
class R_TRIG:
    """Rising edge: Q is TRUE for the one scan CLK goes from FALSE to TRUE."""

    def __init__(self) -> None:
        self.Q = False
        self._M = False

    def __call__(self, CLK: bool) -> None:
        self.Q = CLK and not self._M
        self._M = CLK


class TON:
    """On-delay: Q once IN has been TRUE for PT ms; IN FALSE resets it."""

    def __init__(self) -> None:
        self.Q = False
        self._tStart: int | None = None

    def __call__(self, IN: bool, PT: int, tNow: int) -> None:
        if not IN:
            self._tStart = None
            self.Q = False
            return
        if self._tStart is None:
            self._tStart = tNow
        self.Q = F_LsElapsedMs(self._tStart, tNow) >= PT


class TOF:
    """Off-delay: Q follows IN up and stays TRUE PT ms after IN went FALSE."""

    def __init__(self) -> None:
        self.Q = False
        self._tOff: int | None = None

    def __call__(self, IN: bool, PT: int, tNow: int) -> None:
        if IN:
            self.Q = True
            self._tOff = None
            return
        if self.Q:
            if self._tOff is None:
                self._tOff = tNow
            if F_LsElapsedMs(self._tOff, tNow) >= PT:
                self.Q = False
                self._tOff = None


@dataclass
class ST_TrackedPart:
    udiTrackingId: int = 0  # written with its trigger, echoed in its result
    udiEyeCount: int = 0  # udiEncoder at the photo-eye's rising edge
    tEye: int = 0  # tNow at the same edge: the trigger deadline counts from it
    uiTrigger: int = TRIG_WAITING  # TRIG_WAITING, TRIG_BUSY, TRIG_ACKED or TRIG_MISSED
    xHasResult: bool = False  # a result with this tracking id was taken
    uiSequence: int = 0
    uiVerdict: int = 0
    uiClass: int = 0
    uiConfidence: int = 0
    uiProcessing: int = 0


# ---------------------------------------------------------------------------------------------
# FB_LinesightCameraClient: one method per rule, called in the ST's order by scan().
# ---------------------------------------------------------------------------------------------
class FB_LinesightCameraClient:
    def __init__(
        self,
        *,
        WATCHDOG_MS: int = 1500,
        PULSE_MS: int = 40,
        PLC_HEARTBEAT_MS: int = 100,
        TRIGGER_ACK_MS: int = 100,
        EYE_TO_GATE_COUNTS: int = 5000,
        WORDS_HIGH_FIRST: bool = True,
        udiFirstTrackingId: int = 1,
        ack_stops_after: int | None = None,
    ) -> None:
        # VAR CONSTANT (the ST's are constants; here the CLI sets them).
        self.WATCHDOG_MS = WATCHDOG_MS
        self.PULSE_MS = PULSE_MS
        self.PLC_HEARTBEAT_MS = PLC_HEARTBEAT_MS
        self.TRIGGER_ACK_MS = TRIGGER_ACK_MS
        self.EYE_TO_GATE_COUNTS = EYE_TO_GATE_COUNTS
        self.WORDS_HIGH_FIRST = WORDS_HIGH_FIRST
        # VAR_INPUT
        self.tNow = 0
        self.udiEncoder = 0
        self.xPhotoEye = False
        self.xTriggerEnable = True
        self.xClearError = False
        self.udiFirstTrackingId = udiFirstTrackingId & U32
        self.xCommOk = False
        self.aStatus = [0] * STATUS_WORDS
        self.wControlReadBack = 0
        # VAR_OUTPUT
        self.aControl = [0] * CONTROL_WORDS
        self.qGate = False
        self.xFault = False
        self.xCommError = False
        self.xWatchdogExpired = False
        self.xOffline = False
        self.xTrackingOverrun = False
        self.xStationDegraded = False
        self.xStationError = False
        self.xStationOverrun = False
        self.xStopLine = False
        self.udiPartsSeen = 0
        self.udiPassed = 0
        self.udiDiverted = 0
        self.udiUntracked = 0
        self.udiResultsTaken = 0
        self.udiUnmatchedResults = 0
        self.udiMissedTriggers = 0
        self.udiFaults = 0
        self.stLastPart = ST_TrackedPart()
        self.uiLastReason = REASON_PASS
        self.xLastDiverted = False
        # VAR
        self.xInitialized = False
        self.tonWatchdog = TON()
        self.wLastHeartbeat = 0
        self.xHeartbeatSeen = False
        self.xHeartbeatChanged = False
        self.xHeartbeatMoved = False
        self.wStatusBits = 0
        self.rtFault = R_TRIG()
        self.xWasHealthy = False
        self.rtEye = R_TRIG()
        self.aFifo = [ST_TrackedPart() for _ in range(TRACKING_DEPTH)]
        self.uiFifoHead = 0
        self.uiFifoCount = 0
        self.udiNextTrackingId = 0
        self.xIdsSynced = False
        self.udiHoldEyeCount = 0
        self.uiTrigState = HS_IDLE
        self.uiTrigSlot = 0
        self.udiTrigId = 0
        self.xTrigger = False
        self.udiTriggerId = 0
        self.xResync = True
        self.wLastAck = 0
        self.tofGate = TOF()
        self.wPlcHeartbeat = 0
        self.tNextPlcBeat = 0
        # The port's log only (the ST has stLastPart): every part decided in this scan, and the
        # untracked parts (S4 overrun) until they reach the gate.
        self.decided: list[tuple[ST_TrackedPart, int, int]] = []  # (part, reason, tNow)
        self.untracked: list[ST_TrackedPart] = []
        # A test knob, not in the ST (--ack-stops-after): after this many results taken, the
        # acknowledge word stays at the last of them, as a PLC that stopped acknowledging.
        self.ack_stops_after = ack_stops_after
        self.udiAckedResults = 0
        self.wAckFrozen: int | None = 0 if ack_stops_after == 0 else None

    def scan(
        self,
        *,
        tNow: int,
        udiEncoder: int,
        xPhotoEye: bool,
        xCommOk: bool,
        aStatus: list[int],
        wControlReadBack: int,
        xTriggerEnable: bool = True,
        xClearError: bool = False,
    ) -> None:
        """One PLC scan: the FB body, rule by rule in the ST's order."""
        self.tNow = tNow
        self.udiEncoder = udiEncoder & U32
        self.xPhotoEye = xPhotoEye
        self.xCommOk = xCommOk
        self.aStatus = aStatus
        self.wControlReadBack = wControlReadBack
        self.xTriggerEnable = xTriggerEnable
        self.xClearError = xClearError
        self.decided = []

        self.first_scan()
        self.s1_station_watchdog()
        self.s2_link_and_online()
        self.s3_fault()
        self.s4_sync_tracking_ids()
        self.s4_tracking()
        self.s5_trigger_handshake()
        self.s6_results()
        xDivertThisScan = self.s7_decide()
        self.s8_gate(xDivertThisScan)
        self.s9_plc_heartbeat()
        self.s10_control_block()

    def first_scan(self) -> None:
        if not self.xInitialized:
            self.udiNextTrackingId = self.udiFirstTrackingId
            if self.udiNextTrackingId == 0:
                self.udiNextTrackingId = 1
            self.tNextPlcBeat = self.tNow
            self.xInitialized = True

    def s1_station_watchdog(self) -> None:
        """S1: TON on an unchanged station heartbeat; the first value of a connection is a
        baseline, the station counts as lost until it has changed once."""
        if self.xCommOk:
            if not self.xHeartbeatSeen:
                self.wLastHeartbeat = self.aStatus[STATUS_HEARTBEAT]
                self.xHeartbeatSeen = True
                self.xHeartbeatChanged = False
            else:
                self.xHeartbeatChanged = self.aStatus[STATUS_HEARTBEAT] != self.wLastHeartbeat
                self.wLastHeartbeat = self.aStatus[STATUS_HEARTBEAT]
            if self.xHeartbeatChanged:
                self.xHeartbeatMoved = True
        else:
            self.xHeartbeatSeen = False
            self.xHeartbeatChanged = False
            self.xHeartbeatMoved = False
        self.tonWatchdog(not self.xHeartbeatChanged, self.WATCHDOG_MS, self.tNow)
        self.xWatchdogExpired = self.tonWatchdog.Q or not self.xHeartbeatMoved

    def s2_link_and_online(self) -> None:
        """S2: communication error; the station's status bits from a good image only."""
        self.xCommError = not self.xCommOk
        if self.xCommOk:
            self.wStatusBits = self.aStatus[STATUS_BITS]
            self.xOffline = (self.wStatusBits & STS_ONLINE) == 0
            self.xStationDegraded = (self.wStatusBits & STS_DEGRADED) != 0
            self.xStationError = (self.wStatusBits & STS_ERROR) != 0
            self.xStationOverrun = (self.wStatusBits & STS_OVERRUN) != 0
            self.xStopLine = (self.wStatusBits & STS_STOP_LINE) != 0

    def s3_fault(self) -> None:
        """S3: comm error, watchdog or offline; faults counted after the first healthy scan."""
        self.xFault = self.xCommError or self.xWatchdogExpired or self.xOffline
        self.rtFault(self.xFault)
        if self.rtFault.Q and self.xWasHealthy:
            self.udiFaults += 1
        if not self.xFault:
            self.xWasHealthy = True

    def s4_sync_tracking_ids(self) -> None:
        """S4: on the first good image, ids continue after the station's last trigger taken
        when that is at or past the next id."""
        if self.xCommOk and not self.xIdsSynced:
            udiStationLastId = F_LsWordsToU32(
                self.aStatus[STATUS_LAST_ID], self.aStatus[STATUS_LAST_ID + 1], self.WORDS_HIGH_FIRST
            )
            if udiStationLastId != 0 and F_LsCountsSince(self.udiNextTrackingId, udiStationLastId) >= 0:
                self.udiNextTrackingId = (udiStationLastId + 1) & U32
                if self.udiNextTrackingId == 0:
                    self.udiNextTrackingId = 1
            self.xIdsSynced = True

    def s4_tracking(self) -> None:
        """S4: a photo-eye rising edge is a part: next tracking id, encoder count, into the FIFO;
        a full FIFO holds the gate until the untracked part is past it (S8)."""
        self.rtEye(self.xPhotoEye)
        if self.rtEye.Q:
            self.udiPartsSeen += 1
            if self.uiFifoCount >= TRACKING_DEPTH:
                self.udiUntracked += 1
                self.udiHoldEyeCount = self.udiEncoder
                self.xTrackingOverrun = True
                self.untracked.append(  # the port's log only
                    ST_TrackedPart(self.udiNextTrackingId, self.udiEncoder, self.tNow, TRIG_MISSED)
                )
            else:
                uiSlot = (self.uiFifoHead + self.uiFifoCount) % TRACKING_DEPTH
                self.aFifo[uiSlot] = ST_TrackedPart(
                    udiTrackingId=self.udiNextTrackingId,
                    udiEyeCount=self.udiEncoder,
                    tEye=self.tNow,
                    uiTrigger=TRIG_WAITING,
                )
                self.uiFifoCount += 1
            self.udiNextTrackingId = (self.udiNextTrackingId + 1) & U32
            if self.udiNextTrackingId == 0:
                self.udiNextTrackingId = 1

    def s5_trigger_handshake(self) -> None:
        """S5: one part at a time, oldest first: arm (ready, ack low, trigger read back low),
        write id + trigger, wait for the ack with the echoed id, clear; missed after
        TRIGGER_ACK_MS from the eye."""
        if self.uiTrigState == HS_IDLE:
            uiIndex = 0
            while uiIndex < self.uiFifoCount:
                uiSlot = (self.uiFifoHead + uiIndex) % TRACKING_DEPTH
                part = self.aFifo[uiSlot]
                if part.uiTrigger == TRIG_WAITING:
                    if F_LsElapsedMs(part.tEye, self.tNow) > self.TRIGGER_ACK_MS:
                        part.uiTrigger = TRIG_MISSED
                    else:
                        part.uiTrigger = TRIG_BUSY
                        self.uiTrigSlot = uiSlot
                        self.udiTrigId = part.udiTrackingId
                        self.uiTrigState = HS_ARMING
                        break
                uiIndex += 1

        if self.uiTrigState != HS_IDLE:
            part = self.aFifo[self.uiTrigSlot]
            if part.udiTrackingId != self.udiTrigId or part.uiTrigger != TRIG_BUSY:
                # Gone: the part reached the gate before its acknowledge (S7 made it missed).
                self.xTrigger = False
                self.uiTrigState = HS_IDLE
            elif F_LsElapsedMs(part.tEye, self.tNow) > self.TRIGGER_ACK_MS or (
                self.uiTrigState == HS_WAIT_ACK and not self.xCommOk
            ):
                # Missed: no acknowledge in time, or the link dropped with the trigger out.
                part.uiTrigger = TRIG_MISSED
                self.xTrigger = False
                self.uiTrigState = HS_IDLE
            elif self.uiTrigState == HS_ARMING:
                self.wStatusBits = self.aStatus[STATUS_BITS]
                if (
                    self.xCommOk
                    and not self.xFault
                    and self.xTriggerEnable
                    and (self.wStatusBits & STS_TRIGGER_READY) != 0
                    and (self.wStatusBits & STS_TRIGGER_ACK) == 0
                    and (self.wControlReadBack & CTRL_TRIGGER) == 0
                ):
                    self.udiTriggerId = self.udiTrigId
                    self.xTrigger = True
                    self.uiTrigState = HS_WAIT_ACK
            elif self.uiTrigState == HS_WAIT_ACK:
                self.wStatusBits = self.aStatus[STATUS_BITS]
                if (
                    self.xCommOk
                    and (self.wStatusBits & STS_TRIGGER_ACK) != 0
                    and F_LsWordsToU32(
                        self.aStatus[STATUS_LAST_ID],
                        self.aStatus[STATUS_LAST_ID + 1],
                        self.WORDS_HIGH_FIRST,
                    )
                    == self.udiTrigId
                ):
                    part.uiTrigger = TRIG_ACKED
                    self.xTrigger = False
                    self.uiTrigState = HS_IDLE

    def s6_results(self) -> None:
        """S6: header, then the pending entries; new ones (newer than the last ack, or all while
        re-syncing) go into their part by tracking id, or count unmatched; ack the newest taken,
        or follow the station's newest when nothing is pending."""
        if self.xCommOk:
            uiPending = min(self.aStatus[STATUS_PENDING], RESULTS_DEPTH)
            wNewest = self.aStatus[STATUS_NEWEST]
            if (
                not self.xResync
                and wNewest != self.wLastAck
                and not F_LsSeqNewer(wNewest, self.wLastAck)
            ):
                self.xResync = True  # the station's sequence went back: it restarted
            xTakenAny = False
            wTaken = 0
            uiEntry = 0
            while uiEntry < uiPending:
                uiBase = HEADER_WORDS + uiEntry * ENTRY_WORDS
                wSeq = self.aStatus[uiBase + ENTRY_SEQUENCE]
                if wSeq != 0 and (self.xResync or F_LsSeqNewer(wSeq, self.wLastAck)):
                    udiResultId = F_LsWordsToU32(
                        self.aStatus[uiBase + ENTRY_TRACKING_ID],
                        self.aStatus[uiBase + ENTRY_TRACKING_ID + 1],
                        self.WORDS_HIGH_FIRST,
                    )
                    xFound = False
                    uiSlot = 0
                    uiIndex = 0
                    while uiIndex < self.uiFifoCount and not xFound:
                        uiSlot = (self.uiFifoHead + uiIndex) % TRACKING_DEPTH
                        if (
                            self.aFifo[uiSlot].udiTrackingId == udiResultId
                            and self.aFifo[uiSlot].uiTrigger != TRIG_WAITING
                        ):
                            xFound = True
                        else:
                            uiIndex += 1
                    if not xFound:
                        self.udiUnmatchedResults += 1
                    elif self.aFifo[uiSlot].xHasResult:
                        if self.aFifo[uiSlot].uiSequence != wSeq:
                            self.udiUnmatchedResults += 1
                    else:
                        part = self.aFifo[uiSlot]
                        part.xHasResult = True
                        part.uiSequence = wSeq
                        part.uiVerdict = self.aStatus[uiBase + ENTRY_VERDICT]
                        part.uiClass = self.aStatus[uiBase + ENTRY_CLASS]
                        part.uiConfidence = self.aStatus[uiBase + ENTRY_CONFIDENCE]
                        part.uiProcessing = self.aStatus[uiBase + ENTRY_PROCESSING]
                        self.udiResultsTaken += 1
                    wTaken = wSeq
                    xTakenAny = True
                    # The test knob: remember the sequence the acknowledge word stops at.
                    if self.ack_stops_after is not None and self.wAckFrozen is None:
                        self.udiAckedResults += 1
                        if self.udiAckedResults >= self.ack_stops_after:
                            self.wAckFrozen = wSeq
                uiEntry += 1
            if xTakenAny:
                self.wLastAck = wTaken
            elif uiPending == 0:
                self.wLastAck = wNewest
            self.xResync = False
        else:
            self.xResync = True

    def s7_decide(self) -> bool:
        """S7: every part whose encoder travel reached EYE_TO_GATE_COUNTS is decided: PASS only
        when not faulted, trigger acknowledged and verdict 1. Returns xDivertThisScan."""
        xDivertThisScan = False
        while self.uiFifoCount > 0:
            head = self.aFifo[self.uiFifoHead]
            if F_LsCountsSince(head.udiEyeCount, self.udiEncoder) < self.EYE_TO_GATE_COUNTS:
                break
            if head.uiTrigger in (TRIG_WAITING, TRIG_BUSY):
                head.uiTrigger = TRIG_MISSED
            stPart = replace(head)  # a copy, as stPart := aFifo[uiFifoHead]
            self.uiFifoHead = (self.uiFifoHead + 1) % TRACKING_DEPTH
            self.uiFifoCount -= 1

            if stPart.uiTrigger == TRIG_MISSED:
                self.udiMissedTriggers += 1
            if self.xFault:
                self.uiLastReason = REASON_FAULT
            elif stPart.uiTrigger != TRIG_ACKED:
                self.uiLastReason = REASON_MISSED_TRIGGER
            elif not stPart.xHasResult:
                self.uiLastReason = REASON_NO_RESULT
            elif stPart.uiVerdict != VERDICT_PASS:
                self.uiLastReason = REASON_NOT_PASS
            else:
                self.uiLastReason = REASON_PASS
            self.stLastPart = stPart
            self.xLastDiverted = self.uiLastReason != REASON_PASS
            if self.xLastDiverted:
                self.udiDiverted += 1
                xDivertThisScan = True
            else:
                self.udiPassed += 1
            self.decided.append((stPart, self.uiLastReason, self.tNow))
        return xDivertThisScan

    def s8_gate(self, xDivertThisScan: bool) -> None:
        """S8: a TOF restarted by every divert holds qGate PULSE_MS; an untracked part (S4)
        holds it until PULSE_MS after it reached the gate."""
        # The port's log only: untracked parts are logged as they reach the gate.
        while self.untracked and (
            F_LsCountsSince(self.untracked[0].udiEyeCount, self.udiEncoder) >= self.EYE_TO_GATE_COUNTS
        ):
            self.decided.append((self.untracked.pop(0), REASON_FAULT, self.tNow))
        if self.xTrackingOverrun and (
            F_LsCountsSince(self.udiHoldEyeCount, self.udiEncoder) >= self.EYE_TO_GATE_COUNTS
        ):
            self.xTrackingOverrun = False
        if xDivertThisScan:
            self.tofGate(True, self.PULSE_MS, self.tNow)
        self.tofGate(self.xTrackingOverrun, self.PULSE_MS, self.tNow)
        self.qGate = self.tofGate.Q

    def s9_plc_heartbeat(self) -> None:
        """S9: control + 4 steps on the first scan and every PLC_HEARTBEAT_MS."""
        if F_LsElapsedMs(self.tNextPlcBeat, self.tNow) >= 0:
            self.wPlcHeartbeat = (self.wPlcHeartbeat + 1) & U16
            self.tNextPlcBeat = self.tNow + self.PLC_HEARTBEAT_MS

    def s10_control_block(self) -> None:
        """S10: bits (enable, trigger, clear error; never set offline), id, ack, heartbeat."""
        wControlBits = 0
        if self.xTriggerEnable:
            wControlBits |= CTRL_TRIGGER_ENABLE
        if self.xTrigger:
            wControlBits |= CTRL_TRIGGER
        if self.xClearError:
            wControlBits |= CTRL_CLEAR_ERROR
        self.aControl[CONTROL_BITS] = wControlBits
        self.aControl[CONTROL_TRACKING_ID] = F_LsU32ToWord(self.udiTriggerId, True, self.WORDS_HIGH_FIRST)
        self.aControl[CONTROL_TRACKING_ID + 1] = F_LsU32ToWord(
            self.udiTriggerId, False, self.WORDS_HIGH_FIRST
        )
        self.aControl[CONTROL_ACK] = self.wLastAck
        if self.wAckFrozen is not None:  # the test knob (--ack-stops-after), not in the ST
            self.aControl[CONTROL_ACK] = self.wAckFrozen
        self.aControl[CONTROL_HEARTBEAT] = self.wPlcHeartbeat


# ---------------------------------------------------------------------------------------------
# The PLC program's Modbus client cycle (the header of the ST file).
# ---------------------------------------------------------------------------------------------
class ModbusError(Exception):
    """A Modbus exception response, or a reply of the wrong shape."""


class ModbusLink:
    """One Modbus cycle at a time: read the status header and control + 0, read the pending
    entries, hand the image to the FB and wait for a scan on it, write the control block when it
    changed (always first on a new connection). Any error: xCommOk FALSE, close, back off,
    reconnect, and start again with a read."""

    def __init__(self, host: str, port: int, unit: int) -> None:
        self.host = host
        self.port = port
        self.unit = unit
        # The images the FB reads and writes (PRG_LinesightCameraClient's).
        self.aStatusImage = [0] * STATUS_WORDS
        self.wControlReadBack = 0
        self.xCommOk = False
        self.aControlImage = [0] * CONTROL_WORDS
        self.connections = 0
        self.reconnects = 0
        self._client: AsyncModbusTcpClient | None = None
        self._scanned = asyncio.Event()
        self._stopping = False

    def scanned(self, aControl: list[int]) -> None:
        """Called by the scan loop after every FB scan, with the FB's aControl."""
        self.aControlImage = list(aControl)
        self._scanned.set()

    def stop(self) -> None:
        self._stopping = True
        self._scanned.set()

    async def _read(self, address: int, count: int) -> list[int]:
        assert self._client is not None
        reply = await asyncio.wait_for(
            self._client.read_holding_registers(address, count=count, slave=self.unit),
            IO_TIMEOUT_S + 0.5,
        )
        if reply.isError() or len(reply.registers) < count:
            raise ModbusError(f"FC3 {address}+{count}: {reply}")
        return list(reply.registers[:count])

    async def _write(self, address: int, values: list[int]) -> None:
        assert self._client is not None
        reply = await asyncio.wait_for(
            self._client.write_registers(address, values, slave=self.unit), IO_TIMEOUT_S + 0.5
        )
        if reply.isError():
            raise ModbusError(f"FC16 {address}+{len(values)}: {reply}")

    async def _connect(self) -> bool:
        client = AsyncModbusTcpClient(
            self.host, port=self.port, timeout=IO_TIMEOUT_S, retries=0, reconnect_delay=0
        )
        try:
            ok = await asyncio.wait_for(client.connect(), IO_TIMEOUT_S + 1.0)
        except (OSError, asyncio.TimeoutError, ModbusException):
            ok = False
        if not ok or not client.connected:
            client.close()
            return False
        self._client = client
        return True

    def _lost(self, why: object) -> None:
        if self.xCommOk or self._client is not None:
            print(f"server_mode_plc: link lost: {why}", file=sys.stderr)
        self.xCommOk = False
        if self._client is not None:
            self._client.close()
            self._client = None

    async def modbus_cycle(self, xFirstWrite: bool, aLastWritten: list[int]) -> list[int]:
        """One cycle; returns the control block as last written."""
        header = await self._read(HR_STATUS, HEADER_WORDS)
        readback = await self._read(HR_CONTROL, 1)
        image = header + [0] * (STATUS_WORDS - HEADER_WORDS)
        uiPending = min(header[STATUS_PENDING], RESULTS_DEPTH)
        words = uiPending * ENTRY_WORDS
        offset = 0
        per_request = (MAX_READ_WORDS // ENTRY_WORDS) * ENTRY_WORDS  # 17 entries
        while offset < words:
            count = min(per_request, words - offset)
            image[HEADER_WORDS + offset : HEADER_WORDS + offset + count] = await self._read(
                HR_STATUS + HEADER_WORDS + offset, count
            )
            offset += count
        # Step 3: the image goes to the FB; wait until it has scanned on it.
        self.aStatusImage = image
        self.wControlReadBack = readback[0]
        self.xCommOk = True
        self._scanned.clear()
        await self._scanned.wait()
        # Step 4: the control block, when it changed or first on this connection.
        control = list(self.aControlImage)
        if xFirstWrite or control != aLastWritten:
            await self._write(HR_CONTROL, control)
            return control
        return aLastWritten

    async def run(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stopping:
            if self._client is None:
                if not await self._connect():
                    await asyncio.sleep(backoff * random.uniform(0.75, 1.25))
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
                    continue
                self.connections += 1
                if self.connections > 1:
                    self.reconnects += 1
                    print("server_mode_plc: link back", file=sys.stderr)
                xFirstWrite = True
                aLastWritten: list[int] = []
            try:
                aLastWritten = await self.modbus_cycle(xFirstWrite, aLastWritten)
                xFirstWrite = False
                backoff = BACKOFF_FIRST_S
            except (ModbusException, ModbusError, OSError, asyncio.TimeoutError) as error:
                self._lost(error)
                await asyncio.sleep(backoff * random.uniform(0.75, 1.25))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        if self._client is not None:
            self._client.close()


# ---------------------------------------------------------------------------------------------
# The simulated conveyor: an encoder, a photo-eye at the camera, the parts on the belt.
# ---------------------------------------------------------------------------------------------
@dataclass
class Event:
    at_s: float  # seconds after the belt started (the first part at the photo-eye)
    kind: str  # "stop" (value: seconds stopped) or "speed" (value: speed factor from then on)
    value: float


class Conveyor:
    """Part i's leading edge starts at belt position 1 + i * pitch counts (part 0 reaches the
    photo-eye as the belt starts); a part is half a pitch long. The belt moves counts_per_ms
    times the speed factor counts per ms, and not at all during a stop."""

    def __init__(
        self, parts: int, pitch_counts: int, counts_per_ms: float, events: list[Event], encoder_start: int
    ) -> None:
        self.parts = parts
        self.pitch_counts = pitch_counts
        self.part_counts = max(1, pitch_counts // 2)
        self.counts_per_ms = counts_per_ms
        self.events = sorted(events, key=lambda e: e.at_s)
        self.encoder_start = encoder_start
        self.position = 0.0  # counts since the belt started
        self.tStart: int | None = None
        self.tLast = 0

    @property
    def running(self) -> bool:
        return self.tStart is not None

    def start(self, tNow: int) -> None:
        self.tStart = tNow
        self.tLast = tNow

    def speed_at(self, t_s: float) -> float:
        factor = 1.0
        for event in self.events:
            if event.kind == "speed" and event.at_s <= t_s:
                factor = event.value
        for event in self.events:
            if event.kind == "stop" and event.at_s <= t_s < event.at_s + event.value:
                return 0.0
        return factor

    def advance(self, tNow: int) -> None:
        if self.tStart is None:
            return
        dt = tNow - self.tLast
        self.tLast = tNow
        self.position += dt * self.counts_per_ms * self.speed_at((tNow - self.tStart) / 1000.0)

    @property
    def udiEncoder(self) -> int:
        return (self.encoder_start + int(self.position)) & U32

    @property
    def xPhotoEye(self) -> bool:
        along = self.position - 1
        if along < 0:
            return False
        k = int(along // self.pitch_counts)
        return 0 <= k < self.parts and along - k * self.pitch_counts < self.part_counts

    def last_gate_position(self, eye_to_gate_counts: int) -> float:
        return 1 + (self.parts - 1) * self.pitch_counts + eye_to_gate_counts


# ---------------------------------------------------------------------------------------------
# The PLC: scan loop, log, CLI.
# ---------------------------------------------------------------------------------------------
def part_record(stPart: ST_TrackedPart, reason: int, tGate: int, tStart: int) -> dict:
    result = None
    if stPart.xHasResult:
        result = {
            "sequence": stPart.uiSequence,
            "verdict": stPart.uiVerdict,
            "class": stPart.uiClass,
            "confidence": stPart.uiConfidence,
            "processing_0_1ms": stPart.uiProcessing,
        }
    return {
        "tracking_id": stPart.udiTrackingId,
        "eye_ms": stPart.tEye - tStart,
        "gate_ms": tGate - tStart,
        "result": result,
        "diverted": reason != REASON_PASS,
        "reason": REASON_NAMES[reason],
    }


async def run(args: argparse.Namespace) -> int:
    host, port = args.station
    eye_to_gate_counts = round(args.eye_to_gate_ms * args.counts_per_ms)
    pitch_counts = max(2, round(args.pitch_ms * args.counts_per_ms))
    fb = FB_LinesightCameraClient(
        WATCHDOG_MS=args.watchdog_ms,
        PULSE_MS=args.pulse_ms,
        PLC_HEARTBEAT_MS=args.heartbeat_ms,
        TRIGGER_ACK_MS=args.trigger_ack_ms,
        EYE_TO_GATE_COUNTS=eye_to_gate_counts,
        WORDS_HIGH_FIRST=args.word_order == "high_first",
        udiFirstTrackingId=args.first_tracking_id,
        ack_stops_after=args.ack_stops_after,
    )
    conveyor = Conveyor(args.parts, pitch_counts, args.counts_per_ms, args.events, args.encoder_start)
    link = ModbusLink(host, port, args.unit)
    log = open(args.log, "w", encoding="utf-8") if args.log else None
    io_task = asyncio.create_task(link.run())

    t0 = time.monotonic()

    def now_ms() -> int:
        return int((time.monotonic() - t0) * 1000)

    logged = 0

    def scan_at(tNow: int) -> bool:
        """One PLC scan at tNow: the belt moves, the FB scans, the link takes its control block and
        the decided parts are logged. Returns True once the last part is through the gate."""
        nonlocal logged
        # The line starts when the station is healthy, as an operator would start it, or
        # after --start-timeout-s regardless (its parts are then diverted as faulted).
        if not conveyor.running and (
            (fb.xInitialized and not fb.xFault) or tNow >= args.start_timeout_s * 1000
        ):
            conveyor.start(tNow)
        conveyor.advance(tNow)
        fb.scan(
            tNow=tNow,
            udiEncoder=conveyor.udiEncoder,
            xPhotoEye=conveyor.xPhotoEye,
            xCommOk=link.xCommOk,
            aStatus=link.aStatusImage,
            wControlReadBack=link.wControlReadBack,
        )
        link.scanned(fb.aControl)
        for stPart, reason, tGate in fb.decided:
            logged += 1
            if log is not None:
                log.write(json.dumps(part_record(stPart, reason, tGate, conveyor.tStart or 0)) + "\n")
                log.flush()
        return (
            conveyor.running
            and conveyor.position >= conveyor.last_gate_position(eye_to_gate_counts)
            and fb.uiFifoCount == 0
            and not fb.untracked
            and not fb.qGate
        )

    next_scan = time.monotonic()
    tScanned = now_ms()
    max_catch_up_ms = 0
    try:
        while True:
            tNow = now_ms()
            # A real PLC's scan is not late. When this process is (a busy machine stalls it),
            # the whole scans it missed run now, each at its own time, so the belt moves a
            # scan's travel at a time and no part slips past the photo-eye between two scans;
            # the link still exchanges its blocks at its own pace, as a PLC's Modbus cycle
            # does. At most CATCH_UP_MS of them: a longer stall is no scan a PLC would run.
            through = False
            if tNow - tScanned >= 2 * SCAN_MS:
                max_catch_up_ms = max(max_catch_up_ms, tNow - tScanned)
                tScanned = max(tScanned, tNow - CATCH_UP_MS)
                while tNow - tScanned >= 2 * SCAN_MS and not through:
                    tScanned += SCAN_MS
                    through = scan_at(tScanned)
            if through or scan_at(tNow):
                break
            tScanned = tNow
            next_scan += SCAN_MS / 1000.0
            delay = next_scan - time.monotonic()
            if delay < 0:  # late: the next pass runs the missed scans
                next_scan = time.monotonic()
                delay = 0
            await asyncio.sleep(delay)
    finally:
        link.stop()
        try:
            await asyncio.wait_for(io_task, IO_TIMEOUT_S + 2.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            io_task.cancel()

    summary = {
        "summary": {
            "parts": args.parts,
            "seen": fb.udiPartsSeen,
            "passed": fb.udiPassed,
            "diverted": fb.udiDiverted + fb.udiUntracked,
            "results_taken": fb.udiResultsTaken,
            "unmatched_results": fb.udiUnmatchedResults,
            "missed_triggers": fb.udiMissedTriggers,
            "untracked": fb.udiUntracked,
            "reconnects": link.reconnects,
            "faults": fb.udiFaults,
            "max_catch_up_ms": max_catch_up_ms,
        }
    }
    line = json.dumps(summary)
    if log is not None:
        log.write(line + "\n")
        log.close()
    print(line, flush=True)
    return 0


def station(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def events(text: str) -> list[Event]:
    """"stop@2.0:1.5,speed@5.0:0.5": at 2.0 s stop for 1.5 s; from 5.0 s run at half speed."""
    found = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            kind, rest = item.split("@", 1)
            at, value = rest.split(":", 1)
            event = Event(float(at), kind.strip(), float(value))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected stop@T:SECONDS or speed@T:FACTOR")
        if event.kind not in ("stop", "speed") or event.at_s < 0 or event.value < 0:
            raise argparse.ArgumentTypeError(f"{item!r}: expected stop@T:SECONDS or speed@T:FACTOR")
        found.append(event)
    return found


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be above 0")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="A line PLC for Linesight's server mode: FB_LinesightCameraClient "
        "(firmware-io/plc/linesight_server_client.st) on a simulated conveyor, over pymodbus."
    )
    parser.add_argument("--station", type=station, required=True, help="the station's Modbus server, HOST:PORT")
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit id (default 1)")
    parser.add_argument("--parts", type=positive(int), required=True, help="parts to put on the belt")
    parser.add_argument(
        "--pitch-ms", type=positive(float), default=100.0, help="time between parts at speed factor 1 (default 100)"
    )
    parser.add_argument(
        "--eye-to-gate-ms",
        type=positive(float),
        default=500.0,
        help="travel from the photo-eye to the gate at speed factor 1 (default 500); "
        "EYE_TO_GATE_COUNTS is this times --counts-per-ms",
    )
    parser.add_argument(
        "--counts-per-ms", type=positive(float), default=10.0, help="encoder counts per ms at speed 1 (default 10)"
    )
    parser.add_argument("--pulse-ms", type=positive(int), default=40, help="gate pulse (PULSE_MS, default 40)")
    parser.add_argument(
        "--watchdog-ms", type=positive(int), default=1500, help="station watchdog (WATCHDOG_MS, default 1500)"
    )
    parser.add_argument(
        "--heartbeat-ms", type=positive(int), default=100, help="PLC heartbeat period (PLC_HEARTBEAT_MS, default 100)"
    )
    parser.add_argument(
        "--trigger-ack-ms",
        type=positive(int),
        default=100,
        help="a trigger not acknowledged this long after the part reached the eye is missed "
        "(TRIGGER_ACK_MS, default 100)",
    )
    parser.add_argument("--word-order", choices=("high_first", "low_first"), default="high_first")
    parser.add_argument(
        "--first-tracking-id",
        type=int,
        default=1000,
        help="the first part's tracking id (default 1000); when the station's last trigger taken is "
        "at or past it, ids continue after that one (S4)",
    )
    parser.add_argument(
        "--events",
        type=events,
        default=[],
        help='belt events, seconds after the belt started (first part at the eye): "stop@2.0:1.5" '
        'stops it 1.5 s, "speed@5.0:0.5" sets the speed factor; comma-separated',
    )
    parser.add_argument("--log", help="JSON lines: one per part as it reaches the gate, then the summary")
    parser.add_argument(
        "--start-timeout-s",
        type=float,
        default=10.0,
        help="start the belt after this long even if the station is not healthy yet (default 10)",
    )
    parser.add_argument("--encoder-start", type=int, default=0, help="the encoder's first count (wraps at 2^32)")
    parser.add_argument(
        "--ack-stops-after",
        type=int,
        default=None,
        help="a test knob, not in the ST program: after this many results the acknowledge word "
        "stays put (a PLC that stopped acknowledging; the station's buffer fills up)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.first_tracking_id <= U32:
        parser.error("--first-tracking-id must fit a u32")
    if not 0 <= args.unit <= 255:
        parser.error("--unit must be 0..255")
    if args.ack_stops_after is not None and args.ack_stops_after < 0:
        parser.error("--ack-stops-after must be 0 or more")
    args.encoder_start &= U32
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # pymodbus logs every refused connection while the station is away; the link reports
    # losses and returns itself.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""A line PLC with sensor registers, built on pymodbus: a peer we did not write, for the
station's sensor polling.

Usage: pymodbus_sensor_plc.py PORT
Serves unit 1 on 127.0.0.1:PORT until killed, updating every 50 ms:
  holding 1000-1001  press temperature, °C, float32, high word first: 180 + 5·sin(t)
  holding 1002-1003  belt encoder count, uint32, LOW word first: 1000·t
  input   2000       humidity, %RH × 10, int16: 550 + 30·sin(t/3)
  input   2001       ambient temperature, °C × 10, int16, below zero: -125
"""

import asyncio
import logging
import math
import struct
import sys
import time

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import StartAsyncTcpServer


def f32_high_first(value: float) -> list[int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


def u32_low_first(value: int) -> list[int]:
    return [value & 0xFFFF, (value >> 16) & 0xFFFF]


def i16(value: int) -> int:
    return value & 0xFFFF


async def update(unit: ModbusSlaveContext) -> None:
    started = time.monotonic()
    while True:
        t = time.monotonic() - started
        # pymodbus's setValues takes the function code: 3 holding, 4 input registers.
        unit.setValues(3, 1000, f32_high_first(180.0 + 5.0 * math.sin(t)))
        unit.setValues(3, 1002, u32_low_first(int(1000 * t) + 70000))
        unit.setValues(4, 2000, [i16(round(550 + 30 * math.sin(t / 3)))])
        unit.setValues(4, 2001, [i16(-125)])
        await asyncio.sleep(0.05)


async def main(port: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    unit = ModbusSlaveContext(
        hr=ModbusSequentialDataBlock(0, [0] * 3000),
        ir=ModbusSequentialDataBlock(0, [0] * 3000),
    )
    context = ModbusServerContext(slaves={1: unit}, single=False)
    asyncio.create_task(update(unit))
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

"""A Modbus TCP server built on pymodbus: a PLC we did not write, for interop tests.

Usage: pymodbus_server.py PORT
Serves 1000 holding registers (unit 1) on 127.0.0.1:PORT until killed.
"""

import asyncio
import logging
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import StartAsyncTcpServer


async def main(port: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    # Reads and writes share pymodbus's own address mapping, so what the station writes at
    # address N is what any client reads at N.
    unit = ModbusSlaveContext(hr=ModbusSequentialDataBlock(0, [0] * 1001))
    context = ModbusServerContext(slaves={1: unit}, single=False)
    await StartAsyncTcpServer(context=context, address=("127.0.0.1", port))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))

"""Reads holding registers with pymodbus's client and prints them as a JSON list.

Usage: pymodbus_read.py PORT ADDRESS COUNT
"""

import json
import sys

from pymodbus.client import ModbusTcpClient


def main(port: int, address: int, count: int) -> int:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    if not client.connect():
        print(f"cannot connect to 127.0.0.1:{port}", file=sys.stderr)
        return 1
    try:
        reply = client.read_holding_registers(address, count=count, slave=1)
        if reply.isError():
            print(f"read failed: {reply}", file=sys.stderr)
            return 1
        print(json.dumps(reply.registers))
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))

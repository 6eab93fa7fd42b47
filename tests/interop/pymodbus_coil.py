"""Reads (and optionally writes) one coil with pymodbus's client; prints it as JSON.

Usage: pymodbus_coil.py PORT ADDRESS [on|off]
With on/off the coil is written first (FC5), as a PLC program or an engineer would; then it
is read back (FC1) and printed as `true` or `false`.
"""

import json
import sys

from pymodbus.client import ModbusTcpClient


def main(port: int, address: int, write: str | None) -> int:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    if not client.connect():
        print(f"cannot connect to 127.0.0.1:{port}", file=sys.stderr)
        return 1
    try:
        if write is not None:
            reply = client.write_coil(address, write == "on", slave=1)
            if reply.isError():
                print(f"write failed: {reply}", file=sys.stderr)
                return 1
        reply = client.read_coils(address, count=1, slave=1)
        if reply.isError():
            print(f"read failed: {reply}", file=sys.stderr)
            return 1
        print(json.dumps(bool(reply.bits[0])))
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))

#!/usr/bin/env python3
"""A DNS upstream for the benchmarks, as far away as a real one.

Answers A queries for host<i>.bench.lan (1 <= i <= --names) with 10.<i/65536>.<i/256>.<i%256>
and TTL --ttl, anything else with NXDOMAIN, each reply sent --delay-ms after the query came in
(an ISP's resolver is milliseconds away; a lab's loopback or bridge is not, and the kernel
here may lack netem). One line per query to --log, "<source address> <name>", flushed at
once, so a script counts what reached the upstream from each node and when.

    slow-upstream.py --listen 10.0.0.53 --port 53 --delay-ms 20 --ttl 3600 --names 1000 --log FILE
"""
import argparse
import asyncio
import re
import struct

NAME = re.compile(rb"^host([0-9]+)\.bench\.lan$")


def parse_question(data):
    """(name in lowercase dotted form, qtype, end offset of the question) or None."""
    if len(data) < 12 or data[2] & 0x80 or struct.unpack("!H", data[4:6])[0] != 1:
        return None
    labels, i = [], 12
    while True:
        if i >= len(data):
            return None
        n = data[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0 or i + 1 + n > len(data):
            return None
        labels.append(data[i + 1 : i + 1 + n].lower())
        i += 1 + n
    if i + 4 > len(data):
        return None
    qtype = struct.unpack("!H", data[i : i + 2])[0]
    return b".".join(labels), qtype, i + 4


def reply(data, names, ttl):
    q = parse_question(data)
    if q is None:
        return None, None
    name, qtype, end = q
    m = NAME.match(name)
    i = int(m.group(1)) if m else 0
    known = 1 <= i <= names
    # QR, the query's opcode and RD, RA; NOERROR or NXDOMAIN.
    flags = 0x8000 | (data[2] & 0x79) << 8 | 0x80 | (0 if known else 3)
    answers = 1 if known and qtype == 1 else 0
    out = data[:2] + struct.pack("!HHHHH", flags, 1, answers, 0, 0) + data[12:end]
    if answers:
        addr = bytes([10, i // 65536 % 256, i // 256 % 256, i % 256])
        out += struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + addr
    return out, name.decode("ascii", "replace")


class Upstream(asyncio.DatagramProtocol):
    def __init__(self, args, log):
        self.args, self.log, self.transport = args, log, None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        out, name = reply(data, self.args.names, self.args.ttl)
        if out is None:
            return
        self.log.write(f"{addr[0]} {name}\n")
        self.log.flush()
        asyncio.get_running_loop().call_later(
            self.args.delay_ms / 1000, self.transport.sendto, out, addr
        )


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--delay-ms", type=float, default=20)
    p.add_argument("--ttl", type=int, default=3600)
    p.add_argument("--names", type=int, default=1000)
    p.add_argument("--log", required=True)
    args = p.parse_args()
    with open(args.log, "a", encoding="ascii") as log:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(
            lambda: Upstream(args, log), local_addr=(args.listen, args.port)
        )
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

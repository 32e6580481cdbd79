"""Ethernet/IPv4/TCP/UDP frames for the benchmark scripts' generated
captures (bench-sensor.py, bench-live.py)."""
import struct

# An NMEA 0183 GGA sentence, as a navigation talker sends it.
GGA = b"$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76\r\n"


def eth_ip(src, dst, proto, l4):
    """An Ethernet frame carrying an IPv4 packet (header checksum left 0)."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst)
    return b"\x00\x0e\x8c\x00\x00\x01\x00\x1b\x1b\x00\x00\x02\x08\x00" + ip + l4


def tcp(sp, dp, flags, payload):
    return struct.pack("!HHIIBBHHH", sp, dp, 1, 1, 0x50, flags, 65535, 0, 0) + payload


def udp(sp, dp, payload):
    return struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload

"""argv HOST PORT COUNT: prints 'ready', waits for a line on stdin, then opens COUNT
connections that send one byte and reset; prints 'flooding' after 40.
"""
import socket
import struct
import sys

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reset = struct.pack("ii", 1, 0)  # SO_LINGER 0: close with RST, leave no TIME_WAIT
print("ready", flush=True)
sys.stdin.readline()
for i in range(count):
    with socket.create_connection((host, port), timeout=60) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
        sock.sendall(b"x")
    if i == 40:  # well within the listen backlog: no waiting for a SYN retry
        print("flooding", flush=True)

"""argv NAME SCHEME: registers NAME for SCHEME once told to on stdin, then
unregisters it once told to again (a barrier: every child at once).
"""
import sys

import tcbon

print("ready", flush=True)
sys.stdin.readline()
tcbon.register(sys.argv[1], schemes=[sys.argv[2]], command=["/bin/true"])
print("registered", flush=True)
sys.stdin.readline()
tcbon.unregister(sys.argv[1])

"""argv NAME: a script that registers itself: Process.register() with its own
command; prints what it wrote.
"""
import sys

import tcbon

print(tcbon.Process(sys.argv[1]).register(schemes=["myapp"], types=[".txt"]))

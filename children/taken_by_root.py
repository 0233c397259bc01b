"""argv NAME, as a user whose state folder a past root launch made: main() (its run()
prints RAN); then prints main()'s code and, for each entry of the folder's parent,
its name (".root-*" as " aside") and whether it is the user's. Run by
taken_by_root_setup.sh.
"""
import os
import sys

import tcbon

name = sys.argv[1]
share = os.path.join(os.environ["HOME"], ".local", "share")
code = tcbon.Process(name).main(run=lambda: print("RAN", flush=True))
print(code, sorted((entry.split(".root-")[0] + (" aside" if ".root-" in entry else ""),
                    os.stat(os.path.join(share, entry)).st_uid == os.getuid())
                   for entry in os.listdir(share)))

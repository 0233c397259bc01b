"""argv NAME APP_DIR ID N: sends N 'count' events, checks each reply, prints 'done N'."""
import sys

import tcbon

name, app_dir, cid, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = tcbon.Process(name, app_dir=app_dir, timeout=60)
for seq in range(n):
    reply = client.send("event", {"name": "count", "id": cid, "seq": seq})
    assert reply == {"success": True, "id": cid, "seq": seq}, reply
print("done", n)

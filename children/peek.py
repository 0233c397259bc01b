"""argv APP_DIR STATE_FILE ADDRESS, as another user: tries to list and read the state,
then to send without the token; prints what was allowed and the two statuses.
"""
import http.client
import os
import sys

app_dir, state_file, address = sys.argv[1], sys.argv[2], sys.argv[3]


def read_state():
    with open(state_file) as f:
        return f.read()


for what, action in (("listdir", lambda: os.listdir(app_dir)), ("read", read_state)):
    try:
        action()
        print(what, "allowed")
    except PermissionError:
        print(what, "denied")
host, port = address.rsplit(":", 1)
for token in ("", "guess"):
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("POST", "/event", body=b'{"name": "echo"}',
                 headers={"Content-Type": "application/json", "X-Tcbon-Token": token})
    print(conn.getresponse().status)

"""argv NAME APP_DIR: a host without sys.argv and with a foreign sys.executable
starts a primary and hands over; prints 'ok'.
"""
import sys

name, app_dir = sys.argv[1], sys.argv[2]
del sys.argv  # Maya, Blender: no argv; sys.executable is the host program
sys.executable = "/opt/host/bin/maya"
import tcbon  # noqa: E402 - imported as the host imports it: argv and executable as they are

seen = []
p = tcbon.Process(name, app_dir=app_dir)
p.on("second-instance")(lambda event: seen.append(event["argv"]))
p.start()
try:
    client = tcbon.Process(name, app_dir=app_dir)
    assert client.info()["argv"] == []
    assert client.handoff() == {"success": True}
    sys.argv = []
    assert client.handoff() == {"success": True}
    assert seen == [[], []], seen
finally:
    p.stop()
print("ok")

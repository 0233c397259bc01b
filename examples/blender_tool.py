"""A Blender tool server: other programs ask the running Blender for things.

    blender --background --python examples/blender_tool.py   # no window
    blender --python examples/blender_tool.py                # in the GUI

Then, from any terminal (the default scene has 3 objects):

    $ python -m tcbon blender_tool send count --json
    {"success": true, "objects": 3, "main_thread": true}
    $ python -m tcbon blender_tool send add-cube --json    # adds a cube
    {"success": true, "objects": 4, "main_thread": true}
    $ python -m tcbon blender_tool stop
    blender_tool stopped

Every handler runs on Blender's main thread, the only one allowed to touch
bpy (tcbon.MainThreadExecutor.blender()): in --background mode, where timers
never fire and Blender quits when the script ends, run_forever() runs them
until a stop; in the GUI, a timer does. There is deliberately no route that
executes code sent to it.
"""
import os
import sys
import threading

import bpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tcbon  # noqa: E402

# Runs the handlers on Blender's main thread: a timer in the GUI, run_forever()
# with --background.
tool = tcbon.Process('blender_tool', executor=tcbon.MainThreadExecutor.blender())


def on_main_thread():
    return threading.current_thread() is threading.main_thread()


@tool.on('count')
def count(event):
    return {'objects': len(bpy.data.objects), 'main_thread': on_main_thread()}


@tool.on('add-cube')
def add_cube(event):
    bpy.ops.mesh.primitive_cube_add(location=(len(bpy.data.objects) * 3.0, 0.0, 0.0))
    return {'objects': len(bpy.data.objects), 'main_thread': on_main_thread()}


def on_stop():
    print('blender_tool stopping on the main thread: %s' % on_main_thread(), flush=True)


tool.on_stop = on_stop


try:
    if bpy.app.background:
        tool.run_forever()  # serves here until `python -m tcbon blender_tool stop`
    else:
        tool.start()  # the GUI goes on; the executor's timer runs the handlers
except tcbon.ProcessExists as exc:
    print('blender_tool already runs: pid %s at %s' % (exc.pid, exc.address), flush=True)

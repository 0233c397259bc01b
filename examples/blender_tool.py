"""A Blender tool server: other programs ask a running Blender for things.

    blender --background scene.blend --python examples/blender_tool.py
    blender scene.blend --python examples/blender_tool.py   # in the GUI

Several Blenders may run it at once: each is an instance of blender_tool,
described by its scene file. From any terminal (the default scene has 3
objects):

    $ python -m tcbon blender_tool list
    blender_tool 1: pid ..., version 1.1, up ..., active ... ago, scene=shot_010.blend
    $ python -m tcbon blender_tool send count --json
    {"success": true, "objects": 3, "main_thread": true}
    $ python -m tcbon blender_tool send add-cube --json --where scene=shot_010.blend
    {"success": true, "objects": 4, "main_thread": true}
    $ python -m tcbon blender_tool send history --json
    {"success": true, "done": ["add-cube"], "version": "1.1"}
    $ python -m tcbon blender_tool stop
    blender_tool stopped

Without --to or --where, a request goes to the most recently active
Blender (its tool notes when the scene is saved or loaded).

Reloading the tool: run this script again in the same Blender (Text editor,
Run Script) after editing it. The new code replaces the running tool inside
this Blender (start(replace=True)), and what the old one did (its history)
is handed over (on_handover, handed_over): nothing is restarted but the tool.

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

VERSION = '1.1'

# One instance per Blender; its handlers run on Blender's main thread: a
# timer in the GUI, run_forever() with --background.
tool = tcbon.Process('blender_tool', instances=True, version=VERSION,
                     executor=tcbon.MainThreadExecutor.blender())
done = []  # what this tool did in this Blender: kept when it is reloaded


def describe(*_):
    tool.describe(scene=os.path.basename(bpy.data.filepath) or None)
    tool.touch()


def on_main_thread():
    return threading.current_thread() is threading.main_thread()


@tool.on('count')
def count(event):
    return {'objects': len(bpy.data.objects), 'main_thread': on_main_thread()}


@tool.on('add-cube')
def add_cube(event):
    bpy.ops.mesh.primitive_cube_add(location=(len(bpy.data.objects) * 3.0, 0.0, 0.0))
    done.append('add-cube')
    return {'objects': len(bpy.data.objects), 'main_thread': on_main_thread()}


@tool.on('history')
def history(event):
    return {'done': done, 'version': VERSION}


def on_start():
    done[:0] = (tool.handed_over or {}).get('done', [])  # from the tool this one replaced
    for handlers in (bpy.app.handlers.save_post, bpy.app.handlers.load_post):
        handlers.append(describe)


def on_handover():
    return {'done': done}


def on_stop():
    for handlers in (bpy.app.handlers.save_post, bpy.app.handlers.load_post):
        if describe in handlers:
            handlers.remove(describe)
    print('blender_tool %s stopping on the main thread: %s' % (VERSION, on_main_thread()),
          flush=True)


tool.on_start, tool.on_handover, tool.on_stop = on_start, on_handover, on_stop
describe()

if bpy.app.background:
    tool.run_forever()  # serves here until `python -m tcbon blender_tool stop`
else:
    tool.start(replace=True)  # the GUI goes on; the executor's timer runs the handlers

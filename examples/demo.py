"""One-command demo: a primary, a second launch that hands over, then a stop.

    python examples/demo.py

It runs examples/simple.py twice, as you would from two terminals, with its
state kept in a temporary directory. Each line it prints is flushed at once:
the commands it runs write to the same output, a pipe or a file too.
"""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import tcbon  # noqa: E402

NAME = 'tcbon-example-simple'  # examples/simple.py's

with tempfile.TemporaryDirectory() as home:
    env = dict(os.environ, XDG_DATA_HOME=home, LOCALAPPDATA=home,
               PYTHONPATH=os.path.dirname(HERE))
    simple = [sys.executable, os.path.join(HERE, 'simple.py')]
    app = tcbon.Process(NAME, app_dir=os.path.join(home, NAME))
    print('$ python examples/simple.py &     # the first launch becomes the primary',
          flush=True)
    first = subprocess.Popen(simple, env=env)
    try:
        deadline = time.monotonic() + 10
        while not app.running and time.monotonic() < deadline:
            time.sleep(0.01)
        print('$ python examples/simple.py       # a second launch hands over and exits',
              flush=True)
        subprocess.run(simple, env=env, check=True)
        print('$ python -m tcbon %s' % NAME, flush=True)
        subprocess.run([sys.executable, '-m', 'tcbon', NAME], env=env, check=True)
        print('$ python -m tcbon %s stop' % NAME, flush=True)
        subprocess.run([sys.executable, '-m', 'tcbon', NAME, 'stop'], env=env, check=True)
        print('the primary exited with code %s' % first.wait(10), flush=True)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

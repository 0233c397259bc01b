"""An app that allows several instances: one per project, and a launch for a
project that an instance shows already goes to that instance.

Try it from the project directory, with tcbon importable (pip install ., or
PYTHONPATH set to the project directory):
    python examples/several.py alpha &     # an instance for project alpha
    python examples/several.py beta &      # a second instance, for beta
    python -m tcbon tcbon-example-several list           # both, with their metadata
    python examples/several.py alpha       # handed to the alpha instance
    python -m tcbon tcbon-example-several send ping --where project=beta
    python -m tcbon tcbon-example-several stop --all
"""
import sys

import tcbon

app = tcbon.Process('tcbon-example-several', instances=True)   # any number of instances
shown = {}                                         # what this instance shows


def project_of(event):
    args = event['argv'][1:]
    if args[:1] == ['--']:          # what follows is data, never options (as register() starts it)
        args = args[1:]
    return args[0] if args else 'default'


def choose(event, instances):
    """The instance that shows this launch's project, or None: a new one."""
    wanted = project_of(event)
    return next((i for i in instances if i['meta'].get('project') == wanted), None)


app.choose = choose


@app.on('second-instance')
def opened(event):
    if event['primary']:            # this instance's own launch: publish what it shows
        shown['project'] = project_of(event)
        app.describe(project=shown['project'], title='Project %s' % shown['project'])
        return None
    app.touch()                     # a window would do this when it gets the focus
    return {'stdout': 'project %s is open in instance %s\n' % (project_of(event),
                                                               app.instance_id)}


@app.on('ping')
def ping(event):
    return {'instance': app.instance_id, 'project': shown.get('project')}


if __name__ == '__main__':
    sys.exit(app.main())

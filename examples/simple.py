"""A very simple Process with an event handler for 'ack' events.

Try it in two terminals from the project directory, with tcbon importable
(pip install ., or PYTHONPATH set to the project directory):
    1. python examples/simple.py      # becomes the primary, logs each request
    2. python examples/simple.py      # sends an 'ack' event and prints the reply
Stop the first with Ctrl-C, or from anywhere with: python -m tcbon tcbon-example-simple stop
"""
import tcbon


def on_ack(event):
    return {'message': 'Hello there!'}


# Create a Process
simple = tcbon.Process('tcbon-example-simple', debug=True)  # the primary logs to stderr
simple.register_event_handler('ack', on_ack)


if __name__ == '__main__':
    try:
        simple.run_forever()
    except tcbon.ProcessExists:
        # Process already running, send an event instead
        response = simple.send('event', {'name': 'ack'})
        print(response)

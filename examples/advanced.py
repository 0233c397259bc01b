"""Subclassing Process: a fixed address, an app_dir, custom routes and hooks.

Try it in two terminals from the project directory:
    1. python examples/advanced.py    # the primary: serves a counter
    2. python examples/advanced.py    # uses the primary's custom routes
The count survives restarts: on_stop saves it, on_start loads it.
"""
import logging
import os
import time

import tcbon


class Advanced(tcbon.Process):

    def __init__(self):
        super().__init__(
            name='advanced',
            address='127.0.0.1:9876',
            app_dir=os.path.abspath('./examples/advanced'),
        )
        self.count_file = os.path.join(self.app_dir, 'count')
        self.count = 0

    def setup_logger(self, log):
        '''Override to add a StreamHandler to the Process' logger.'''
        formatter = logging.Formatter('%(levelname).1s:%(name)s> %(message)s')
        handler = logging.StreamHandler()
        handler.setFormatter(formatter)
        log.addHandler(handler)
        log.setLevel(logging.INFO)

    def setup_wsgi(self, wsgi):
        '''Add routes to the wsgi app, Flask-style.'''

        @wsgi.route('/count')
        def count():
            self.log.info('Client requested count.')
            return tcbon.jsonify({'success': True, 'value': self.count})

        @wsgi.route('/increment', methods=['POST'])
        def increment():
            json = tcbon.request.get_json()
            self.count += json.get('value', 1)
            self.log.info('Client incremented count to %s.', self.count)
            return tcbon.jsonify({'success': True, 'value': self.count})

        @wsgi.route('/decrement', methods=['POST'])
        def decrement():
            json = tcbon.request.get_json()
            self.count -= json.get('value', 1)
            self.log.info('Client decremented count to %s.', self.count)
            return tcbon.jsonify({'success': True, 'value': self.count})

    def on_start(self):
        '''Load count from disc.'''
        if os.path.isfile(self.count_file):
            self.log.info('Loading count from %s.', self.count_file)
            with open(self.count_file) as f:
                self.count = int(f.read())
        self.log.info('Count is %s.', self.count)

    def on_stop(self):
        '''Persist count to disc.'''
        self.log.info('Persisting count to %s.', self.count_file)
        with open(self.count_file, 'w') as f:
            f.write(str(self.count))


if __name__ == '__main__':

    # Create an instance of our Process Subclass
    advanced = Advanced()

    try:
        # run_forever() would do; start() shows how to compose a Process into
        # a larger application (a Qt app, say) that has its own main loop.
        with advanced:  # start(); on the way out stop(), unless stopped already
            try:
                while advanced.wsgi_running:  # until stopped, here or remotely
                    time.sleep(0.5)
            except KeyboardInterrupt:
                pass

    except tcbon.ProcessExists:

        print('Advanced running at %s.' % advanced.address)

        # Get count - all interactions return a dict
        response = advanced.get('count')
        print("advanced.get('count') -> %s" % response)

        # Modify the count
        response = advanced.send('increment')
        print("advanced.send('increment') -> %s" % response)

        response = advanced.send('increment', {'value': 2})
        print("advanced.send('increment', {'value': 2}) -> %s" % response)

        response = advanced.send('decrement', {'value': 1})
        print("advanced.send('decrement', {'value': 1}) -> %s" % response)

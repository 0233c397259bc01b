"""The part of qt_off_thread.py and gtk_off_thread.py that raises a window with
bring_to_front(): from the calling thread (raise_it) or from a new one; said
gets what each call said.
"""
import threading

import tcbon


def raise_it(window, said):
    try:
        tcbon.bring_to_front(window, {"activation_token": "tok-1"})
        said.append("raised")
    except tcbon.Error as exc:
        said.append(str(exc))


def raise_it_from_another_thread(window, said):
    thread = threading.Thread(target=raise_it, args=(window, said))
    thread.start()
    thread.join()

"""A Qt (PySide6, offscreen) window raised by bring_to_front() from another
thread, then from its own; prints what each call said.
"""
from PySide6 import QtWidgets

from raise_it import raise_it, raise_it_from_another_thread

qapp = QtWidgets.QApplication([])


class Window(QtWidgets.QMainWindow):  # an app's own, as usual
    pass


window = Window()
window.show()
said: list = []
raise_it_from_another_thread(window, said)
window.showMinimized()
raise_it(window, said)
print(said, window.isMinimized())

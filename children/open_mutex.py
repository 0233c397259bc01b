"""argv NAME...: for each, OpenMutexW(SYNCHRONIZE) from this process: prints "open"
or the Windows error code, one line each (Windows only).
"""
import ctypes
import sys
from ctypes import wintypes

kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
kernel32.OpenMutexW.argtypes = [wintypes.DWORD, wintypes.BOOL, wintypes.LPCWSTR]
kernel32.OpenMutexW.restype = wintypes.HANDLE
kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
for name in sys.argv[1:]:
    handle = kernel32.OpenMutexW(0x00100000, False, name)  # SYNCHRONIZE
    print("open" if handle else ctypes.get_last_error(), flush=True)  # type: ignore[attr-defined]
    if handle:
        kernel32.CloseHandle(handle)

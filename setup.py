"""The native UDP relay path (relayd/udp/_fastrelay.c), built when a C compiler is there.

Everything else is in setup.cfg.  Without a compiler (or Python's headers)
the build skips the extension and relayd runs its Python relay path.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("relayd.udp._fastrelay", ["relayd/udp/_fastrelay.c"],
                             extra_compile_args=["-Wall", "-Wextra"], optional=True)])

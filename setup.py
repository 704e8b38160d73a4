"""The native parts, each built when a C compiler (and its headers) is there:
the UDP relay path (relayd/udp/_fastrelay.c) and the journal's record
framing (relayd/journal/_framing.c, with zlib).

Everything else is in setup.cfg.  Without a compiler (or Python's or
zlib's headers) the build skips an extension and relayd runs its Python
code for that part.
"""
from setuptools import Extension, setup

WARNINGS = ["-Wall", "-Wextra"]

setup(ext_modules=[
    Extension("relayd.udp._fastrelay", ["relayd/udp/_fastrelay.c"],
              extra_compile_args=WARNINGS, optional=True),
    Extension("relayd.journal._framing", ["relayd/journal/_framing.c"],
              libraries=["z"], extra_compile_args=WARNINGS, optional=True),
])

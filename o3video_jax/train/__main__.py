"""`python -m o3video_jax.train` moved to `o3video_jax.drivers.cli`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import cli as _impl

if __name__ == "__main__":
    __doc__ = _impl.__doc__  # the command line's usage text
    _impl.cli()
else:
    sys.modules[__name__] = _impl

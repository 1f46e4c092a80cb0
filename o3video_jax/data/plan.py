"""`python -m o3video_jax.data.plan`: the command line moved to `o3video_jax.drivers.plan` and the
planner to `o3video_jax.data.planner`; this alias keeps the command and the old name working."""

import sys

from o3video_jax.drivers import plan as _impl

if __name__ == "__main__":
    __doc__ = _impl.__doc__  # the command line's usage text
    _impl.cli()
else:
    sys.modules[__name__] = _impl

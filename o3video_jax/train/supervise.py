"""`o3video_jax.train.supervise` moved to `o3video_jax.drivers.supervise`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import supervise as _impl

if __name__ == "__main__":
    __doc__ = _impl.__doc__  # the command line's usage text
    _impl.cli()
else:
    sys.modules[__name__] = _impl

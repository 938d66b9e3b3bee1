"""NumPy reference of every kernel in orbitfl._core: same names, arguments, results and errors.

It is the executable specification the C++ is tested against, and the baseline the benchmark
measures speed-ups from. Each family lives in its own module; this one gathers them.
"""

from orbitfl.kernels.ref_cluster import *  # noqa: F403
from orbitfl.kernels.ref_quant import *  # noqa: F403

__version__ = "reference"
simd = "numpy"

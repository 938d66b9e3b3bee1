"""Array types shared by every layer's signatures."""

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]  # a float32 array: model tensors, deltas, curvature, codec values

"""NumPy reference: 1-D k-means, GCC centroid compression, loss-aware quantization."""

__all__: list[str] = []

"""NumPy reference: bit packing, uniform quantization, casts, top-k, sign."""

__all__: list[str] = []

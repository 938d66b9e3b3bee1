"""Codec pipeline: named, composable compression recipes over the kernels."""

"""The apps that drive both sides: the constellation simulator, the experiment sweeps, the local
demo and the ``orbitfl model`` command. Nothing below this package imports it."""

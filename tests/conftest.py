"""Settings shared by every suite.

Hypothesis keeps its example database and constants cache in a temporary directory (tests never
write into the checkout), and has no per-example deadline: CI runs on two shared cores where a
slow example says nothing about the code.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="orbitfl-hypothesis-"))

from hypothesis import settings  # imported after the storage directory is set

settings.register_profile("orbitfl", database=None, deadline=None)
settings.load_profile("orbitfl")

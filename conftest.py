"""Repository-wide test set-up: the token cache of every test (and of every process a test starts)
lives in one temporary folder, never in the user's ``~/.cache/rm-registry``."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

if not os.environ.get("RM_REGISTRY_CACHE"):
    _CACHE = tempfile.mkdtemp(prefix="rm-registry-test-cache-")
    os.environ["RM_REGISTRY_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

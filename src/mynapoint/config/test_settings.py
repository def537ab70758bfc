"""Settings for the test suite: a throw-away data folder, and fast password hashing."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("MYNAPOINT_DATA_DIR", tempfile.mkdtemp(prefix="mynapoint-test-"))

from mynapoint.config.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# A test database of its own for every test process, so that parallel runs on one PostgreSQL never meet.
if DATABASES["default"]["ENGINE"].endswith("postgresql"):  # noqa: F405
    DATABASES["default"].setdefault("TEST", {})["NAME"] = f"test_mynapoint_{os.getpid()}"  # noqa: F405

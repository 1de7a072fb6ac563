"""Suite-wide settings for the Ray that tests start in the pytest process."""

from __future__ import annotations

import os
import tempfile

# Ray reads its authentication mode once per process: a Ray started later in the same process with another mode
# loses every trial worker at start ("Missing authorization header"). Every in-process Ray of the suite is a
# local one on loopback, so the whole suite runs with authentication off, and subprocesses inherit the setting.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

# A search seals its run with a key kept in the user's config folder (autoprune._trust): the suite gets a folder
# of its own, so running it writes nothing into the home of whoever runs it, and subprocesses share the key.
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="autoprune-tests-config-")

"""``vecsync-upserter migrate-store``: convert the embedded store of an earlier release (qdrant-client's local mode).

Run once, with every vecsync process stopped, and the settings the upserter
runs with (DATA_DIR or QDRANT_PATH). See vecsync.store.local_mode.
"""

from __future__ import annotations

import logging

from upserter.settings import UpserterSettings
from vecsync import settings as settings_module
from vecsync.errors import ConfigurationError
from vecsync.runtime import setup_logging
from vecsync.store import local_mode

log = logging.getLogger("vecsync.upserter")


def main() -> None:
    settings = settings_module.load(UpserterSettings)
    setup_logging(settings.log_level)
    folder = settings.embedded_path(settings.data_dir)
    if folder is None:
        raise ConfigurationError(
            "QDRANT_URL is set, so this upserter uses a Qdrant server and has no embedded store to migrate. "
            "Unset QDRANT_URL and set DATA_DIR or QDRANT_PATH to the folder of the embedded store."
        )
    if not local_mode.holds_local_mode_store(folder):
        print(f"Nothing to migrate: {folder} holds no store of qdrant-client's local mode.")
        return

    def progress(name: str, copied: int) -> None:
        if copied % 10_000 < local_mode.BATCH:
            log.info("Collection %r: %d points copied", name, copied)

    copied = local_mode.migrate(folder, progress)
    for name, count in copied.items():
        print(f"Migrated collection {name!r}: {count} points.")
    print(f"The old files are in {folder / local_mode.BACKUP}; delete them once the upserter runs as it should.")

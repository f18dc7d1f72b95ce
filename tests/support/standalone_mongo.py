"""``python -m tests.support.standalone_mongo``: the MongoDB stand-in answering change streams as a standalone mongod.

A mongod started without ``--replSet`` refuses every ``watch()`` with error code
40573. No mongod can be installed here, so this serves the stand-in as the
embedded default does (vecsync_local.mongo_standin), except that it gives the same
answer, for testing what the producer's console script does then.
"""

from __future__ import annotations

import sys
from typing import Any

from vecsync_local import mongo_standin

STANDALONE_ANSWER = {
    "ok": 0,
    "errmsg": "The $changeStream stage is only supported on replica sets",
    "code": 40573,
    "codeName": "Location40573",
}


def main() -> None:
    from nx_27017.handler import NeoSQLiteHandler
    from nx_27017.nx_27017 import main as serve

    def refuse_change_stream(self: Any, request_id: int, *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        return request_id, dict(STANDALONE_ANSWER)

    mongo_standin.apply_corrections()
    NeoSQLiteHandler._handle_change_stream = refuse_change_stream
    sys.argv[0] = "nx-27017"
    serve()


if __name__ == "__main__":
    main()

"""``make run`` (``python -m vecsync_local``): start the local stack, load the samples, run until Ctrl-C.

With VECSYNC_CONFIG, the stack runs the definition file's syncs and says how to follow them, instead of waiting
until the environment's one sync is searchable.

The order of a run, and the exit status of each way it ends: 0 after Ctrl-C, 2 for a bad setting or a stage
that exited 2, 3 when the producer exited 3 (its change stream lost its history), 1 for any other failure.
"""

from __future__ import annotations

import logging
import signal
import sys

from vecsync import settings as settings_module
from vecsync.env_file import tracked_env_file
from vecsync.errors import ConfigurationError, VecsyncError
from vecsync.redaction import RedactingFormatter
from vecsync.runtime import EXIT_CONFIG
from vecsync_local import console
from vecsync_local.stack import LocalStack, LocalStackSettings
from vecsync_local.supervisor import ChildFailed, Interrupted


def main() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    try:
        settings = settings_module.load(LocalStackSettings)
    except ConfigurationError as exc:
        console.error(str(exc))
        sys.exit(EXIT_CONFIG)
    warning = tracked_env_file()
    if warning is not None:
        console.warn(warning)
    stack = LocalStack(settings)
    signal.signal(signal.SIGTERM, lambda *_: stack.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stack.stopping.set())
    status = 0
    try:
        # The samples go in before the producer starts, as into a database that already holds documents: its
        # snapshot then publishes each once. Loaded while it snapshots, they would come both from its scan and
        # from its change stream (correct, but twice the work).
        stack.start_servers()
        total = stack.load_samples()
        stack.start_stages()
        if stack.config is None:
            stack.wait_until_searchable(total)
            ready = console.all_searchable(total)
        else:
            # A definition file's syncs may hold any documents, in several Qdrant collections: `vecsync status`
            # tells how far each has come, so the stack does not wait for a count here.
            ready = console.syncs_running(stack.config, stack.syncs)
        if not stack.stopping.is_set():
            print(ready, flush=True)
            stack.supervise()
    except Interrupted:
        pass
    except ConfigurationError as exc:
        console.error(str(exc))
        status = EXIT_CONFIG
    except ChildFailed as exc:
        console.error(str(exc))
        status = exc.status
    except (VecsyncError, OSError) as exc:
        console.error(str(exc))
        status = 1
    finally:
        stack.stop()
        print("Stopped.", flush=True)
    sys.exit(status)


if __name__ == "__main__":
    main()

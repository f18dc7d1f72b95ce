"""vecsync's local stack (``make run``) and the MongoDB stand-in it serves, for development and the tests only.

The distribution vecsync-local: ``make venv`` installs it, no image does. Its modules, one job each:
supervisor.py supervises the processes, stack.py defines the stack (which processes, in which order, when each is
ready), ports.py refuses the ports it cannot serve, console.py composes what the console shows, __main__.py is
``make run`` (``python -m vecsync_local``), and mongo_standin.py serves nx-27017 corrected.
"""

"""The ``ingest-platform`` command line: ``main.py`` is the group, each other module one command group."""

"""BrainSynth's service side: the HTTP API (FastAPI), its client and CLI commands, and the local stack.
Never imports torch. Importing this package alone loads nothing else (the ``brainsynth`` script reads
:data:`COMMANDS` to route a command without loading the client's dependencies)."""

#: The ``brainsynth`` commands that :mod:`service.cli` runs (the others belong to :mod:`models.cli`).
COMMANDS = ("up", "submit", "status", "wait", "download", "cancel", "list", "subjects", "delete")

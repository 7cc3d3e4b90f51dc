"""The ``brainsynth`` command: model commands (``models.cli``) and service commands (``service.cli``)."""

"""The ``brainsynth`` command line (:mod:`brainsynth.cli`): nothing else in the project imports it."""

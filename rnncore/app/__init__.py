"""The command-line application (``rnncore`` command): training, evaluation, generation,
corpus handling, checkpoints and the benchmark runners. It imports the library core
(``rnncore.layers``, ``rnncore.models``, ``rnncore.backends``, ...); the core never imports it."""

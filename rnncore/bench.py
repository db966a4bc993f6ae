"""rnncore bench (in progress)."""


def add_arguments(p):
    pass


def run(args):
    raise NotImplementedError

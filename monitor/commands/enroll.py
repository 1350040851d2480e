"""`sound-monitor enroll` (being built; see the issue tracker)."""

from monitor.errors import UserError


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise UserError("this command is not built yet")

"""One module per `meshplug` subcommand.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
They are the only place that turns library errors into terminal output and exit codes;
`meshplug.cli` imports them lazily by name so that `meshplug --help` stays fast.
"""

"""The run and its control plane: ``service`` (one run of one or several sources: threads,
shared objects, shutdown), ``assemble`` (a run built from a validated config), ``control``
(the rules in force and their one owner), ``reload`` (config hot reload), ``state`` (event
numbering, the state lock, private state) and ``metrics`` (/healthz, /metrics)."""

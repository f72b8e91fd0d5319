"""Studies: a training history (shared phases → directions → final phase forked into arms) repeated over seeds.

Modules, from the study file to the runs on disk:

* ``spec``: the study file's typed specs and ``validate_study``;
* ``config_algebra``: YAML deep merge, dotted overrides and ``{...}`` placeholders;
* ``plan``: ``build_plan``, every run's resolved fit config before anything runs;
* ``runner``: ``run_study`` and the ``study`` verb (``study_command``);
* ``fit``: one run as an in-process ``fit``, and the parse-only config check;
* ``layout``: the one owner of run-folder names;
* ``tensorboard``: HParams and the custom-scalars layout; ``progress``: the one-line progress display.

Nothing is imported here, so ``testbed.study.layout`` stays cheap to import (the report reads folders through it).
"""

__all__: list[str] = []

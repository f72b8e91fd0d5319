"""``python -m testbed report``: a study's TensorBoard logs as tables and figures, from a report spec.

* ``events``: one run folder's scalars, and a check that every event file reads to its end;
* ``runs``: run discovery and grouping through ``testbed.study.layout`` (unfinished runs, settings);
* ``stats``: mean ± std, t-intervals, areas, log-log fits, Spearman, the ordering test;
* ``spec``: the YAML report spec (rows, columns, tests, plots); ``generic``: the spec made from options;
* ``cells`` and ``tables``: cells that combine only same-step values, and their text and notes;
* ``writers``: Markdown, CSV and JSON; ``plots``: the PNG figures; ``command``: the verb.
"""

from testbed.report.command import build_report, report_command
from testbed.report.events import Series, read_scalars
from testbed.report.spec import Spec, load_spec

__all__ = ["Series", "read_scalars", "build_report", "report_command", "Spec", "load_spec"]

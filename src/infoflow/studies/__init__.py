"""The comparative studies of the SID/RU paper, each one command: ``python train.py experiment=<study>``.

A study (``task=study``) runs train.py tasks and evaluate.py analyses as stages, so this package sits above
both `infoflow.tasks` and `infoflow.analyses`; importing it registers ``study`` in `infoflow.tasks.TASKS`.
"""

from infoflow.studies import study  # noqa: F401

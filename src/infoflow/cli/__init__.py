"""The command line of ``train.py`` and ``evaluate.py``: the entry wrapper (`entry`), plug-in naming
(`plugins`), the whole-config check run before any work (`settings`) and the multirun check (`sweeps`)."""

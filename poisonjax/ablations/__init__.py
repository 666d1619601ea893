"""The ablations' own measurements and reports, beyond the standard per-run
evaluation: each module is named by a study config's `experiment` field
(configs/ablations/*.py) and run through the hooks of
poisonjax/study/experiment.py (after_run, collect, report) by
`poisonjax study reproduce`.
"""

"""Hyper-parameter sweeps, the babysitter's part: the search space as users write it
(``space``) and the advice a finished or running search gives (``advice``). The search
engine itself is Optuna's; nothing here imports it."""

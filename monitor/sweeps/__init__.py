"""Hyper-parameter sweeps, the babysitter's part (``babysit sweep``, ``trainer_hooks.sweep``).

``space`` (the dimensions as users write them), ``command`` (the trial's command line),
``trial`` (what a sweep and its trial's process hand each other), ``pruning`` (the trial's
stop policy: pruning by diagnosis), ``advice`` and ``report`` (what the search says of
itself), ``runs`` (a sweep as the run store holds it): pure. ``study`` is the one module
that imports Optuna, the search engine; ``launch`` runs the trials as processes.
"""

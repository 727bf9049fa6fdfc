"""One-line integrations with training frameworks, each an optional extra.

``trainer_hooks.integrations.lightning.BabysitCallback`` (``pip install 'babysit[lightning]'``)
and ``trainer_hooks.integrations.huggingface.BabysitCallback`` (``pip install
'babysit[huggingface]'``) watch the framework's model and optimizer, feed the run the
framework's own losses and metrics, and turn babysit's stop (the dashboard, a flag, an
early-stopping policy) into the framework's own stop.
"""

"""ml_collections configs: ``get_config(arg)`` with ``arg`` in {"paper", "cpu", "smoke"}.

``sweep_base`` holds the batch sweep's shared skeleton; config_flags loads a config file by path,
so the experiment scripts put the repository root on ``sys.path`` for that import to work.
"""

"""ml_collections configs: ``get_config(arg)`` with ``arg`` in {"paper", "cpu", "smoke"}.

``common`` holds what every config shares (the scale check, the fields of every study, applying a
scale's reductions), ``sweep_base`` the batch sweep's shared skeleton; config_flags loads a config
file by path, so the experiment scripts put the repository root on ``sys.path`` for that import to
work.
"""

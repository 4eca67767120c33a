"""ml_collections configs: ``get_config(arg)`` with ``arg`` in {"paper", "cpu", "smoke"}.

Each file is self-contained (config_flags loads it by path, not as a package module).
"""

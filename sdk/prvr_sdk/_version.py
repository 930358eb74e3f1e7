"""The package version, in one place: pyproject.toml reads it (``[tool.setuptools.dynamic]``), and
``prvr_sdk.__version__`` imports it without ``importlib.metadata`` (≈ 20 ms of every CLI start)."""

__version__ = "0.1.0.dev0"

"""Data planes the corpus runner can drive (tests/corpus/runner.py `DataPlane`): one module per plane."""

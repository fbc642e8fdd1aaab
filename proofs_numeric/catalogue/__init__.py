"""The claim catalogues: every claim checked by `pytest -m theorems`, each beside its refuted twin."""

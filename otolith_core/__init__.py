"""Otolith age from frozen image embeddings: the core behind the dashboard and the `otolith` CLI.

One image's path, module by module: data (find and decode) -> encoders (which encoder, built how;
see its own docstring) -> cache / embeddings (embed once, keep) -> folds (shared by every model) ->
heads -> cross_validation (one head) -> comparison (every model, paired tests) -> metrics / stats -> charts /
report. This package never imports streamlit.
"""

__version__ = "0.1.0"

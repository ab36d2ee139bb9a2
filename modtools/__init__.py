"""modtools: on-demand model reuse for CNNs.

Decompose trained CNNs into modules (masks per layer, extracted as smaller networks, saved as
module folders) and compose modules into new models. Layers, bottom up: ``data``, ``models``,
``train``, ``masks``, ``extract``, ``module``/``heads``/``io``, ``metrics``; approaches on top:
``baseline``, ``mwt``, ``gradsplitter`` (with ``compose``); ``runner`` runs the notebooks.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modtools")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

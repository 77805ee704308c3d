"""chromabeam: declarative Apache Beam pipelines for image colour work.

Sub-packages live in the repository's top-level folders (see setup.py):
``chromabeam.pipelines``, ``chromabeam.transforms`` (``.ops`` for pure functions),
``chromabeam.models`` and ``chromabeam.schemas``.
"""
__version__ = "0.1.0"

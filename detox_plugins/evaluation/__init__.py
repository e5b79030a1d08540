"""Shared evaluation layer: generation, judges, metrics and datasets.

Import the submodules directly (``from detox_plugins.evaluation.judges import get_judge``); this
package module stays empty so that importing it loads neither torch nor any model.
"""

"""detox-plugins: DINM, DeStein and security vectors as `model_editors` plugins.

Each editor lives in its own subpackage and registers itself through the ``model_editors``
entry-point group, exactly like a third-party plugin. Importing this package does no work.
"""

__version__ = "0.1.0"

#: Shipped YAML files (``hparams/<ALG>/<model>.yaml`` in the repository).
HPARAMS_PACKAGE = "detox_plugins.hparams"

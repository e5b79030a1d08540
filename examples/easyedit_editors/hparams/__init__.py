"""Shipped hyperparameters in EasyEdit's format, ``<ALG>/<model>.yaml``, and pipelines (installed as ``easyedit_editors.hparams_files``)."""

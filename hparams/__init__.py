"""Shipped hyperparameter files, EasyEdit layout: <ALG>/<model>.yaml (installed as detox_plugins.hparams)."""

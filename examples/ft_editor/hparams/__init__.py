"""Shipped FT hyperparameters, ``<ALG>/<model>.yaml`` (installed as the package ``ft_editor.hparams_files``)."""

"""Security vectors (Zhou et al., arXiv 2311.02105) as a `model_editors` plugin.

A security vector is a frozen LoRA adapter that already "explains" harmful behaviour. It is active
while a user fine-tunes, so harmful samples give almost no gradient, and it is removed before the
result ships. Heavy imports (torch, peft, transformers) wait for the hook.
"""

from registry import hookimpl


@hookimpl
def register_editors(register):  # no default on `register`: pluggy would pass nothing (1.6 leaves it None)
    from .editor import SecurityVectorEditor

    register(SecurityVectorEditor)


@hookimpl
def register_commands(register):  # this editor's own `detox` verbs
    from .commands import COMMANDS

    for command in COMMANDS:
        register(command)

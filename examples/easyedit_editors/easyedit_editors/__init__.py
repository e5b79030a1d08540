"""easyedit-editors: EasyEdit's own ROME, MEMIT and FT as ``model_editors`` plugins (the reverse bridge).

Where ``easyeditor`` imports (``easyedit_host.import_easyeditor``: ``$EASYEDIT_PATH`` or an installed
package), ``register_editors`` registers the three editors; where it is missing or its import fails, the
hook raises one line naming the reason and the fix, which the registry records as this plugin's failure
(``detox plugins``) while every other editor still loads. Importing this package does no work.
"""

from registry import hookimpl

__version__ = "0.1.0"


def import_host() -> None:
    """Import EasyEdit, or raise ImportError saying why and how to make it importable."""
    import easyedit_host

    try:
        easyedit_host.import_easyeditor()
    except Exception as exc:  # noqa: BLE001 - a broken host is any exception of its import
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:240]
        raise ImportError(f"easyeditor does not import ({reason}), so EasyEdit's ROME, MEMIT and FT are not "
                          f"registered; point {easyedit_host.PATH_ENV} at an EasyEdit checkout, in an environment "
                          f"with its requirements (scripts/setup_hosts.sh)") from None


@hookimpl
def register_editors(register):  # no default on `register`: pluggy would not pass it
    import_host()  # a failure here is this plugin's one recorded failure (`detox plugins`)
    from .editors import FTEditor, MEMITEditor, ROMEEditor

    for editor in (ROMEEditor, MEMITEditor, FTEditor):
        register(editor)


@hookimpl
def register_commands(register):
    try:
        import_host()
    except ImportError:
        return  # register_editors already reported why; one warning is enough
    from .commands import COMMANDS

    for command in COMMANDS:
        register(command)

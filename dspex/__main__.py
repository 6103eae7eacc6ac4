"""``python -m dspex`` runs the ``dspex`` command."""

from dspex.cli import main

main()

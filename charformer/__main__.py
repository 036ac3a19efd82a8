"""``python -m charformer``: the ``charformer`` command (`charformer.command`)."""

from .command import main

main()

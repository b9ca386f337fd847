"""``python -m train ...`` = ``facesdk train ...`` (works for ``torchrun -m train`` too).

A shim above the layers: only this ``__main__`` (which nothing imports) reaches up into cli/."""

import sys

from cli.main import main

sys.exit(main(["train", *sys.argv[1:]]))

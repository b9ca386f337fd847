"""``python -m train.pfe ...`` = ``facesdk train pfe ...``.

A shim above the layers: only this ``__main__`` (which nothing imports) reaches up into cli/."""

import sys

from cli.main import main

sys.exit(main(["train", "pfe", *sys.argv[1:]]))

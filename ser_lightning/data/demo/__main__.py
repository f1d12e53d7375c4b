"""``python -m ser_lightning.data.demo build ...``: see :func:`ser_lightning.data.demo.builder.main`."""

from ser_lightning.data.demo.builder import main

if __name__ == "__main__":
    main()

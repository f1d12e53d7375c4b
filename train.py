"""Train, validate, test or predict: ``python train.py fit --config configs/demo.yaml``."""

from ser_lightning.cli.train import main

if __name__ == "__main__":
    main()

"""Demo models and datasets that ship inside installed packages (nothing is downloaded)."""

from sensiprune.zoo.digits import DigitsSplits, load_digits_splits
from sensiprune.zoo.models import LeNet5, LeNet5Caffe, LeNet300100

__all__ = ["DigitsSplits", "LeNet5", "LeNet5Caffe", "LeNet300100", "load_digits_splits"]

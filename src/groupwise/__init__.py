"""groupwise: a Lightning template for CIFAR-10 classifiers with named parameter groups."""

__version__ = "0.1.0"

"""Small data sets that ship inside the package (see README.md here for sources and licences).
Nothing is downloaded at run time."""
import gzip
import os

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))


def load_digits():
    """The 8x8 handwritten digits (UCI, via scikit-learn; 1,797 images).

    Returns (X, y): X float64 of shape (1797, 64), each row an image in row-major order with the
    pixel counts 0..16 scaled to [0, 1]; y int64 of shape (1797,), the digit 0..9."""
    with gzip.open(os.path.join(_HERE, "digits.csv.gz"), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    return table[:, :64].astype(np.float64) / 16.0, table[:, 64].copy()

"""Images in: finding inputs, decoding every format ptm accepts, colour, and the shared preprocessing."""

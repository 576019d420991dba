"""fmrl-sdk: fMRLRec (Matryoshka LRU recommender) from training to on-device streaming inference."""

__version__ = "0.2.0"

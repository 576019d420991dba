"""On-device style streaming inference over an exported bundle (docs/runtime.md).

Light to import: numpy and the standard library only; torch and the ExecuTorch pybindings are loaded
when a bundle is opened. Never imports training code, transformers or `fmrl_sdk.model`.

    from fmrl_sdk.runtime import Recommender
    rec = Recommender.open("bundles/phone-lowmem")     # a directory, or bundles/phone-lowmem.fmrlb
    s = rec.new_session(); s.observe("B0030HKJ8I"); s.recommend(k=10)
"""

from ..errors import FmrlError
from .bundle import Bundle, bundle_fingerprint, load_bundle, load_bundle_bytes, load_bundle_fd, newest_bundle
from .recommender import Recommender, Session
from .seen import false_positive_rate

__all__ = ["Bundle", "FmrlError", "Recommender", "Session", "bundle_fingerprint", "false_positive_rate", "load_bundle",
           "load_bundle_bytes", "load_bundle_fd", "newest_bundle"]

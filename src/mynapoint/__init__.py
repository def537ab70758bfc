"""mynapoint: runs a national cashless-points incentive programme (reference: マイナポイント第2弾)."""

__version__ = "0.1.0"

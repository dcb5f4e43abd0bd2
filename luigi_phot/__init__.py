"""luigi_phot: a Luigi pipeline from directories of FITS frames to calibrated
aperture-photometry light curves, published to a TOM.

``luigi --module luigi_phot ReduceDataset --red-dir DIR`` and
``luigi --module luigi_phot ReductionManager --config FILE`` find their tasks here.
"""

__version__ = "0.1.0"

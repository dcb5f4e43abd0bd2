"""The science: frames, background, detection, alignment, PSF, aperture
photometry, calibration, time, light curves. Nothing here imports Luigi."""
